"""The pure pieces of training: examples per mode, splits, collation, the loss, DeepSpeed knobs."""

import math

import pytest
import torch
import torch.nn.functional as F

from dsbs.config import TrainConfig
from dsbs.student.presets import build_config
from dsbs.student.tokenizer import train_tokenizer
from dsbs.train.data import MIN_PASS_ROWS, pass_copies
from dsbs.train.deepspeed_setup import deepspeed_config, lr_lambda
from dsbs.train.examples import (
    IGNORE_INDEX,
    Collator,
    length_grouped,
)
from dsbs.train.loss import multitask_loss


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    texts = [
        f"predict: {i} plus {i + 1}? explain: {i} + {i + 1} = {2 * i + 1}." for i in range(200)
    ]
    return train_tokenizer(texts, 120, tmp_path_factory.mktemp("tok"))


def test_collator_pads_masks_labels_and_counts_truncation(tokenizer):
    collate = Collator(tokenizer, max_input_length=6, max_target_length=4, rationale=True)
    batch = collate(
        {
            "input": ["1 plus 2?", "10 plus 11 plus 12 plus 13?"],
            "target_label": ["3", "46"],
            "rationale": ["1 + 2 = 3.", "10 + 11 + 12 + 13 = 46."],
        }
    )
    label, rationale = batch["label"], batch["rationale"]
    assert label["input_ids"].shape[1] <= 6 and rationale["labels"].shape[1] <= 4
    assert (label["attention_mask"] == (label["input_ids"] != tokenizer.pad_token_id)).all()
    # every sequence ends in EOS, also when cut; padding is -100 in labels only
    for row in rationale["labels"]:
        kept = row[row != IGNORE_INDEX]
        assert kept[-1] == tokenizer.eos_token_id
    assert (label["labels"] == IGNORE_INDEX).any() or label["labels"].shape[1] == 2
    assert collate.truncated["input"] >= 2 and collate.truncated["rationale"] >= 1
    only_label = Collator(tokenizer, 32, 32, rationale=False)(
        {"input": ["x"], "target_label": ["1"], "rationale": [""]}
    )
    assert set(only_label) == {"label"}


def test_tokenizer_follows_t5_ids(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    ids = tokenizer("predict: 3 plus 4?")["input_ids"]
    assert ids[-1] == 1 and tokenizer.decode(ids, skip_special_tokens=True) == "predict: 3 plus 4?"


def test_multitask_loss_equals_the_weighted_cross_entropies_computed_directly(tokenizer):
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(build_config("t5-tiny", len(tokenizer))).eval()
    batch = Collator(tokenizer, 32, 32, rationale=True)(
        {
            "input": ["1 plus 2?", "3 plus 4?"],
            "target_label": ["3", "7"],
            "rationale": ["1 + 2 = 3.", "3 + 4 is 7."],
        }
    )
    losses = multitask_loss(model, batch, alpha=0.3)

    def direct(task):
        logits = model(**batch[task]).logits  # [B, T, V]
        return F.cross_entropy(
            logits.flatten(0, 1), batch[task]["labels"].flatten(), ignore_index=IGNORE_INDEX
        )

    label_ce, rationale_ce = direct("label"), direct("rationale")
    assert math.isclose(losses.label_loss.item(), label_ce.item(), rel_tol=1e-5)
    assert math.isclose(losses.rationale_loss.item(), rationale_ce.item(), rel_tol=1e-5)
    assert math.isclose(
        losses.total.item(), 0.3 * label_ce.item() + 0.7 * rationale_ce.item(), rel_tol=1e-5
    )
    alone = multitask_loss(model, {"label": batch["label"]}, alpha=0.3)
    assert alone.rationale_loss is None and math.isclose(
        alone.total.item(), label_ce.item(), rel_tol=1e-5
    )


def test_deepspeed_config_follows_the_train_section():
    ds = deepspeed_config(
        TrainConfig(
            zero_stage=3,
            offload_optimizer=True,
            offload_param=True,
            micro_batch_size=4,
            grad_accum_steps=2,
        )
    )
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (4, 2)
    assert ds["bf16"]["enabled"] is False
    assert deepspeed_config(TrainConfig(use_gpu=True, precision="bf16"))["bf16"]["enabled"] is True


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedule_warms_up_then_decays(schedule):
    factor = lr_lambda(TrainConfig(warmup_steps=10, max_steps=110, schedule=schedule))
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0)
    end = factor(110)
    assert end == pytest.approx(1.0 if schedule == "constant" else 0.0, abs=1e-9)
    if schedule != "constant":
        assert 0.0 < factor(60) < 1.0


def test_length_grouping_keeps_every_full_micro_batch_and_sorts_within():
    import random

    batch = {
        "input": [f"q{'x' * (i * 7 % 23)}" for i in range(37)],
        "target_label": ["1"] * 37,
        "rationale": ["r" * (i * 5 % 17) for i in range(37)],
    }
    groups = length_grouped(batch, 8, random.Random(0))  # noqa: S311
    assert len(groups) == 4 and all(len(g["input"]) == 8 for g in groups)
    lengths = sorted(sum(len(g[k][i]) for k in g) for g in groups for i in range(8))
    assert lengths == sorted(sum(len(batch[k][i]) for k in batch) for i in range(37))[:32]
    spans = [max(len(x) for x in g["input"]) - min(len(x) for x in g["input"]) for g in groups]
    assert max(spans) <= 15  # similar lengths batched together
    unsorted = length_grouped(batch, 8, random.Random(0), sort=False)  # noqa: S311
    assert sorted(x for g in unsorted for x in g["input"]) == sorted(batch["input"][:32])


