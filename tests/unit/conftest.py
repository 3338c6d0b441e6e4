"""The unit tier: fast, no Ray cluster, vLLM engine or DeepSpeed run; slow tests live elsewhere."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Refuses a test marked slow under tests/unit: it belongs in tests/integration or e2e."""
    slow = [
        item.nodeid
        for item in items
        if "tests/unit/" in item.nodeid and item.get_closest_marker("slow")
    ]
    if slow:
        raise pytest.UsageError(f"slow tests in the unit tier (move them out): {slow}")
