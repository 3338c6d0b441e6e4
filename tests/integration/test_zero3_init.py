"""ZeRO-3 builds the student partitioned: no rank ever holds the whole model.

Real DeepSpeed (CPU accelerator) in 2 processes over gloo, without Ray: the model is built the
way the training loop builds it, once with ZeRO-2 and once with ZeRO-3, and each rank reports
the parameter elements it holds and its own peak RSS (VmHWM, not the inherited ru_maxrss).
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch.multiprocessing as mp
from memory import peak_rss_kib
from ports import free_port

pytestmark = pytest.mark.slow


def _build(rank: int, world: int, port: int, zero: int, out: str) -> None:
    os.environ.update(
        DS_ACCELERATOR="cpu",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    import deepspeed
    import torch.distributed as dist

    from dsbs.config import StudentConfig, TrainConfig
    from dsbs.student.model import build_student
    from dsbs.train.deepspeed_setup import deepspeed_config

    deepspeed.init_distributed(dist_backend="gloo")
    ds_config = deepspeed_config(TrainConfig(zero_stage=zero))
    model = build_student(StudentConfig(preset="t5-v1_1-small"), 32128, ds_config=ds_config)
    held = sum(
        p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters()
    )
    total = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    peak_kib = peak_rss_kib()
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"held": held, "total": total, "peak_kib": peak_kib}, f)
    dist.destroy_process_group()


def _run(zero: int, tmp_path) -> list[dict]:
    out = str(tmp_path / f"zero{zero}")
    mp.spawn(_build, args=(2, free_port(), zero, out), nprocs=2)
    return [json.loads(open(f"{out}.{rank}").read()) for rank in range(2)]


def test_zero3_ranks_hold_half_the_model_and_less_memory_than_zero2(tmp_path):
    zero2, zero3 = _run(2, tmp_path), _run(3, tmp_path)
    total = zero2[0]["total"]
    assert total > 50_000_000  # t5-v1_1-small, tied embeddings
    for rank in zero2:
        assert rank["held"] == total
    for rank in zero3:
        assert rank["total"] == total
        assert 0.45 < rank["held"] / total < 0.55, rank
    print(json.dumps({"zero2": zero2, "zero3": zero3}), file=sys.stderr)
    assert max(r["peak_kib"] for r in zero3) < min(r["peak_kib"] for r in zero2)
