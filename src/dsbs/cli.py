"""The `dsbs` command line: one table of commands, each a thin call into the library.

dsbs run --config configs/local-demo.yaml
dsbs serve --model runs/demo/train/HASH/student
dsbs config show --config configs/local-demo.yaml train.alpha=0.3
dsbs data import-paper --dataset svamp --root datasets --split test --out svamp_test.jsonl
dsbs data synth --task arithmetic --max-ops 1 --n 720 --seed 0 --out runs/demo/synth.jsonl
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from dsbs import __version__
from dsbs.config import (
    Config,
    ConfigError,
    TrainConfig,
    adafactor_problem,
    default_of,
    dump_config,
    load_config,
)
from dsbs.data.paper import PAPER_DATASETS, SPLITS, import_paper
from dsbs.data.quarantine import MAX_BAD_FRACTION
from dsbs.data.synth import MAX_OPS, SYNTH_TASKS, synth
from dsbs.errors import DsbsError
from dsbs.student.presets import PRESETS
from dsbs.train.plan import GPU_MEM_GB

log = logging.getLogger("dsbs")


def _config_show(args: argparse.Namespace) -> str:
    return dump_config(load_config(args.config, args.overrides)).rstrip("\n")


def _resolved(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config, args.overrides)
    log.info("resolved config:\n%s", dump_config(cfg))
    return cfg


def _on_cluster(args: argparse.Namespace, serving: bool = False) -> Config:
    """The resolved config, once the run directory is known to be reachable from every node.

    Serving needs only the student's folder: `serve.model` when given, else the run's.
    """
    from dsbs.cluster import check_run_dir

    cfg = _resolved(args)
    pipeline = cfg.pipeline
    path = (cfg.serve.model if serving else None) or pipeline.run_dir
    check_run_dir(path, pipeline.shared_filesystem, pipeline.ray_address)
    return cfg


def _generate(args: argparse.Namespace) -> str:
    from dsbs.generate import generate_rationales

    cfg = _on_cluster(args)
    summary = generate_rationales(
        cfg.data,
        cfg.teacher,
        cfg.generate,
        cfg.pipeline.run_dir,
        cfg.pipeline.ray_address,
        serve_http=cfg.serve,
    )
    return summary.line()


def _train(args: argparse.Namespace) -> str:
    from dsbs.train.trainer import train_student

    cfg = _on_cluster(args)
    summary = train_student(
        cfg.train, cfg.student, cfg.data.task, cfg.pipeline.run_dir, cfg.pipeline.ray_address
    )
    return summary.line()


def _serve(args: argparse.Namespace) -> str:
    from dsbs.serve.runner import serve_student

    if args.model:
        args.overrides.append(f"serve.model={args.model}")
    cfg = _on_cluster(args, serving=True)
    return serve_student(cfg.serve, cfg.pipeline.run_dir, cfg.pipeline.ray_address).line()


def _run(args: argparse.Namespace) -> str:
    from dsbs.pipeline import run_pipeline
    from dsbs.serve.runner import serve_until_interrupted

    if args.keep_serving:
        args.overrides.append("pipeline.keep_serving=true")
    summary = run_pipeline(_on_cluster(args))
    if summary.url is None:
        return summary.line()
    print(summary.line(), flush=True)
    serve_until_interrupted()
    return f"stopped serving {summary.url}"


def _sweep(args: argparse.Namespace) -> str:
    from dsbs.pipeline import sweep_pipeline

    return sweep_pipeline(_on_cluster(args)).line()


def _evaluate(args: argparse.Namespace) -> str:
    from dsbs.train.evaluate import evaluate_export

    return evaluate_export(args.model, args.data, args.batch_size).line()


def _plan(args: argparse.Namespace) -> str:
    from dsbs.train.plan import PlanInput, format_plan, plan_memory

    cfg = load_config(args.config, args.overrides)
    offload = (
        args.offload
        if args.offload is not None
        else [
            name
            for name, on in (
                ("optimizer", cfg.train.offload_optimizer),
                ("param", cfg.train.offload_param),
            )
            if on
        ]
    )
    zero = args.zero if args.zero is not None else cfg.train.zero_stage
    if "param" in offload and zero != 3:
        raise ConfigError("--offload param needs --zero 3")
    precision = "bf16" if cfg.train.use_gpu or args.config is None else cfg.train.precision
    optimizer = args.optimizer or cfg.train.optimizer
    if optimizer == "adafactor" and (problem := adafactor_problem(zero, precision)):
        raise ConfigError(problem)
    request = PlanInput(
        preset=args.model or cfg.student.preset,
        gpus=args.gpus or cfg.train.num_workers,
        gpu_mem_gb=args.gpu_mem_gb,
        host_mem_gb=args.host_mem_gb,
        zero_stage=zero,
        offload_optimizer="optimizer" in offload,
        offload_param="param" in offload,
        precision="fp32" if precision == "fp32" else "bf16",
        optimizer=optimizer,
        micro_batch_size=args.micro_batch or cfg.train.micro_batch_size,
        max_input_length=args.input_len or cfg.student.max_input_length,
        max_target_length=args.target_len or cfg.student.max_target_length,
        activation_checkpointing=cfg.train.activation_checkpointing or args.config is None,
        rationale=cfg.train.mode == "distill_step_by_step",
    )
    return format_plan(request, plan_memory(request))


def _data_import_paper(args: argparse.Namespace) -> str:
    summary = import_paper(args.dataset, args.root, args.split, args.out, args.max_bad_fraction)
    return summary.line()


def _data_synth(args: argparse.Namespace) -> str:
    return synth(args.task, args.n, args.seed, args.out, args.rationales, args.max_ops)


# Every command the CLI offers, by its words on the command line; tests check this table
# against the parser so that no command is registered without a handler or the reverse.
COMMANDS: dict[str, Callable[[argparse.Namespace], str]] = {
    "run": _run,
    "sweep": _sweep,
    "generate": _generate,
    "train": _train,
    "serve": _serve,
    "evaluate": _evaluate,
    "plan": _plan,
    "config show": _config_show,
    "data import-paper": _data_import_paper,
    "data synth": _data_synth,
}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (defaults when omitted)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="overrides such as train.alpha=0.3"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command in COMMANDS."""
    parser = argparse.ArgumentParser(
        prog="dsbs",
        description="Distilling step-by-step on Ray: teacher rationales -> T5 student -> endpoint.",
    )
    parser.add_argument("--version", action="version", version=f"dsbs {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    run = groups.add_parser(
        "run", help="the whole pipeline: generate, train, evaluate, report, serve smoke test"
    )
    _add_config_args(run)
    run.add_argument(
        "--keep-serving", action="store_true", help="leave the student serving until Ctrl-C"
    )
    _add_config_args(
        groups.add_parser(
            "sweep", help="train every mode at every training fraction; plot accuracy vs data"
        )
    )
    _add_config_args(
        groups.add_parser(
            "generate", help="stage 1: teacher rationales for every input (resumable)"
        )
    )

    _add_config_args(
        groups.add_parser(
            "train", help="stage 2: train the student with Ray Train + DeepSpeed (resumable)"
        )
    )
    serve = groups.add_parser(
        "serve", help="stage 3: serve the student over HTTP (port 8000) until interrupted"
    )
    _add_config_args(serve)
    serve.add_argument(
        "--model", help="exported student folder or s3:// prefix (default: the run's student)"
    )
    evaluate = groups.add_parser("evaluate", help="score an exported student on records")
    evaluate.add_argument("--model", required=True, help="exported student folder or s3:// prefix")
    evaluate.add_argument("--data", required=True, help="records with labels (file or folder)")
    evaluate.add_argument(
        "--batch-size",
        type=int,
        default=default_of(TrainConfig, "eval_batch_size"),
        help="rows per generate call (train.eval_batch_size's default)",
    )
    _add_plan(groups)
    config = groups.add_parser("config", help="inspect the configuration tree")
    config_cmds = config.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    _add_config_args(config_cmds.add_parser("show", help="print the resolved config as YAML"))

    _add_data(groups)
    return parser