def test_small_datasets_are_repeated_within_one_pass():
    few_steps = pass_copies(100, TrainConfig(max_steps=5, num_workers=2, micro_batch_size=8))
    assert few_steps == 1  # 80 rows needed: one epoch
    many = pass_copies(100, TrainConfig(max_steps=10_000, num_workers=2, micro_batch_size=8))
    assert many == 164 and many * 100 >= MIN_PASS_ROWS
    assert pass_copies(10**6, TrainConfig(max_steps=10_000)) == 1


class _Recorded(Exception):
    pass


def test_evaluation_reduces_on_the_engines_device(monkeypatch):
    """NCCL refuses CPU tensors: the evaluator's all-reduce must run on the engine's device.

    No GPU here, so the engine's device is "meta" and all_reduce is replaced by a recorder: a
    CPU tensor there is exactly what killed GPU runs at their first evaluation.
    """
    import torch.distributed as dist

    from dsbs.train import evaluate

    seen = []

    def record(tensor, *args, **kwargs):
        seen.append(tensor.device)
        raise _Recorded

    class Engine:
        device = torch.device("meta")

        def eval(self):
            pass

    monkeypatch.setattr(dist, "all_reduce", record)
    train = TrainConfig()
    evaluator = evaluate.Evaluator(Engine(), None, None, train, None, "svamp", rank=0, world=1)
    with pytest.raises(_Recorded):
        evaluator.run([], step=1, split="valid")
    assert seen == [torch.device("meta")]


def test_all_reduce_sums_over_a_real_process_group():
    import torch.distributed as dist
    from ports import free_port

    from dsbs.train.evaluate import all_reduce_sums

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        assert all_reduce_sums([1.5, 2.0, 0.0], torch.device("cpu")) == [1.5, 2.0, 0.0]
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NCCL)")
def test_all_reduce_sums_under_nccl():
    import torch.distributed as dist
    from ports import free_port

    from dsbs.train.evaluate import all_reduce_sums

    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        assert all_reduce_sums([3.0, 4.0], torch.device("cuda", 0)) == [3.0, 4.0]
    finally:
        dist.destroy_process_group()


def test_the_logged_step_loss_is_the_mean_over_micro_batches_and_ranks():
    """It was rank 0's last micro-batch: with grad_accum_steps=2 half the step went unseen."""
    import torch.distributed as dist
    from ports import free_port

    from dsbs.train.loop import StepLoss
    from dsbs.train.loss import Losses

    def losses(label, rationale):
        total = torch.tensor(0.5 * label + 0.5 * rationale)
        return Losses(total, torch.tensor(label), torch.tensor(rationale))

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        step = StepLoss()
        step.add(losses(1.0, 3.0))
        step.add(losses(3.0, 5.0))
        assert step.reduce(torch.device("cpu")) == {
            "loss": 3.0,
            "label_loss": 2.0,
            "rationale_loss": 4.0,
        }
        step.add(Losses(torch.tensor(2.0), torch.tensor(2.0), None))  # a fresh step
        assert step.reduce(torch.device("cpu")) == {"loss": 2.0, "label_loss": 2.0}
    finally:
        dist.destroy_process_group()


def test_one_reference_label_and_named_sums_give_the_evaluation_metrics():
    """Training and `dsbs evaluate` score against one reference: gold, else the teacher's."""
    from dsbs.train.evaluate import EvalSums, reference_label

    assert reference_label("7", "8") == "7"
    assert reference_label("", "8") == reference_label(None, "8") == "8"
    assert reference_label(None, None) == ""
    sums = EvalSums()
    sums.add_loss("label", 2.0, 10)
    sums.add_loss("label", 1.0, 30)
    sums.add_loss("rationale", 3.0, 5)
    sums.correct, sums.scored = 3, 4
    assert sums.metrics("valid", 7) == {
        "split": "valid",
        "step": 7,
        "rows": 4,
        "label_loss": 1.25,
        "rationale_loss": 3.0,
        "label_accuracy": 0.75,
    }
    assert EvalSums().metrics("test", 1) == {"split": "test", "step": 1, "rows": 0}


def test_a_worker_s_dsbs_error_ends_training_as_a_clear_error_and_a_bug_keeps_its_own():
    """A full disk at export came out of `dsbs train` as Ray's WorkerGroupError traceback."""
    from ray.train import WorkerGroupError

    from dsbs.storage import StorageError
    from dsbs.train.trainer import TrainingError, failure_of

    full = StorageError("runs/x/student: the export failed (No space left on device)")
    clear = failure_of(WorkerGroupError("rank 0 failed", {1: ValueError("x"), 0: full}), 2)
    assert isinstance(clear, TrainingError)
    assert str(clear) == f"training failed after 2 restarts: {full}"
    bug = WorkerGroupError("rank 0 failed", {0: KeyError("step")})
    assert failure_of(bug, 0) is bug


def test_the_step_log_says_how_long_the_rest_of_the_run_takes_at_its_pace():
    """On a slow CPU the demo's training takes several times as long: the log says so."""
    from dsbs.train.loop import time_left

    assert time_left(100.0, 50, 950) == "31 min 40 s"  # 2 s a step
    assert time_left(10.0, 10, 5) == "5 s"
    assert time_left(30.0, 10, 0) == "0 s"
