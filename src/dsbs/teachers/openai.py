"""The `openai` teacher: any OpenAI-compatible completions/chat endpoint over HTTP.

That covers vLLM's own OpenAI server, dsbs's long-lived teacher Serve app, and hosted APIs.
The API key is read from the environment variable the config names, never from config.
`complete` is one attempt; retries and the in-flight limit are the caller's
(`dsbs.teachers.client`). A timed-out attempt closes its connection, which vLLM's server
(and Serve's proxy) take as the signal to abort the request.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from dsbs.config import TeacherConfig
from dsbs.teachers.base import (
    RetryableError,
    TeacherError,
    TeacherReply,
    TeacherRequest,
    TeacherTimeout,
)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class OpenAITeacher:
    """A `Teacher` calling `/completions` (prompts) or `/chat/completions` (messages)."""

    def __init__(self, cfg: TeacherConfig) -> None:
        if not cfg.base_url:
            raise ValueError("teacher.base_url is required for the openai engine")
        self.base_url = cfg.base_url.rstrip("/")
        self.model = cfg.model
        key = os.environ.get(cfg.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s = cfg.request_timeout_s
        # No pool limit: the caller's InFlightLimit decides how many requests are open.
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=cfg.request_timeout_s,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )

    def _body(self, request: TeacherRequest) -> tuple[str, dict[str, Any]]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "n": s.n,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if request.messages is not None:
            body["messages"] = [{"role": r, "content": c} for r, c in request.messages]
            return "/chat/completions", body
        body["prompt"] = request.prompt
        return "/completions", body

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(self.base_url + path, json=body)
        except httpx.TimeoutException as err:
            raise TeacherTimeout(f"no answer from {path} in {self.timeout_s} s") from err
        except httpx.TransportError as err:
            raise RetryableError(f"{type(err).__name__}: {err}") from err
        if response.status_code in RETRYABLE_STATUS:
            raise RetryableError(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise TeacherError(f"HTTP {response.status_code} from {path}: {response.text[:500]}")
        try:
            return response.json()
        except ValueError as err:
            raise RetryableError(f"response is not JSON: {response.text[:200]}") from err

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        """One attempt; 429/5xx/timeouts raise `RetryableError`, other 4xx `TeacherError`."""
        path, body = self._body(request)
        data = await self._post(path, body)
        try:
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            if path == "/chat/completions":
                texts = tuple(c["message"]["content"] or "" for c in choices)
            else:
                texts = tuple(c["text"] for c in choices)
            usage = data.get("usage") or {}
            reasons = tuple(c.get("finish_reason") for c in choices)
        except (KeyError, TypeError) as err:
            raise TeacherError(f"unexpected response shape from {path}: {str(data)[:300]}") from err
        return TeacherReply(
            texts=texts,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
            finish_reasons=reasons,
        )

    async def check_health(self) -> None:
        """Raises when `GET /models` fails."""
        response = await self._client.get(self.base_url + "/models")
        response.raise_for_status()

    async def aclose(self) -> None:
        """Closes the HTTP connection pool."""
        await self._client.aclose()