def _add_plan(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`dsbs plan`: its flags override the config's student and training layout."""
    plan = groups.add_parser(
        "plan", help="per-GPU memory for a student size, GPU count and ZeRO stage"
    )
    _add_config_args(plan)
    plan.add_argument("--model", choices=sorted(PRESETS), help="student preset (config's)")
    plan.add_argument("--gpus", type=int, help="GPUs (config's train.num_workers)")
    plan.add_argument(
        "--gpu-mem-gb", type=float, default=GPU_MEM_GB, help=f"memory per GPU ({GPU_MEM_GB:g})"
    )
    plan.add_argument(
        "--host-mem-gb", type=float, default=None, help="host RAM per node (checked when given)"
    )
    plan.add_argument("--zero", type=int, choices=(0, 1, 2, 3), help="ZeRO stage")
    plan.add_argument(
        "--offload", nargs="*", choices=("optimizer", "param"), help="what to keep in CPU memory"
    )
    plan.add_argument("--optimizer", choices=("adamw", "adafactor"))
    plan.add_argument("--micro-batch", type=int, help="examples per GPU per forward pass")
    plan.add_argument("--input-len", type=int, help="input tokens")
    plan.add_argument("--target-len", type=int, help="target tokens")


def _add_data(groups: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`dsbs data import-paper` and `dsbs data synth`."""
    data = groups.add_parser("data", help="prepare datasets")
    data_cmds = data.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    paper = data_cmds.add_parser(
        "import-paper", help="read the paper repository's datasets/ layout into records"
    )
    paper.add_argument("--dataset", required=True, choices=PAPER_DATASETS)
    paper.add_argument("--root", required=True, help="the datasets/ folder (local or s3://)")
    paper.add_argument("--split", required=True, choices=SPLITS)
    paper.add_argument("--out", required=True, help="output .jsonl or .parquet (local or s3://)")
    paper.add_argument(
        "--max-bad-fraction",
        type=float,
        default=MAX_BAD_FRACTION,
        help=f"fail when more than this share of rows is bad (default {MAX_BAD_FRACTION:g})",
    )
    synth_cmd = data_cmds.add_parser("synth", help="write the project's synthetic labeled data")
    synth_cmd.add_argument("--task", required=True, choices=sorted(SYNTH_TASKS))
    synth_cmd.add_argument("--n", type=int, required=True, help="number of rows")
    synth_cmd.add_argument("--seed", type=int, default=0)
    synth_cmd.add_argument(
        "--max-ops",
        type=int,
        default=MAX_OPS,
        help=f"at most this many operations per problem, 1 to {MAX_OPS} (default {MAX_OPS})",
    )
    synth_cmd.add_argument(
        "--rationales",
        action="store_true",
        help="add a worked solution as rationale and gold as teacher label (an oracle teacher)",
    )
    synth_cmd.add_argument(
        "--out", required=True, help="output .jsonl/.parquet/.csv (local or s3://)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit status (0 ok, 1 bad data or storage, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    # dsbs's own progress at INFO; Ray's, vLLM's and others' only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    handler = COMMANDS[
        f"{args.group} {args.command}" if getattr(args, "command", None) else args.group
    ]
    try:
        print(handler(args))
    except DsbsError as err:
        # dsbs's own failures say what to change; anything else is a bug and keeps its traceback.
        print(f"dsbs: {err.kind}: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
