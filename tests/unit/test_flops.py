"""The per-stack FLOP count against torch's own counter on a real tiny T5."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dsbs.student.presets import build_config
from dsbs.train.flops import forward_macs, peak_tflops, token_rows, train_flops
from dsbs.train.loss import to_device


@pytest.mark.parametrize(("encoder_tokens", "decoder_tokens"), [(12, 5), (40, 30)])
def test_train_flops_equal_torch_counted_flops_of_forward_and_backward(
    encoder_tokens, decoder_tokens
):
    from transformers import T5ForConditionalGeneration

    config = build_config("t5-tiny", 300)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(config)
    batch = 3  # rows of equal length: no padding, so every computed token is a real one
    input_ids = torch.randint(2, 300, (batch, encoder_tokens))
    labels = torch.randint(2, 300, (batch, decoder_tokens))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids, labels=labels).loss.backward()
    expected = train_flops(config, [(encoder_tokens, decoder_tokens)] * batch)
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.02)


def test_token_rows_count_real_tokens_of_both_tasks_and_to_device_moves_them():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    batch = {
        "label": {"attention_mask": mask, "labels": torch.tensor([[5, 1], [7, -100]])},
        "rationale": {"attention_mask": mask, "labels": torch.tensor([[4, 4, 1], [1, -100, -100]])},
    }
    assert token_rows(batch) == [(3, 2), (4, 1), (3, 3), (4, 1)]
    moved = to_device(batch, torch.device("meta"))
    assert {t.device.type for part in moved.values() for t in part.values()} == {"meta"}
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("cpu") is None


def test_per_stack_count_is_about_half_of_six_times_parameters_times_tokens():
    from transformers import T5ForConditionalGeneration

    config = build_config("t5-v1_1-large")
    with torch.device("meta"):  # shapes only: no memory for 750M parameters
        params = sum(p.numel() for p in T5ForConditionalGeneration(config).parameters())
    naive = 6 * params * (256 + 64)  # a paper-like row: 256 input tokens, 64 target tokens
    counted = train_flops(config, [(256, 64)])
    assert 1.8 < naive / counted < 2.8
    assert forward_macs(config, 256, 0) < forward_macs(config, 256, 64)
