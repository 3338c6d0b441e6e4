"""Training examples/s: dsbs's Ray Train + DeepSpeed loop against the paper's own approach.

    .venv/bin/python benchmarks/train_throughput.py --rows 600 --steps 60 --repeats 2

The baseline is the paper code's approach (github.com/google-research/distilling-step-by-step,
model_utils.py), written here for the comparison: a `Seq2SeqTrainer` subclass whose
`compute_loss` runs two forward passes (label, rationale), fed by a `DataCollatorForSeq2Seq`
subclass that splits each batch with pandas, on data tokenized ahead with `datasets.map`.
It runs under the same Ray Train TorchTrainer (2 workers, gloo, DDP through the HF Trainer).

Both sides: the same tiny T5 (preset t5-tiny) built from config with the same seed, the same
SentencePiece tokenizer, the same rows, micro-batch 8 per worker, 2 workers, AdamW, fp32 on
CPU, no evaluation. Throughput is measured the same way on both: input rows per second between
the end of step `--warmup` and the last step, on rank 0. Runs alternate (baseline, dsbs,
baseline, dsbs, ...) and the medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _paper_loop(config: dict[str, Any]) -> None:
    """The paper's trainer and collator, inside a Ray Train worker."""
    import pandas as pd
    import ray.train
    import torch
    from datasets import Dataset
    from transformers import (
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        T5ForConditionalGeneration,
        TrainerCallback,
    )

    from dsbs.student.presets import build_config
    from dsbs.student.tokenizer import load_tokenizer

    class TaskPrefixDataCollator(DataCollatorForSeq2Seq):  # as in the paper's model_utils.py
        def __call__(self, features, return_tensors=None):
            features_df = pd.DataFrame(features)
            pred_features = features_df.loc[
                :,
                ~features_df.columns.isin(["aux_labels", "expl_input_ids", "expl_attention_mask"]),
            ].to_dict("records")
            expl_features = (
                features_df.loc[
                    :, ~features_df.columns.isin(["labels", "input_ids", "attention_mask"])
                ]
                .rename(
                    columns={
                        "aux_labels": "labels",
                        "expl_input_ids": "input_ids",
                        "expl_attention_mask": "attention_mask",
                    }
                )
                .to_dict("records")
            )
            pred_features = super().__call__(pred_features, return_tensors)
            expl_features = super().__call__(expl_features, return_tensors)
            return {"pred": pred_features, "expl": expl_features}

    class TaskPrefixTrainer(Seq2SeqTrainer):  # as in the paper's model_utils.py
        def __init__(self, alpha, output_rationale, **kwargs):
            super().__init__(**kwargs)
            self.alpha = alpha
            self.output_rationale = output_rationale

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            pred_outputs = model(**inputs["pred"])
            expl_outputs = model(**inputs["expl"])
            loss = self.alpha * pred_outputs.loss + (1.0 - self.alpha) * expl_outputs.loss
            return (loss, {"pred": pred_outputs, "expl": expl_outputs}) if return_outputs else loss

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    tokenizer = load_tokenizer(config["tokenizer"])
    rows = [json.loads(line) for line in Path(config["data"]).read_text().splitlines()]
    rows = [{k: r[k] for k in ("input", "label", "rationale")} for r in rows]

    def tokenize(examples):  # as in the paper's run.py tokenize_function
        model_inputs = tokenizer(
            ["predict: " + t for t in examples["input"]],
            max_length=config["max_len"],
            truncation=True,
        )
        expl = tokenizer(
            ["explain: " + t for t in examples["input"]],
            max_length=config["max_len"],
            truncation=True,
        )
        model_inputs["expl_input_ids"] = expl["input_ids"]
        model_inputs["expl_attention_mask"] = expl["attention_mask"]
        model_inputs["labels"] = tokenizer(
            text_target=examples["label"], max_length=config["max_len"], truncation=True
        )["input_ids"]
        model_inputs["aux_labels"] = tokenizer(
            text_target=examples["rationale"], max_length=config["max_len"], truncation=True
        )["input_ids"]
        return model_inputs

    dataset = Dataset.from_list(rows)
    dataset = dataset.map(tokenize, batched=True, remove_columns=["input", "label", "rationale"])
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(build_config("t5-tiny", len(tokenizer)))
    with tempfile.TemporaryDirectory() as out:
        args = Seq2SeqTrainingArguments(
            output_dir=out,
            per_device_train_batch_size=config["micro_batch"],
            max_steps=config["steps"],
            learning_rate=config["lr"],
            remove_unused_columns=False,  # as in the paper: the collator needs every column
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        timer = StepTimes()
        trainer = TaskPrefixTrainer(
            alpha=0.5,
            output_rationale=False,
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=TaskPrefixDataCollator(tokenizer=tokenizer, model=model),
            callbacks=[timer],
        )
        trainer.train()
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["result"]).write_text(json.dumps({"times": timer.times}))


