"""Optional bearer-token auth for the HTTP apps, from an environment variable.

The student API and the OpenAI-compatible teacher each read their own variable, which a
Kubernetes Secret fills (k8s/):

    STUDENT_TOKEN_ENV=DSBS_STUDENT_TOKEN   checked by the student app, sent by `dsbs run`
    TEACHER_TOKEN_ENV=DSBS_TEACHER_TOKEN   checked by the teacher app; a client sends it as
                                           its API key (teacher.api_key_env)

Unset or empty: no auth (a local run). Set: every route but /healthz (for probes) needs
`Authorization: Bearer <token>`, compared in constant time; anything else is a 401.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any

# Names of environment variables, not secrets.
STUDENT_TOKEN_ENV = "DSBS_STUDENT_TOKEN"  # noqa: S105
TEACHER_TOKEN_ENV = "DSBS_TEACHER_TOKEN"  # noqa: S105
OPEN_PATHS = frozenset({"/healthz"})
"""Routes that answer without a token: Kubernetes probes send none."""


def expected_token(env_name: str) -> str | None:
    """The token the app requires (read where the app runs), or None when auth is off."""
    return os.environ.get(env_name) or None


def authorized(header: str | None, expected: str | None) -> bool:
    """Whether an `Authorization` header carries the expected bearer token (or auth is off)."""
    if expected is None:
        return True
    scheme, _, token = (header or "").partition(" ")
    # compare_digest takes as long for a wrong token as for a right one of the same length.
    return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), expected.encode())


def bearer_header(env_name: str) -> dict[str, str]:
    """The header a client of our own app sends (empty when the variable is unset)."""
    token = expected_token(env_name)
    return {"Authorization": f"Bearer {token}"} if token else {}


def add_bearer_auth(app: Any, env_name: str, error: Callable[[str], dict[str, Any]]) -> None:
    """Makes a FastAPI app refuse requests without the token (see the module docstring).

    Call it before the app is handed to `serve.ingress`, which pickles the app as it is.

    Args:
        app: the FastAPI app.
        env_name: the variable holding the token, read on each request where the app runs.
        error: the app's error body for a message (each API keeps its own error format).
    """
    from fastapi.openapi.utils import get_openapi
    from starlette.responses import JSONResponse

    def openapi() -> dict[str, Any]:
        # The schema says what this process enforces, so that clients generated from it (and
        # schemathesis' auth checks) know which routes want the token.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            if expected_token(env_name) is not None:
                scheme = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema.setdefault("components", {})["securitySchemes"] = scheme
                for path, operations in schema["paths"].items():
                    if path not in OPEN_PATHS:
                        for operation in operations.values():
                            operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi

    @app.middleware("http")
    async def require_token(request: Any, call_next: Any) -> Any:
        expected = expected_token(env_name)
        if request.url.path in OPEN_PATHS or authorized(
            request.headers.get("authorization"), expected
        ):
            return await call_next(request)
        return JSONResponse(
            error("a valid bearer token is required (Authorization: Bearer <token>)"),
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
