"""Hostile input, property-based: the paper importer, the generate stage's input reader and the
config loader meet random and broken files. Each case ends as quarantine rows with a reason,
or a dsbs error that says what is wrong (a DsbsError), never a traceback or a partial output.

`make test` runs CASES examples of each (hypothesis' default profile here); `make chaos` runs
about a thousand (HYPOTHESIS_PROFILE=chaos) and records the counts for RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from chaos_record import record
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dsbs.config import ConfigError, load_config
from dsbs.data.paper import import_paper
from dsbs.errors import DsbsError
from dsbs.generate.inputs import prepare_inputs
from dsbs.records import read_records
from dsbs.tasks import get_task

pytestmark = pytest.mark.chaos

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "chaos", max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

TEXT = st.text(max_size=40)
HUGE = st.builds(lambda n: "x" * n, st.integers(10_000, 200_000))
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    TEXT,
    HUGE,
    st.lists(TEXT, max_size=3),
    st.dictionaries(TEXT, TEXT, max_size=3),
)
FIELDS = ("input", "label", "question", "Body", "Question", "Equation", "id", "meta", "task")
ROWS = st.dictionaries(st.sampled_from(FIELDS) | TEXT, VALUES, max_size=6)
GOOD_ROW = st.builds(
    lambda a, b: {"input": f"Tom has {a} and gets {b}. How many?", "label": f"( {a} + {b} )"},
    st.integers(0, 99),
    st.integers(0, 99),
)


def _line(row: object) -> bytes:
    return json.dumps(row, default=str).encode()


LINES = st.lists(
    st.one_of(
        GOOD_ROW.map(_line),
        ROWS.map(_line),
        st.binary(max_size=60),  # not JSON, not UTF-8
        st.just(b"\xff\xfe\x00 not utf-8"),
        st.just(b'{"input": "cut off'),
        st.just(b"[1, 2, 3]"),
        st.just(b""),
    ),
    min_size=1,
    max_size=25,
)
OUTPUTS = st.lists(
    st.one_of(
        st.builds(lambda a: f"So the answer is ( {a} + 1 ).", st.integers(0, 9)),
        TEXT,
        st.integers(),
        st.none(),
    ),
    max_size=25,
)

TALLY: Counter[str] = Counter()
"""Outcomes of this module's cases, by kind, for the chaos record."""


@pytest.fixture(scope="module", autouse=True)
def _record_the_tally():
    yield
    injected = {
        "import-paper": "random data lines (malformed, non-UTF-8, wrong types, huge) and outputs",
        "generate inputs": "random jsonl, csv and parquet rows, junk lines, duplicate ids",
        "config loader": "random YAML trees, non-UTF-8 bytes, malformed overrides",
    }
    for suite, what in injected.items():
        cases = TALLY[f"{suite} cases"]
        record(
            scenario=f"hostile input: {suite}",
            injected=f"{what} (hypothesis, {cases} cases)",
            # Rows for the readers (in: every row read, out: records written); cases for
            # the config loader (out: configs accepted).
            sent=TALLY[f"{suite} rows"] or cases,
            answered=TALLY[f"{suite} accepted"],
            errors=TALLY[f"{suite} tracebacks"],
            lost=TALLY[f"{suite} lost"],
            detail=(
                f"{TALLY[f'{suite} quarantined']} quarantine rows with a reason; "
                f"{TALLY[f'{suite} refused']} cases refused with a dsbs error"
            ),
        )


def _no_partial(out: Path) -> None:
    assert not out.exists(), f"{out} written although the import failed"


@given(lines=LINES, outputs=OUTPUTS)
def test_import_paper_quarantines_or_refuses_and_never_writes_half(lines, outputs):
    TALLY["import-paper cases"] += 1
    work = Path(tempfile.mkdtemp())
    try:
        (work / "svamp" / "llm").mkdir(parents=True)
        (work / "svamp" / "svamp_test.json").write_bytes(b"\n".join(lines) + b"\n")
        (work / "svamp" / "llm" / "test_CoT_0.json").write_text(json.dumps(outputs))
        out = work / "out.jsonl"
        try:
            summary = import_paper("svamp", str(work), "test", str(out), max_bad_fraction=1.0)
        except DsbsError as err:
            TALLY["import-paper refused"] += 1
            assert str(err)
            _no_partial(out)
            return
        except Exception:
            TALLY["import-paper tracebacks"] += 1
            raise
        records = read_records(str(out)) if summary.rows else []
        quarantine = [
            json.loads(line)
            for line in (work / "out.quarantine.jsonl").read_text().splitlines()
            if line
        ]
        assert len(records) == summary.rows
        assert all(q["reason"] and q["detail"] is not None for q in quarantine)
        # Every non-blank line of the data file is a record or a quarantine row; the one
        # reason not about a data row is an output left over after the last row.
        data_lines = sum(bool(x.strip()) for x in b"\n".join(lines).split(b"\n"))
        of_data = sum(q["reason"] != "teacher output without a row" for q in quarantine)
        lost = data_lines - summary.rows - of_data
        TALLY["import-paper lost"] += abs(lost)
        assert lost == 0, (data_lines, summary.rows, quarantine)
        TALLY["import-paper rows"] += data_lines
        TALLY["import-paper accepted"] += summary.rows
        TALLY["import-paper quarantined"] += len(quarantine)
    finally:
        shutil.rmtree(work)


