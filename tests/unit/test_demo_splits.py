"""The demo's held-out test rows stay held out: never training rows, never prompt exemplars.

The demo's rows come from `dsbs data synth` with the Makefile's arguments, and the split is a
hash of (seed, id), so rebuilding the rows and splitting them here gives the demo's own split.
"""

import re
from pathlib import Path

from dsbs.config import load_config
from dsbs.data.synth import synth_arithmetic
from dsbs.records import write_records
from dsbs.tasks import get_task
from dsbs.train.data import read_examples, write_splits

ROOT = Path(__file__).resolve().parents[2]


def _demo_synth_args() -> tuple[int, int, int]:
    """`--n`, `--seed` and `--max-ops` of the Makefile's `dsbs data synth` line for the demo."""
    makefile = (ROOT / "Makefile").read_text()
    line = next(x for x in makefile.splitlines() if "dsbs data synth" in x and "runs/demo" in x)
    n = re.search(r"--n (\d+)", line)
    seed = re.search(r"--seed (\d+)", line)
    ops = re.search(r"--max-ops (\d+)", line)
    assert n and seed and ops, line
    return int(n.group(1)), int(seed.group(1)), int(ops.group(1))


def test_demo_test_rows_are_never_trained_on_or_shown_in_prompts(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "local-demo.yaml")
    n, seed, max_ops = _demo_synth_args()
    # Oracle rationales give every row the teacher fields its mode needs, so no row is skipped
    # and every row lands in the split its id hashes to, as in the demo.
    records = synth_arithmetic(n, seed, rationales=True, max_ops=max_ops)
    source = tmp_path / "synth.jsonl"
    write_records(str(source), records)
    manifest = write_splits(cfg.train, str(source), str(tmp_path / "splits"))

    splits = {name: list(read_examples(files)) for name, files in manifest.files.items()}
    assert sum(len(rows) for rows in splits.values()) == n
    assert splits["test"], "the demo holds out no test rows"
    test_ids = {e.id for e in splits["test"]}
    test_inputs = {e.input.strip() for e in splits["test"]}
    for name in ("train", "valid"):
        assert not test_ids & {e.id for e in splits[name]}, name
        # Same text under another id would leak the answer as surely as the same id.
        assert not test_inputs & {e.input.strip() for e in splits[name]}, name
    exemplars = {e.input.strip() for e in get_task(cfg.data.task).exemplars}
    assert not test_inputs & exemplars
