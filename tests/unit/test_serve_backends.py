"""The two decoding backends give the same answers (CTranslate2 float32 exactly, int8 nearly)."""

import pytest

from dsbs.config import ServeConfig
from dsbs.serve.backends import load_backend

pytestmark = pytest.mark.slow  # trains the tiny student once (about 20 s)


def _inputs(backend) -> list[str]:
    from students import arithmetic_pairs

    return [backend.info.label_prefix + x for x, _, _ in arithmetic_pairs()[::2]] + [
        backend.info.rationale_prefix + x for x, _, _ in arithmetic_pairs()[::7]
    ]


def test_ctranslate2_float32_answers_exactly_as_hf_and_int8_nearly(tiny_student, tmp_path):
    hf = load_backend(ServeConfig(backend="hf"), str(tiny_student))
    inputs = _inputs(hf)
    expected = hf.generate(inputs, hf.info.max_target_length)
    assert len(set(expected)) > 3, "the test student should not answer everything alike"

    exact = load_backend(
        ServeConfig(backend="ctranslate2", ctranslate2_compute_type="float32"),
        str(tiny_student),
        cache_dir=str(tmp_path),
    )
    assert exact.generate(inputs, hf.info.max_target_length) == expected
    assert exact.count_tokens(inputs) == hf.count_tokens(inputs)
    assert exact.num_parameters == hf.num_parameters

    # The stated tolerance of int8 (the CPU default): at least 90% identical outputs. A
    # barely-trained student has near ties that int8 rounding flips; trained ones fewer.
    quantized = load_backend(ServeConfig(backend="ctranslate2"), str(tiny_student), str(tmp_path))
    answers = quantized.generate(inputs, hf.info.max_target_length)
    same = sum(a == b for a, b in zip(answers, expected, strict=True)) / len(expected)
    assert same >= 0.9, f"int8 agrees on {same:.0%} of outputs"