def _write_source(work: Path, fmt: str, rows: list[object], lines: list[bytes]) -> Path:
    if fmt == "jsonl":
        path = work / "in.jsonl"
        path.write_bytes(b"\n".join(lines + [_line(r) for r in rows]) + b"\n")
    elif fmt == "csv":
        path = work / "in.csv"
        text = "input,label\n" + "".join(
            f"{json.dumps(r, default=str)!s},{len(str(r))}\n" for r in rows
        )
        path.write_bytes(text.encode() + b"\n".join(lines))
    else:
        path = work / "in.parquet"
        values = [json.dumps(r, default=str)[:1000] for r in rows] or [""]
        numbers = list(range(len(values)))  # a label column of the wrong type
        pq.write_table(pa.table({"input": values, "label": numbers}), path)
    return path


@given(
    fmt=st.sampled_from(["jsonl", "csv", "parquet"]),
    rows=st.lists(st.one_of(GOOD_ROW, ROWS), max_size=20),
    lines=st.lists(st.one_of(st.binary(max_size=40), st.just(b"{oops")), max_size=5),
    duplicate=st.booleans(),
)
# Found by this test: a CSV field over Python's 128 KiB limit was a traceback.
@example(fmt="csv", rows=[{"input": "x" * 131_060}], lines=[], duplicate=False)
def test_the_generate_input_reader_keeps_every_row_or_its_reason(fmt, rows, lines, duplicate):
    TALLY["generate inputs cases"] += 1
    if duplicate and rows:
        rows = [*rows, {**(rows[0] if isinstance(rows[0], dict) else {}), "id": "same"}]
        rows = [*rows, {**rows[-1]}]
    work = Path(tempfile.mkdtemp())
    try:
        source = _write_source(work, fmt, rows, lines)
        try:
            inputs = prepare_inputs(get_task("svamp"), str(source), str(work / "out"), 4)
        except DsbsError as err:
            TALLY["generate inputs refused"] += 1
            assert str(err)
            return
        except Exception:
            TALLY["generate inputs tracebacks"] += 1
            raise
        kept = sum(len(read_records(f)) for f in inputs.files)
        quarantine = work / "out" / "quarantine" / "inputs.jsonl"
        bad = [json.loads(x) for x in quarantine.read_text().splitlines() if x]
        assert kept == inputs.rows and len(bad) == inputs.bad
        assert all(q["id"] and q["reason"] for q in bad)
        ids = [r.id for f in inputs.files for r in read_records(f)]
        assert len(ids) == len(set(ids))  # duplicates get a suffix, never collide
        if fmt == "jsonl":  # one line per row: every non-blank line is kept or quarantined
            written = source.read_bytes().split(b"\n")
            lost = sum(bool(x.strip()) for x in written) - inputs.rows - inputs.bad
            TALLY["generate inputs lost"] += abs(lost)
            assert lost == 0
        TALLY["generate inputs rows"] += inputs.rows + inputs.bad
        TALLY["generate inputs accepted"] += inputs.rows
        TALLY["generate inputs quarantined"] += inputs.bad
    finally:
        shutil.rmtree(work)


KEYS = st.sampled_from(
    ["train.lr", "train.zero_stage", "teacher.model", "serve.port", "data.task", "nope", ""]
)
OVERRIDE_VALUES = st.one_of(TEXT, st.integers().map(str), st.just("[1, 2"), st.just("{a: }"))


@given(
    document=st.one_of(
        st.dictionaries(st.sampled_from(["train", "teacher", "data", "x"]) | TEXT, VALUES),
        st.recursive(VALUES, lambda inner: st.dictionaries(TEXT, inner, max_size=3), max_leaves=8),
    ),
    raw=st.one_of(st.none(), st.binary(max_size=80)),
    overrides=st.lists(st.tuples(KEYS, OVERRIDE_VALUES), max_size=3),
)
# Found by this test: a config file that is not UTF-8, and an override that is not YAML,
# were tracebacks.
@example(document={}, raw=b"\x80", overrides=[])
@example(document={}, raw=None, overrides=[("train.lr", "\x1b")])
def test_the_config_loader_accepts_or_names_the_key(document, raw, overrides):
    TALLY["config loader cases"] += 1
    work = Path(tempfile.mkdtemp())
    try:
        path = work / "c.yaml"
        if raw is None:
            path.write_text(yaml.safe_dump(document, default_flow_style=False))
        else:
            path.write_bytes(raw)
        try:
            load_config(path, [f"{k}={v}" for k, v in overrides])
            TALLY["config loader accepted"] += 1
        except ConfigError as err:
            TALLY["config loader refused"] += 1
            assert str(err)
        except Exception:
            TALLY["config loader tracebacks"] += 1
            raise
    finally:
        shutil.rmtree(work)
