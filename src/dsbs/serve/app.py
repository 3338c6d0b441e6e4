"""Stage 3 on Ray Serve: an HTTP ingress in front of autoscaled student replicas.

    client ─HTTP─► StudentAPI (FastAPI: schema, limits, errors, timeouts, counters)
                      │ handle
                      ▼
                   StudentPredictor x N (autoscaled; loads the export, warms up, and decodes
                                         with @serve.batch across concurrent requests)

A RayService carries `configs/serve_student.yaml` unchanged as its `serveConfigV2`:
`import_path: dsbs.serve.app:build_app` with the `serve` section of the config as `args`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.metrics import Counter, Histogram

from dsbs import storage
from dsbs.auth import STUDENT_TOKEN_ENV, add_bearer_auth
from dsbs.cluster import serve_queue_bound
from dsbs.config import ServeConfig, default_of
from dsbs.serve.api import (
    ModelCard,
    Prediction,
    PredictRequest,
    PredictResponse,
    Rejection,
    body_too_large,
    check_lengths,
    error_responses,
    input_token_limit,
    parse_request,
)
from dsbs.serve.backends import Backend, load_backend

log = logging.getLogger(__name__)

APP_NAME = "dsbs-student"
# The ingress only waits on the predictors; it is cheap, so it takes many requests at once.
_INGRESS_MAX_ONGOING = 1024
_INGRESS_CPUS = 0.1
_WARMUP_INPUT = "warm up"
# Tries per request when a student replica dies under it.
_ATTEMPTS = 3


# Defined above the ingress: `serve.ingress` pickles the app, and what its routes call, when
# the class is decorated (a function defined below it is missing in the replica).
async def read_body(request: Request, cfg: ServeConfig) -> bytes:
    """The request body, refused as soon as it passes max_body_bytes while it arrives.

    A chunked body declares no length, so the Content-Length check alone would read any
    amount into memory first.

    Raises:
        Rejection: 413 once the body passes the limit.
    """
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cfg.max_body_bytes:
            raise body_too_large(cfg)
        chunks.append(chunk)
    return b"".join(chunks)


api = FastAPI(
    title="dsbs student",
    description="A T5 student distilled step-by-step: labels, and rationales when asked.",
)
add_bearer_auth(
    api,
    STUDENT_TOKEN_ENV,
    lambda message: Rejection(401, "authorization", message, "unauthorized").body(),
)


@serve.deployment(name="StudentPredictor")
class StudentPredictor:
    """One student per replica; concurrent requests' inputs are decoded together."""

    def __init__(self, cfg: ServeConfig, model: str, loader: Callable[..., Backend] = load_backend):
        started = time.perf_counter()
        # What this replica serves, as the files were when it loaded them (S3 ETags or local
        # sizes and times): a student re-published under the same prefix shows a new value.
        self.source, self.files = model, storage.fingerprint(model)
        self.backend = loader(cfg, model)
        self.info = self.backend.info
        self.cfg = cfg
        self._decode.set_max_batch_size(cfg.max_batch_size)  # type: ignore[attr-defined]
        self._decode.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self.batch_sizes = Histogram(
            "dsbs_student_batch_size",
            description="Inputs decoded together in one batch.",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        )
        # Serve routes traffic to a replica only once its constructor returns: decode once
        # here so that the first user does not pay for lazy initialisation.
        self.backend.generate([self.info.label_prefix + _WARMUP_INPUT], 2)
        log.info("student replica ready in %.1f s", time.perf_counter() - started)

    def model_card(self) -> ModelCard:
        """What `GET /v1/model` shows."""
        return ModelCard(
            task=self.info.task,
            mode=self.info.mode,
            preset=self.info.preset,
            parameters=self.backend.num_parameters,
            version=self.info.version,
            label_prefix=self.info.label_prefix,
            rationale_prefix=self.info.rationale_prefix,
            max_input_tokens=input_token_limit(self.cfg, self.info.max_input_length),
            backend=self.cfg.backend,
            source=self.source,
            files=self.files,
        )

    async def predict(self, inputs: list[str], rationale: bool) -> PredictResponse | Rejection:
        """Labels (and rationales) for one request's inputs, or why they are refused.

        The response names this replica's model version, so an answer always says which
        student gave it (replicas of a re-published model may briefly differ).

        A refusal is returned, not raised: an exception would reach the ingress wrapped in
        Ray's task error, not as the 4xx it is.
        """
        if rationale and not self.info.rationale_prefix:
            return Rejection(
                422,
                "rationale",
                f"this student ({self.info.mode}) has no rationale task",
                "no_rationale_task",
            )
        prefixed = [self.info.label_prefix + text for text in inputs]
        try:
            check_lengths(self.backend.count_tokens(prefixed), self.cfg, self.info.max_input_length)
        except Rejection as rejection:
            return rejection
        if rationale:
            prefixed += [self.info.rationale_prefix + text for text in inputs]
        outputs = await asyncio.gather(*(self._decode(text) for text in prefixed))
        n = len(inputs)
        predictions = [
            Prediction(label=outputs[i], rationale=outputs[n + i] if rationale else None)
            for i in range(n)
        ]
        return PredictResponse(predictions=predictions, model=self.info.version)

    @serve.batch(
        max_batch_size=default_of(ServeConfig, "max_batch_size"),
        batch_wait_timeout_s=default_of(ServeConfig, "batch_wait_timeout_s"),
    )
    async def _decode(self, texts: list[str]) -> list[str]:
        # The decorator is evaluated at import, before any config exists: it takes the config's
        # defaults, and __init__ sets this replica's configured sizes.
        self.batch_sizes.observe(len(texts))
        # Decoded on the event loop, not in a thread: HF generate holds the GIL most of the
        # time, and a loop starved of it admits new requests so slowly that batches stay
        # small (measured: batches of 5-14 with 64 requests waiting, 30 when run inline).
        # Requests that arrive meanwhile queue in Ray and join the next batch.
        return self.backend.generate(texts, self.info.max_target_length)


