import pytest

from dsbs.data.synth import TEMPLATES, synth, synth_arithmetic
from dsbs.records import read_records
from dsbs.tasks import get_task
from dsbs.tasks.safe_math import BinOp, evaluate, parse


def _operations(node):
    if isinstance(node, BinOp):
        return 1 + _operations(node.left) + _operations(node.right)
    return 0


def test_deterministic_per_seed():
    assert synth_arithmetic(50, seed=3) == synth_arithmetic(50, seed=3)
    assert synth_arithmetic(50, seed=3) != synth_arithmetic(50, seed=4)


def test_labels_are_svamp_equations_with_the_right_value():
    task = get_task("svamp")
    records = synth_arithmetic(600, seed=0)
    assert {r.meta["template"] for r in records} == set(TEMPLATES)
    assert len(TEMPLATES) >= 12
    operations = set()
    for record in records:
        assert record.label == task.normalize(record.label)  # canonical svamp style
        assert record.label.startswith("( ") and ".0 " in record.label
        assert evaluate(record.label) == record.meta["answer"] > 0
        operations.add(_operations(parse(record.label)))
        assert record.input.endswith("?") and "\n" in record.input
    assert operations == {1, 2, 3}
    assert len({r.id for r in records}) == len(records)


def test_synth_writes_records(tmp_path):
    out = tmp_path / "synth.parquet"
    line = synth("arithmetic", 40, 1, str(out))
    assert "40 rows" in line
    assert len(read_records(str(out))) == 40
    with pytest.raises(ValueError, match="unknown synthetic task"):
        synth("poetry", 5, 0, str(out))
    with pytest.raises(ValueError, match="positive"):
        synth("arithmetic", 0, 0, str(out))


def test_oracle_rationales_work_the_equation_step_by_step():
    from dsbs.tasks.safe_math import worked_steps

    assert worked_steps("( ( 9.0 * 8.0 ) + 30.0 )") == ["9 * 8 = 72", "72 + 30 = 102"]
    assert worked_steps("( 7 / 2 )") == ["7 / 2 = 3.5"]
    records = synth_arithmetic(50, seed=0, rationales=True)
    for record in records:
        assert record.teacher_label == record.label
        last = record.rationale.rstrip(".").rsplit("= ", 1)[1]
        assert int(last) == record.meta["answer"]
    assert all(r.rationale is None for r in synth_arithmetic(5, seed=0))


def test_max_ops_keeps_the_problems_of_at_most_that_many_operations():
    one_step = synth_arithmetic(200, seed=0, max_ops=1)
    assert {_operations(parse(r.label)) for r in one_step} == {1}
    assert {r.meta["template"] for r in one_step} == {t for t in TEMPLATES if t.startswith("one_")}
    assert {_operations(parse(r.label)) for r in synth_arithmetic(300, 0, max_ops=2)} == {1, 2}
    with pytest.raises(ValueError, match="max_ops"):
        synth_arithmetic(5, seed=0, max_ops=0)


def test_synth_again_leaves_the_same_rows_untouched_so_a_rerun_skips_done_stages(tmp_path):
    from dsbs.config import load_config
    from dsbs.generate.stage import config_hash

    out = tmp_path / "synth.jsonl"
    synth("arithmetic", 30, 0, str(out))
    cfg = load_config(None, [f"data.source={out}"])
    before, written = config_hash(cfg.data, cfg.teacher, cfg.generate), out.stat().st_mtime_ns
    line = synth("arithmetic", 30, 0, str(out))  # `make demo` twice
    assert line.endswith("(already there, unchanged)")
    assert out.stat().st_mtime_ns == written
    assert config_hash(cfg.data, cfg.teacher, cfg.generate) == before
    assert not synth("arithmetic", 31, 0, str(out)).endswith("unchanged")
    assert len(read_records(str(out))) == 31
