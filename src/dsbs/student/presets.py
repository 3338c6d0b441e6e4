"""Student architectures: the published google/t5-v1_1-* shapes and two small ones of ours."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import T5Config

T5_V1_1_VOCAB = 32128
"""The vocabulary of google/t5-v1_1-* (32,000 pieces + 100 sentinels, padded to 128)."""

# google/t5-v1_1-*: gated-GELU feed-forward, d_kv 64, no rescaling of decoder outputs.
# Numbers from each model's published config.json. `tie_word_embeddings=False` is how v1.1
# configs say "do not rescale"; transformers 5 reads it so and then ties lm_head to the input
# embedding anyway, so parameter counts here are the library's (11.0B for xxl, not 11.1B).
# t5-tiny (0.2M parameters with a 1,000-piece vocabulary) is for tests; t5-mini (1.8M) is the
# demo's student, the smallest shape measured to learn one-step arithmetic from a few hundred
# rows (BENCHMARKS.md); neither is a published checkpoint (nor google/t5-efficient-mini).
PRESETS: dict[str, dict[str, Any]] = {
    "t5-tiny": {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2},
    "t5-mini": {"d_model": 128, "d_ff": 512, "d_kv": 32, "num_heads": 4, "num_layers": 3},
    "t5-v1_1-small": {"d_model": 512, "d_ff": 1024, "d_kv": 64, "num_heads": 6, "num_layers": 8},
    "t5-v1_1-base": {"d_model": 768, "d_ff": 2048, "d_kv": 64, "num_heads": 12, "num_layers": 12},
    "t5-v1_1-large": {"d_model": 1024, "d_ff": 2816, "d_kv": 64, "num_heads": 16, "num_layers": 24},
    "t5-v1_1-xl": {"d_model": 2048, "d_ff": 5120, "d_kv": 64, "num_heads": 32, "num_layers": 24},
    "t5-v1_1-xxl": {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24},
}


def build_config(preset: str, vocab_size: int = T5_V1_1_VOCAB) -> T5Config:
    """The T5Config of a preset with the given vocabulary.

    Raises:
        KeyError: for an unknown preset.
    """
    from transformers import T5Config

    shape = PRESETS[preset]
    # T5Config takes these through **kwargs at run time; its typed signature does not list them.
    return T5Config(  # type: ignore[call-arg]
        vocab_size=vocab_size,
        num_decoder_layers=shape["num_layers"],
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.1,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        **shape,
    )
