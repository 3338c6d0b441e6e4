"""`dsbs plan`: per-GPU memory from DeepSpeed's estimators plus T5 activations."""

from pathlib import Path

import pytest

from dsbs import cli
from dsbs.train.plan import PlanInput, plan_memory

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_xxl_config_fits_eight_80gb_gpus(capsys):
    config = REPO / "configs" / "paper" / "svamp_palm_to_t5-v1_1-xxl_8gpu.yaml"
    assert cli.main(["plan", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "t5-v1_1-xxl" in out and "ZeRO-3" in out and "\nFITS" in out


def test_every_paper_config_fits_its_gpus(capsys):
    configs = sorted((REPO / "configs" / "paper").glob("*.yaml"))
    assert len(configs) == 12  # svamp, cqa, anli1, esnli x t5-v1_1-base, large, xxl
    for config in configs:
        assert cli.main(["plan", "--config", str(config)]) == 0
        assert "\nFITS" in capsys.readouterr().out, config.name


def test_xxl_on_one_gpu_does_not_fit_and_offload_changes_the_gpu_share():
    one = plan_memory(PlanInput(preset="t5-v1_1-xxl", gpus=1, gpu_mem_gb=80, zero_stage=3))
    assert not one.fits and one.max_micro_batch_size == 0
    offloaded = plan_memory(
        PlanInput(
            preset="t5-v1_1-xxl",
            gpus=8,
            gpu_mem_gb=80,
            zero_stage=3,
            offload_optimizer=True,
            offload_param=True,
        )
    )
    assert offloaded.weights == 0 and offloaded.optimizer == 0 and offloaded.fits


def test_model_states_are_deepspeeds_estimate_and_activations_grow_with_batch():
    small = PlanInput(
        preset="t5-v1_1-large", gpus=1, gpu_mem_gb=80, zero_stage=2, micro_batch_size=4
    )
    plan = plan_memory(small)
    states = plan.weights + plan.gradients + plan.optimizer + plan.gathered_layer
    assert plan.deepspeed_model_states is not None
    assert abs(states - plan.deepspeed_model_states) < 16  # rounding of the scaled parts
    assert plan.deepspeed_model_states == 20 * plan.params  # 2 + 18 bytes per parameter on 1 GPU
    bigger = plan_memory(PlanInput(**{**small.__dict__, "micro_batch_size": 8}))
    assert bigger.activations > plan.activations and plan.max_micro_batch_size >= 8
    no_ckpt = plan_memory(PlanInput(**{**small.__dict__, "activation_checkpointing": False}))
    assert no_ckpt.activations > plan.activations
    whole = {**small.__dict__, "zero_stage": 0, "precision": "fp32"}
    adamw = plan_memory(PlanInput(**whole))
    adafactor = plan_memory(PlanInput(**{**whole, "optimizer": "adafactor"}))
    assert adafactor.deepspeed_model_states is None and adafactor.optimizer < adamw.optimizer / 2


def test_adafactor_is_refused_where_deepspeed_hands_it_flat_partitions():
    """Under ZeRO or mixed precision Adafactor got 1-D partitions: unfactored, clipped per part."""
    from dsbs.config import ConfigError, load_config

    for zero, precision in ((2, "bf16"), (1, "fp32"), (0, "bf16"), (3, "bf16")):
        with pytest.raises(ValueError, match="Adafactor needs whole weight matrices"):
            PlanInput(
                preset="t5-small",
                gpus=1,
                gpu_mem_gb=80,
                zero_stage=zero,
                precision=precision,
                optimizer="adafactor",
            )
    with pytest.raises(ConfigError, match="Adafactor needs whole weight matrices"):
        load_config(None, ["train.optimizer=adafactor"])  # zero_stage 2 by default
    cfg = load_config(None, ["train.optimizer=adafactor", "train.zero_stage=0"])
    assert cfg.train.optimizer == "adafactor"


def test_host_ram_per_rank_counts_the_whole_model_unless_zero3_builds_it_partitioned():
    """ZeRO-2 builds all of xxl in fp32 on every rank: 8 ranks of a pod need ~330 GB of host RAM."""
    xxl = {"preset": "t5-v1_1-xxl", "gpus": 8, "gpu_mem_gb": 80}
    zero2 = plan_memory(PlanInput(**xxl, zero_stage=2, host_mem_gb=256))
    zero3 = plan_memory(PlanInput(**xxl, zero_stage=3, host_mem_gb=256))
    assert zero2.host_ram_per_rank >= 4 * zero2.params
    assert zero3.host_ram_per_rank < zero2.host_ram_per_rank / 6
    assert not zero2.host_fits and not zero2.fits
    assert zero3.host_fits and zero3.fits
    offloaded = plan_memory(PlanInput(**xxl, zero_stage=3, offload_optimizer=True))
    assert offloaded.host_ram_per_rank > zero3.host_ram_per_rank + 10 * zero3.params // 8
