"""Locust users for the student endpoint (tests/integration/test_serve.py, `make chaos`).

Each user posts valid predictions back to back: one to four arithmetic questions, now and
then with rationales. Any answer other than 200 is a failure in locust's statistics.
"""

from __future__ import annotations

import random

from locust import FastHttpUser, task


class StudentUser(FastHttpUser):
    """A client of /v1/predict with no think time (the load is the users' count)."""

    @task
    def predict(self) -> None:
        """One valid request; locust records its status and latency."""
        rng = random.Random()  # noqa: S311 - load shape, not security
        inputs = [
            f"What is {rng.randrange(20)} plus {rng.randrange(20)}?"
            for _ in range(rng.randint(1, 4))
        ]
        self.client.post("/v1/predict", json={"inputs": inputs, "rationale": rng.random() < 0.2})
