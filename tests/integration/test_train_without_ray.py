"""The training core without Ray: plain torch.distributed (gloo) and real DeepSpeed on CPU.

What a bare GPU machine or `torchrun` runs (benchmarks/gpu_check.py does the same on CUDA):
the split shards and tokenizer prepared as the driver prepares them, then `run_training` with
`ParquetShards` and `FolderCheckpoints`, in 1 process (ZeRO-2, then resumed to more steps)
and in 2 processes (ZeRO-3): evaluation, checkpoints, resume and the export.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from ports import free_port

from dsbs import storage
from dsbs.config import StudentConfig, TrainConfig
from dsbs.data.synth import synth
from dsbs.student.export import load_student
from dsbs.student.tokenizer import train_tokenizer
from dsbs.train.data import tokenizer_texts, write_splits
from dsbs.train.loop import LoopSpec

pytestmark = pytest.mark.slow


def _rank(rank: int, world: int, port: int, spec: LoopSpec) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    from dsbs.train.checkpoints import FolderCheckpoints
    from dsbs.train.data import ParquetShards, SplitManifest
    from dsbs.train.loop import init_process_group, leave_process_group, run_training

    init_process_group(use_gpu=spec.train.use_gpu)
    manifest = SplitManifest(**json.loads(storage.read_bytes(f"{spec.out_dir}/data/manifest.json")))
    data = ParquetShards(manifest, spec.train, rank, world)
    checkpoints = FolderCheckpoints(storage.join(spec.out_dir, "checkpoints"), rank)
    run_training(spec, data, checkpoints)
    leave_process_group()


def _spec(tmp_path, name: str, **train: object) -> LoopSpec:
    source = str(tmp_path / "synth.jsonl")
    if not os.path.exists(source):
        synth("arithmetic", 200, 0, source, rationales=True)
    out = str(tmp_path / name)
    config = TrainConfig(
        micro_batch_size=8,
        lr=3e-3,
        eval_every=3,
        checkpoint_every=3,
        eval_max_rows=16,
        test_fraction=0.05,
        **train,
    )
    manifest = write_splits(config, source, f"{out}/data")
    train_tokenizer(tokenizer_texts(manifest, 1000), 300, f"{out}/tokenizer")
    student = StudentConfig(vocab_size=300, max_input_length=64, max_target_length=48)
    return LoopSpec(config, student, "svamp", out, f"{out}/tokenizer", "v1", manifest.rows)


def _history(spec: LoopSpec) -> list[dict]:
    text = storage.read_bytes(f"{spec.out_dir}/metrics.jsonl").decode()
    return [json.loads(line) for line in text.splitlines()]


def test_one_process_trains_evaluates_checkpoints_resumes_and_exports(tmp_path):
    spec = _spec(tmp_path, "one", zero_stage=2, max_steps=6)
    mp.spawn(_rank, args=(1, free_port(), spec), nprocs=1)
    history = _history(spec)
    assert [r["step"] for r in history if r["split"] == "valid"] == [3, 6]
    assert sorted(os.listdir(f"{spec.out_dir}/checkpoints")) == ["step3", "step6"]
    metrics = json.loads(storage.read_bytes(f"{spec.out_dir}/metrics.json"))
    assert metrics["steps"] == 6 and metrics["test"]["rows"] == spec.rows["test"]
    model, _, info = load_student(f"{spec.out_dir}/student")
    assert info.steps == 6 and sum(p.numel() for p in model.parameters()) > 0

    # A longer run on the same folder resumes at step 6 with its optimizer's state.
    os.remove(f"{spec.out_dir}/metrics.json")
    longer = replace(spec, train=spec.train.model_copy(update={"max_steps": 9}))
    mp.spawn(_rank, args=(1, free_port(), longer), nprocs=1)
    resumed = [r for r in _history(longer) if r["split"] == "resume"]
    assert resumed == [{"split": "resume", "step": 6, "optimizer_steps": 6, "checkpoint": 6}]
    assert json.loads(storage.read_bytes(f"{spec.out_dir}/metrics.json"))["steps"] == 9


def test_two_processes_under_zero3_train_and_export_one_model(tmp_path):
    spec = _spec(tmp_path, "two", zero_stage=3, max_steps=4)
    mp.spawn(_rank, args=(2, free_port(), spec), nprocs=2)
    history = _history(spec)
    train_rows = [r for r in history if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert all(r["examples_per_s"] > 0 for r in train_rows)
    # Each rank wrote its own ZeRO-3 partition into the checkpoint.
    files = os.listdir(f"{spec.out_dir}/checkpoints/step4/step4")
    assert {f for f in files if "model_states" in f} == {
        "zero_pp_rank_0_mp_rank_00_model_states.pt",
        "zero_pp_rank_1_mp_rank_00_model_states.pt",
    }
    model, tokenizer, info = load_student(f"{spec.out_dir}/student")
    assert info.steps == 4 and len(tokenizer) == model.config.vocab_size


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL, bf16)")
@pytest.mark.parametrize("zero", [2, 3])
def test_on_a_gpu_bf16_under_nccl_evaluates_and_exports(tmp_path, zero):
    """NCCL collectives in evaluation, bf16 steps and the ZeRO-3 export, as a world of one."""
    spec = _spec(tmp_path, f"gpu{zero}", zero_stage=zero, max_steps=4, use_gpu=True)
    spec = replace(spec, train=spec.train.model_copy(update={"precision": "bf16"}))
    mp.spawn(_rank, args=(1, free_port(), spec), nprocs=1)
    assert [r["step"] for r in _history(spec) if r["split"] == "valid"] == [3, 4]
    model, _, info = load_student(f"{spec.out_dir}/student")
    assert info.steps == 4 and model is not None