@serve.deployment(name="StudentAPI")
@serve.ingress(api)
class StudentAPI:
    """HTTP in front of the predictors: the schema, the limits and the error format."""

    def __init__(self, predictor: Any, cfg: ServeConfig) -> None:
        self.predictor = predictor
        self.cfg = cfg
        self.predictions = Counter("dsbs_student_predictions", description="Inputs answered.")
        self.rejected = Counter(
            "dsbs_student_rejected_requests",
            description="Requests refused, by reason.",
            tag_keys=("reason",),
        )

    def _reject(self, rejection: Rejection) -> JSONResponse:
        self.rejected.inc(tags={"reason": rejection.reason})
        return JSONResponse(rejection.body(), status_code=rejection.status)

    @api.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses=error_responses(400, 401, 413, 422, 503, 504),
        # The body is read raw (to enforce the size limit and name bad fields our way), so
        # the schema is declared for the OpenAPI docs here.
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
            }
        },
    )
    async def predict(self, request: Request) -> Any:
        """Labels for `inputs` (and rationales when `rationale` is true), in order."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.cfg.max_body_bytes:
            return self._reject(body_too_large(self.cfg))
        try:
            body = parse_request(await read_body(request, self.cfg), self.cfg)
            predictions = await asyncio.wait_for(
                self._predict(body), timeout=self.cfg.request_timeout_s
            )
        except Rejection as rejection:
            return self._reject(rejection)
        except TimeoutError:
            return self._reject(
                Rejection(504, "body", f"no answer in {self.cfg.request_timeout_s} s", "timeout")
            )
        except (RayActorError, ActorUnavailableError) as err:
            return self._reject(
                Rejection(503, "body", f"student replicas unavailable: {err}", "unavailable")
            )
        except BackPressureError:
            return self._reject(
                Rejection(
                    503,
                    "body",
                    "every student replica is full and so is the queue "
                    f"(serve.max_queued_requests {self.cfg.max_queued_requests}); retry later",
                    "overloaded",
                )
            )
        if isinstance(predictions, Rejection):
            return self._reject(predictions)
        self.predictions.inc(len(predictions.predictions))
        return predictions

    async def _predict(self, body: PredictRequest) -> PredictResponse | Rejection:
        # Predictions are idempotent: a request whose replica died (scaled in, preempted,
        # killed) goes to another one instead of failing.
        for _ in range(_ATTEMPTS - 1):
            try:
                return await self.predictor.predict.remote(body.inputs, body.rationale)
            except (RayActorError, ActorUnavailableError) as err:
                log.warning("student replica lost (%s); retrying on another", type(err).__name__)
        return await self.predictor.predict.remote(body.inputs, body.rationale)

    @api.get("/v1/model", response_model=ModelCard, responses=error_responses(401, 503))
    async def model(self) -> Any:
        """The served student as a predictor reports it: task, prefixes, size, version, files."""
        try:
            return await asyncio.wait_for(
                self.predictor.model_card.remote(), timeout=self.cfg.health_timeout_s
            )
        except (TimeoutError, RayActorError, ActorUnavailableError) as err:
            return self._reject(
                Rejection(
                    503, "body", f"no predictor answered: {type(err).__name__}", "unavailable"
                )
            )

    @api.get("/healthz", responses={503: {"description": "No predictor answered in time."}})
    async def healthz(self) -> Any:
        """Readiness: a predictor answers within serve.health_timeout_s, else 503.

        It asks a predictor every time (not a cached card), so it turns 503 when every
        predictor is gone and shows the version being served after a redeploy.
        """
        try:
            card = await asyncio.wait_for(
                self.predictor.model_card.remote(), timeout=self.cfg.health_timeout_s
            )
        except (TimeoutError, RayActorError, ActorUnavailableError) as err:
            reason = (
                f"no predictor answered in {self.cfg.health_timeout_s} s"
                if isinstance(err, TimeoutError)
                else f"student replicas unavailable: {type(err).__name__}"
            )
            return JSONResponse({"status": "unavailable", "error": reason}, status_code=503)
        return {"status": "ok", "model": card.version}


def autoscaling_config(cfg: ServeConfig) -> dict[str, Any]:
    """Serve's autoscaling settings for the predictors, from the `serve` section."""
    return {
        "min_replicas": cfg.min_replicas,
        "initial_replicas": max(cfg.min_replicas, 1),
        "max_replicas": cfg.max_replicas,
        "target_ongoing_requests": cfg.target_ongoing_requests,
        "upscale_delay_s": cfg.upscale_delay_s,
        "downscale_delay_s": cfg.downscale_delay_s,
    }


