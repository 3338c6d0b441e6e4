"""OpenAI's wire format, as the teacher app speaks it: request bodies, errors, usage, events.

Pure: pydantic models and small functions, no Ray and no engine. The app in deployment.py
validates requests with these bodies and frames its answers with these helpers, as OpenAI's
API and vLLM's own server do (its clients are tested against it: tests/integration/
test_openai_teacher.py).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from dsbs.teachers.base import Sampling, TeacherReply


class StreamOptions(BaseModel):
    """`stream_options`: a last chunk with the request's token usage when asked."""

    model_config = ConfigDict(extra="ignore", strict=True)

    include_usage: bool = False


_Stop = Annotated[str, Field(min_length=1)]


class OpenAIBody(BaseModel):
    """The sampling fields that completions and chat completions share."""

    # OpenAI clients send fields this server ignores (logprobs, user, ...): accept them.
    # Strict: `n: 1.5` or `stream: 0` is a client's mistake to hear about, not to round.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)  # OpenAI's range, and vLLM's
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    # Not empty: vLLM fails on an empty stop string (it was a 500).
    stop: _Stop | list[_Stop] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(self) -> Sampling:
        """The engine's sampling parameters for this body."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return Sampling(
            self.n, self.temperature, self.top_p, self.max_tokens, tuple(stop), self.seed
        )


_Prompt = Annotated[str, Field(min_length=1)]


class CompletionBody(OpenAIBody):
    """`POST /v1/completions`."""

    # Not empty: vLLM fails on an empty prompt with an error of its own (it was a 500).
    prompt: _Prompt | Annotated[list[_Prompt], Field(min_length=1)]


class ChatMessage(BaseModel):
    """One chat turn."""

    model_config = ConfigDict(strict=True)

    role: str
    content: str


class ChatBody(OpenAIBody):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)


class OpenAIErrorDetail(BaseModel):
    """What was wrong, as OpenAI's API says it."""

    message: str
    type: str
    code: int


class OpenAIError(BaseModel):
    """The body of every error this app answers (OpenAI's format)."""

    error: OpenAIErrorDetail


COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The completion; server-sent events when `stream` is true.",
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    400: {"model": OpenAIError, "description": "A parameter is wrong or over a bound."},
    401: {"model": OpenAIError, "description": "No valid bearer token (when one is set)."},
    503: {"description": "Every replica is full and the queue too (teacher.max_queued_requests)."},
}


def openai_error(message: str, code: int) -> dict[str, Any]:
    """OpenAI's error body: its clients show `error.message` in the exception they raise."""
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


def usage(replies: list[TeacherReply]) -> dict[str, int]:
    """OpenAI's `usage` object over several replies."""
    return usage_of(sum(r.prompt_tokens for r in replies), sum(r.output_tokens for r in replies))


def usage_of(prompt: int, output: int) -> dict[str, int]:
    """OpenAI's `usage` object from token counts."""
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}


def finish_reason(reply: TeacherReply, index: int) -> str:
    """Why the reply's `index`-th text ended, as OpenAI names it ("stop", "length")."""
    # An engine that does not say why a text ended is taken to have stopped on its own.
    reasons = reply.finish_reasons
    return (reasons[index] if index < len(reasons) else None) or "stop"


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event, as OpenAI's streaming responses frame them."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
