"""The vLLM engine settings a teacher config turns into, and the GPUs a replica asks for."""

from dsbs.config import TeacherConfig
from dsbs.teachers.vllm import engine_args, replica_gpus

LARGE = "Qwen/Qwen2.5-72B-Instruct"  # a hub id passes through unresolved


def test_cpu_teachers_run_eager_and_leave_vllms_batching_defaults():
    args = engine_args(TeacherConfig(model=LARGE, dtype="float32"))
    assert args["enforce_eager"] is True and args["pipeline_parallel_size"] == 1
    assert "max_num_seqs" not in args and "quantization" not in args
    assert "block_size" not in args  # vLLM's own default unless set
    assert engine_args(TeacherConfig(model=LARGE, block_size=32))["block_size"] == 32
    assert replica_gpus(TeacherConfig()) == 0


def test_gpu_teachers_use_cuda_graphs_and_pass_what_a_large_model_needs():
    """enforce_eager was hard-coded on: no CUDA graphs on GPUs, a large part of decode speed."""
    cfg = TeacherConfig(
        model=LARGE,
        dtype="bfloat16",
        use_gpu=True,
        tensor_parallel_size=4,
        pipeline_parallel_size=2,
        max_num_seqs=256,
        max_num_batched_tokens=16384,
        quantization="fp8",
        kv_cache_dtype="fp8",
    )
    args = engine_args(cfg)
    assert args["enforce_eager"] is False
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"]) == (4, 2)
    assert (args["max_num_seqs"], args["max_num_batched_tokens"]) == (256, 16384)
    assert (args["quantization"], args["kv_cache_dtype"]) == ("fp8", "fp8")
    assert replica_gpus(cfg) == 8  # Serve places the replica where its engine's GPUs are
    eager = cfg.model_copy(update={"enforce_eager": True})
    assert engine_args(eager)["enforce_eager"] is True


def test_the_engine_accepts_every_setting_passed():
    """The keys are AsyncEngineArgs' own (a renamed vLLM argument fails here, not on a GPU)."""
    import dataclasses

    from vllm import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    cfg = TeacherConfig(
        model=LARGE,
        max_num_seqs=8,
        max_num_batched_tokens=4096,
        quantization="fp8",
        block_size=32,
    )
    assert set(engine_args(cfg)) <= known


def test_whole_answers_come_once_and_streams_in_pieces():
    """The default (CUMULATIVE) built every request's whole text at every engine step."""
    from vllm.sampling_params import RequestOutputKind

    from dsbs.teachers.base import Sampling
    from dsbs.teachers.vllm import _sampling_params

    assert _sampling_params(Sampling()).output_kind == RequestOutputKind.FINAL_ONLY
    assert (
        _sampling_params(Sampling(n=2, temperature=1.0), stream=True).output_kind
        == RequestOutputKind.DELTA
    )


def test_a_request_the_engine_refuses_is_the_client_s_error_not_a_retry():
    """A prompt past the context was retried eight times by the stage and a 500 over HTTP."""
    import pytest
    from vllm.exceptions import VLLMValidationError

    from dsbs.teachers.base import TeacherError
    from dsbs.teachers.vllm import _refusals

    with pytest.raises(TeacherError, match="maximum context length") as refused, _refusals():
        raise VLLMValidationError("maximum context length is 256 tokens", parameter="p")
    assert isinstance(refused.value, ValueError)  # the caller's "bad request, don't retry"
