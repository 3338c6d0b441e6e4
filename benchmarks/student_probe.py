"""Probe: how fast does a from-scratch T5 learn the synthetic arithmetic? (Not a test.)

    .venv/bin/python benchmarks/student_probe.py --n 1200 --steps 900 --digits 0
    .venv/bin/python benchmarks/student_probe.py --n 1500 --steps 900 --digits 0 --templates one_

Chooses the demo's student settings (issue 16) on a validation split, in one process without
Ray or DeepSpeed so that a setting costs a minute or two: rows from `dsbs data synth`
(gold labels, oracle rationales), 20% held out for validation, a SentencePiece tokenizer
trained on the training text (optionally splitting digits), a T5 of the given shape with its
output layer drawn as dsbs draws it (`--hf-init 1`: as transformers does), AdamW with 20
warm-up steps and linear decay, `--batch` rows a step. Prints the validation label accuracy
(svamp metric: equal values) every `--every` steps, with one decoded answer.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch


def main() -> None:
    """Trains one setting and prints validation accuracy along the way."""
    from transformers import T5ForConditionalGeneration

    from dsbs.data.synth import MAX_OPS, synth_arithmetic
    from dsbs.student.decode import generate_texts
    from dsbs.student.model import init_output_layer
    from dsbs.student.presets import PRESETS, build_config
    from dsbs.student.tokenizer import train_tokenizer
    from dsbs.tasks import get_task
    from dsbs.train.examples import Collator

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=1200, help="synthetic rows (before --templates)")
    p.add_argument("--templates", default="", help="comma-separated template name prefixes")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--digits", type=int, default=0, help="1: SentencePiece splits digits")
    p.add_argument("--rationale", type=int, default=0, help="1: add the explain: task, alpha 0.5")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=300)
    p.add_argument("--batch", type=int, default=16, help="rows per step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-ops", type=int, default=0, help="synth's max_ops (0: all templates)")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--hf-init", type=int, default=0, help="1: transformers' lm_head init (std 1)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    records = synth_arithmetic(a.n, 0, rationales=True, max_ops=a.max_ops or MAX_OPS)
    if a.templates:
        prefixes = tuple(a.templates.split(","))
        records = [r for r in records if r.meta["template"].startswith(prefixes)]
    random.Random(0).shuffle(records)  # noqa: S311 - a reproducible split
    cut = max(40, len(records) // 5)
    valid, train = records[:cut], records[cut:]
    texts = [t for r in train for t in (r.input, r.label, r.rationale) if t]
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(texts, a.vocab, tmp, split_digits=bool(a.digits))
    PRESETS["probe"] = {
        "d_model": a.d_model,
        "d_ff": a.d_ff,
        "d_kv": a.d_model // a.heads,
        "num_heads": a.heads,
        "num_layers": a.layers,
    }
    config = build_config("probe", len(tok))
    config.dropout_rate = a.dropout
    model = T5ForConditionalGeneration(config)
    if not a.hf_init:
        init_output_layer(model)  # as dsbs builds a student from scratch
    params = sum(x.numel() for x in model.parameters()) / 1e6
    print(f"train {len(train)} valid {len(valid)} vocab {len(tok)} params {params:.2f}M")
    collate = Collator(tok, 128, 128, bool(a.rationale))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / a.steps)
    )
    task = get_task("svamp")

    def accuracy() -> tuple[float, str]:
        model.eval()
        right, outs = 0, [""]
        for i in range(0, len(valid), 64):
            rows = valid[i : i + 64]
            outs = generate_texts(model, tok, ["predict: " + r.input for r in rows], 128, 40)
            right += sum(
                task.is_correct(task.normalize(o), r.label) for o, r in zip(outs, rows, strict=True)
            )
        model.train()
        return right / len(valid), outs[0]

    started, step, rng = time.time(), 0, random.Random(0)  # noqa: S311
    while step < a.steps:
        order = list(range(len(train)))
        rng.shuffle(order)
        for i in range(0, len(order) - a.batch + 1, a.batch):
            rows = [train[j] for j in order[i : i + a.batch]]
            batch = collate(
                {
                    "input": [r.input for r in rows],
                    "target_label": [r.label for r in rows],
                    "rationale": [r.rationale for r in rows],
                }
            )
            loss = model(**batch["label"]).loss
            if a.rationale:
                loss = 0.5 * loss + 0.5 * model(**batch["rationale"]).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if step % a.every == 0 or step == a.steps:
                acc, example = accuracy()
                print(
                    f"step {step} loss {loss.item():.3f} valid {acc:.3f} "
                    f"{time.time() - started:.0f}s e.g. {example!r}"
                )
            if step >= a.steps:
                break


if __name__ == "__main__":
    main()
