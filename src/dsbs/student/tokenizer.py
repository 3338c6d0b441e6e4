"""The student's tokenizer: a pretrained SentencePiece one, or one trained on the task text."""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path, split_digits: bool = False
) -> Any:
    """Trains a SentencePiece unigram model on `texts` and saves a T5 tokenizer to `out_dir`.

    The ids follow T5's convention (pad 0, eos 1, unk 2, no bos), so a model built from a
    preset needs no remapping. A vocabulary larger than the text supports is shrunk to what
    the text holds rather than failing, and the size used is logged. `split_digits` makes
    every digit its own piece (numbers are otherwise pieces of their own where frequent).

    Returns:
        The tokenizer (a transformers T5Tokenizer), also saved to `out_dir`.
    """
    import sentencepiece as spm
    from transformers import T5Tokenizer

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        # Small task corpora cannot always fill the asked vocabulary; take what they hold.
        hard_vocab_limit=False,
        minloglevel=2,
        split_digits=split_digits,
    )
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "spiece.model").write_bytes(buffer.getvalue())
        tokenizer = T5Tokenizer.from_pretrained(tmp, extra_ids=0)
    tokenizer.save_pretrained(str(out_dir))
    log.info("trained a SentencePiece tokenizer: %d pieces (asked %d)", len(tokenizer), vocab_size)
    return tokenizer


def load_tokenizer(folder: str) -> Any:
    """A tokenizer saved by `train_tokenizer` or a pretrained one (local folder or hub id)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)