def _baseline(data: str, tokenizer: str, args: argparse.Namespace) -> float:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "times.json")
        TorchTrainer(
            _paper_loop,
            train_loop_config={
                "data": data,
                "tokenizer": tokenizer,
                "steps": args.steps,
                "micro_batch": args.micro_batch,
                "lr": 1e-3,
                "max_len": 128,
                "result": result,
            },
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
            run_config=RunConfig(name="paper", storage_path=tmp),
        ).fit()
        times = json.loads(Path(result).read_text())["times"]
    rows = (len(times) - args.warmup) * args.micro_batch * 2
    return rows / (times[-1] - times[args.warmup - 1])


def _dsbs(data: str, tokenizer: str, args: argparse.Namespace, run: int) -> float:
    from dsbs import storage
    from dsbs.config import load_config
    from dsbs.train.trainer import train_student

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            None,
            [
                f"train.data={data}",
                f"student.tokenizer={tokenizer}",
                f"pipeline.run_dir={tmp}",
                f"train.max_steps={args.steps}",
                f"train.micro_batch_size={args.micro_batch}",
                f"train.eval_every={args.steps + 1}",
                f"train.checkpoint_every={args.steps + 1}",
                "train.lr=1e-3",
                "train.zero_stage=2",
                "train.valid_fraction=0.0",
                "train.test_fraction=0.01",
                "student.max_input_length=128",
                "student.max_target_length=128",
                f"train.seed={run}",
                *args.dsbs_override,
            ],
        )
        summary = train_student(cfg.train, cfg.student, "svamp", tmp)
        text = storage.read_bytes(storage.join(summary.output, "metrics.jsonl")).decode()
    rows = [json.loads(line) for line in text.splitlines()]
    seconds = {r["step"]: r["train_seconds"] for r in rows if r["split"] == "train"}
    examples = (args.steps - args.warmup) * args.micro_batch * 2
    return examples / (seconds[args.steps] - seconds[args.warmup])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--data", help="records with rationales (default: synthetic arithmetic)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--dsbs-override", nargs="*", default=[], help="config overrides for the dsbs side"
    )
    args = parser.parse_args()

    import ray

    from dsbs.data.synth import synth
    from dsbs.records import read_records, write_records
    from dsbs.student.tokenizer import train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="dsbs-bench-train-"))
    data = str(work / "rows.jsonl")
    if args.data:  # e.g. `dsbs data import-paper` output: the paper's rows and PaLM rationales
        usable = [r for r in read_records(args.data) if r.teacher_label and r.rationale]
        write_records(data, usable[: args.rows])
    else:
        synth("arithmetic", args.rows, 0, data, rationales=True)
    records = read_records(data)
    for record in records:  # both sides learn the teacher's label
        record.label = record.teacher_label
    write_records(data, records)
    texts = [f"predict: {r.input}" for r in records] + [f"explain: {r.input}" for r in records]
    texts += [r.label or "" for r in records] + [r.rationale or "" for r in records]
    train_tokenizer(texts, 1000, work / "tokenizer")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    results: dict[str, list[float]] = {"paper": [], "dsbs": []}
    for run in range(args.repeats):
        results["paper"].append(_baseline(data, str(work / "tokenizer"), args))
        results["dsbs"].append(_dsbs(data, str(work / "tokenizer"), args, run))
        print(
            f"run {run}: paper {results['paper'][-1]:.1f}, "
            f"dsbs {results['dsbs'][-1]:.1f} examples/s"
        )
    paper, ours = statistics.median(results["paper"]), statistics.median(results["dsbs"])
    print(
        json.dumps(
            {
                "paper_examples_per_s": paper,
                "dsbs_examples_per_s": ours,
                "ratio": ours / paper,
                "runs": results,
            }
        )
    )


if __name__ == "__main__":
    main()
