"""Learning check: does the rationale task help a tiny from-scratch student? (Not a test.)

    .venv/bin/python benchmarks/learning_check.py --steps 400
    .venv/bin/python benchmarks/learning_check.py --steps 400 --paper-root ../shared/data/paper

The same tiny T5 (preset t5-tiny, built from config, SentencePiece tokenizer trained on the
training text), the same budget (steps, micro-batch, 2 Ray Train workers, ZeRO-2, AdamW,
learning rate) and the same seed, trained in `standard_finetune` (gold label only) and in
`distill_step_by_step` (gold label + rationale, alpha 0.5), on:
- synthetic arithmetic with the generator's worked solutions as rationales (an oracle teacher);
- the paper's SVAMP train split with PaLM's rationales (when --paper-root is given), scored on
  its test split.
Test label accuracy is by the task metric (svamp: equal values of the equations).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def _run(data: str, test: str | None, mode: str, steps: int, run_dir: str) -> dict:
    from dsbs.config import load_config
    from dsbs.train.trainer import train_student

    overrides = [
        f"train.data={data}",
        f"pipeline.run_dir={run_dir}",
        f"train.mode={mode}",
        "train.label_source=gold",
        f"train.max_steps={steps}",
        f"train.eval_every={max(1, steps // 4)}",
        f"train.checkpoint_every={steps}",
        "train.micro_batch_size=16",
        "train.lr=2e-3",
        "train.warmup_steps=20",
        "train.zero_stage=2",
        "train.eval_max_rows=64",
        "student.vocab_size=1000",
        "student.max_input_length=128",
        "student.max_target_length=128",
    ]
    if test:
        overrides.append(f"train.test_data={test}")
    else:
        overrides.append("train.test_fraction=0.2")
    cfg = load_config(None, overrides)
    summary = train_student(cfg.train, cfg.student, "svamp", run_dir)
    return {
        "mode": mode,
        "train_rows": summary.rows["train"],
        "test_rows": summary.rows["test"],
        "test_accuracy": summary.test_accuracy,
        "final_label_loss": summary.label_loss,
        "seconds": round(summary.wall_time_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--synth-rows", type=int, default=1000)
    parser.add_argument("--paper-root", help="the paper's datasets/ folder (optional)")
    args = parser.parse_args()

    from dsbs.data.paper import import_paper
    from dsbs.data.synth import synth

    work = Path(tempfile.mkdtemp(prefix="dsbs-learning-"))
    datasets = {}
    synth_file = str(work / "synth.jsonl")
    synth("arithmetic", args.synth_rows, 0, synth_file, rationales=True)
    datasets["synthetic arithmetic"] = (synth_file, None)
    if args.paper_root:
        for split in ("train", "test"):
            import_paper("svamp", args.paper_root, split, str(work / f"svamp_{split}.jsonl"))
        datasets["svamp (PaLM rationales)"] = (
            str(work / "svamp_train.jsonl"),
            str(work / "svamp_test.jsonl"),
        )
    results = []
    for name, (data, test) in datasets.items():
        for mode in ("standard_finetune", "distill_step_by_step"):
            row = {
                "data": name,
                **_run(data, test, mode, args.steps, str(work / f"{name[:5]}-{mode}")),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
    print(json.dumps({"steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