def student_app(cfg: ServeConfig, model: str) -> Any:
    """The bound application: ingress and predictors, sized and scaled from `cfg`."""
    predictor = StudentPredictor.options(  # type: ignore[attr-defined]
        autoscaling_config=autoscaling_config(cfg),
        # Batches fill only if a replica accepts at least a batch's worth of requests at once
        # (Serve's default is 5).
        max_ongoing_requests=2 * max(cfg.max_batch_size, cfg.target_ongoing_requests),
        max_queued_requests=serve_queue_bound(cfg.max_queued_requests),
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
    ).bind(cfg, model)
    return StudentAPI.options(  # type: ignore[attr-defined]
        num_replicas=max(cfg.min_replicas, 1),
        max_ongoing_requests=_INGRESS_MAX_ONGOING,
        ray_actor_options={"num_cpus": _INGRESS_CPUS},
    ).bind(predictor, cfg)


def build_app(args: dict[str, Any]) -> Any:
    """Serve's `import_path` entry: `args` is the `serve` section of a dsbs config.

    `serve.model` is required here (there is no run directory to find the student in).

    Raises:
        ValueError: when `model` is missing or a key is not a `serve` setting.
    """
    cfg = ServeConfig.model_validate(args)
    if not cfg.model:
        raise ValueError("serve.model: the exported student to serve (a folder or s3:// prefix)")
    return student_app(cfg, cfg.model)
