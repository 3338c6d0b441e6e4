"""The student's HTTP API without Ray: request and response schemas, and request checking.

Every way a request can be wrong ends in a `Rejection`: a 4xx status, the field at fault
(`inputs[3]`, `rationale`, `body`) and a reason that the rejection counter is tagged with.
The ingress turns it into `{"error": {"field": ..., "message": ..., "reason": ...}}`.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from dsbs.config import ServeConfig


class PredictRequest(BaseModel):
    """`POST /v1/predict`."""

    model_config = ConfigDict(extra="forbid")

    # The pattern documents what `parse_request` checks itself (an input that is not blank),
    # so that a client generating requests from the schema knows it.
    inputs: list[StrictStr] = Field(
        min_length=1, json_schema_extra={"items": {"type": "string", "pattern": r"\S"}}
    )
    """Task inputs as the student saw them in training, without the `predict:` prefix."""
    rationale: StrictBool = False
    """Also return the student's rationale (the `explain:` task; costs a second decode)."""


class ErrorDetail(BaseModel):
    """What was wrong with a request."""

    field: str
    """The field at fault (`inputs[3]`, `rationale`, `body`, `authorization`)."""
    message: str
    reason: str
    """A stable code (`too_many_items`, `input_too_long`, `unauthorized`, ...)."""


class ErrorBody(BaseModel):
    """The body of every 4xx and 5xx answer of the student app."""

    error: ErrorDetail


_ERRORS = {
    400: "The body is not JSON.",
    401: "No valid bearer token (when the app is started with one).",
    413: "The body is over serve.max_body_bytes.",
    422: "A field is wrong or over a limit: serve.max_items, serve.max_input_tokens.",
    503: "No student replica answered, or all are full (serve.max_queued_requests).",
    504: "No answer within serve.request_timeout_s.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for a route's error statuses, each with the error body's schema."""
    return {status: {"model": ErrorBody, "description": _ERRORS[status]} for status in statuses}


class Prediction(BaseModel):
    """One answer."""

    label: str
    rationale: str | None = None


class PredictResponse(BaseModel):
    """The answers, in input order."""

    predictions: list[Prediction]
    model: str
    """The export's version (its training config hash)."""


class ModelCard(BaseModel):
    """`GET /v1/model`."""

    task: str
    mode: str
    preset: str
    parameters: int
    version: str
    label_prefix: str
    rationale_prefix: str
    max_input_tokens: int
    """The longest input served (the smaller of serve.max_input_tokens and the trained length)."""
    backend: str
    source: str
    """The export served (a folder or s3:// prefix)."""
    files: str | None
    """A digest of its files as this replica loaded them (S3 ETags, or local sizes and times):
    replicas showing different ones serve different publications of the student."""


class Rejection(Exception):
    """A request refused with a 4xx: the status, the field at fault and a counter reason.

    Picklable (its arguments are its state), so a replica can return one through a handle.
    """

    def __init__(self, status: int, field: str, message: str, reason: str) -> None:
        super().__init__(status, field, message, reason)
        self.status = status
        self.field = field
        self.message = message
        self.reason = reason

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"field": self.field, "message": self.message, "reason": self.reason}}


def parse_request(raw: bytes, cfg: ServeConfig) -> PredictRequest:
    """Checks a raw `/v1/predict` body against the schema and the configured limits.

    Token lengths are checked later, by the replica that holds the tokenizer.

    Raises:
        Rejection: with 413 for a body over `max_body_bytes`, 400 for invalid JSON, 422 for a
            wrong field (type, empty input, too many items).
    """
    if len(raw) > cfg.max_body_bytes:
        raise body_too_large(cfg)
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise Rejection(400, "body", f"invalid JSON: {err}", "invalid_json") from err
    try:
        request = PredictRequest.model_validate(payload)
    except ValidationError as err:
        first = err.errors()[0]
        raise Rejection(422, field_name(first["loc"]), first["msg"], "invalid_field") from err
    if len(request.inputs) > cfg.max_items:
        raise Rejection(
            422,
            "inputs",
            f"{len(request.inputs)} inputs; at most {cfg.max_items} per request",
            "too_many_items",
        )
    for i, text in enumerate(request.inputs):
        if not text.strip():
            raise Rejection(422, f"inputs[{i}]", "empty input", "empty_input")
    return request


def body_too_large(cfg: ServeConfig) -> Rejection:
    """The 413 for a body over `max_body_bytes` (by its Content-Length or its actual size)."""
    return Rejection(413, "body", f"request body over {cfg.max_body_bytes} bytes", "body_too_large")


def input_token_limit(cfg: ServeConfig, trained: int) -> int:
    """The longest input served, in student tokens.

    serve.max_input_tokens, but never more than the export's trained input length: the
    student would cut the rest off without a word.
    """
    return min(cfg.max_input_tokens, trained)


def check_lengths(token_counts: list[int], cfg: ServeConfig, trained: int) -> None:
    """Refuses inputs longer than the limit (prefix and end-of-sequence included).

    Args:
        token_counts: each input's length in student tokens.
        cfg: the serve section (max_input_tokens).
        trained: the export's max_input_length.

    Raises:
        Rejection: 422 naming the first input over the limit, and both limits.
    """
    limit = input_token_limit(cfg, trained)
    for i, count in enumerate(token_counts):
        if count > limit:
            raise Rejection(
                422,
                f"inputs[{i}]",
                f"{count} tokens; at most {limit} (serve.max_input_tokens "
                f"{cfg.max_input_tokens}; the student was trained on inputs of up to {trained})",
                "input_too_long",
            )


def field_name(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field path: ('inputs', 3) -> 'inputs[3]'."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"
