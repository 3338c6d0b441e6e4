"""The pure parts of generation: voting, filters, requests, the config hash, inputs, retries."""

import asyncio
import json

import pytest

from dsbs.config import load_config
from dsbs.generate.caller import teacher_request
from dsbs.generate.inputs import prepare_inputs
from dsbs.generate.outcomes import GOLD_MISMATCH, UNPARSEABLE, outcome_of, vote
from dsbs.generate.stage import config_hash
from dsbs.records import read_records
from dsbs.tasks import get_task
from dsbs.teachers.base import RetryableError, TeacherError, with_retries

SVAMP = get_task("svamp")
ROW = {
    "id": "r1",
    "task": "svamp",
    "input": "Tom has 2 and gets 3.\nHow many?",
    "label": "( 2.0 + 3.0 )",
    "meta": "{}",
}


def test_vote_groups_labels_by_the_task_metric():
    texts = [
        "2 + 3 = 5. The answer is (2 + 3).",
        "So the answer is (3 + 2).",
        "The answer is (2 * 3).",
        "no answer here",
    ]
    chosen, counts = vote(SVAMP, texts, ROW["input"])
    assert chosen.label == "( 2.0 + 3.0 )" and chosen.rationale == "2 + 3 = 5."
    assert counts == {"( 2.0 + 3.0 )": 2, "( 2.0 * 3.0 )": 1}


def test_vote_tie_goes_to_the_first_group_and_nothing_parsed_is_none():
    chosen, _ = vote(SVAMP, ["The answer is (1 + 1).", "The answer is (5 + 5)."], "")
    assert chosen.label == "( 1.0 + 1.0 )"
    assert vote(SVAMP, ["nothing", ""], "") == (None, {})


def test_outcome_of_each_input():
    good = outcome_of(SVAMP, ROW, ["Add them. The answer is (2 + 3)."], require_gold_match=True)
    assert good.record.teacher_label == "( 2.0 + 3.0 )" and good.record.rationale == "Add them."
    assert good.record.teacher_raw == "Add them. The answer is (2 + 3)." and good.correct is True
    wrong = outcome_of(SVAMP, ROW, ["The answer is (2 * 3)."], require_gold_match=True)
    assert wrong.record is None and wrong.reason == GOLD_MISMATCH and wrong.parsed
    kept = outcome_of(SVAMP, ROW, ["The answer is (2 * 3)."], require_gold_match=False)
    assert kept.record is not None and kept.correct is False
    lost = outcome_of(SVAMP, ROW, ["I don't know"], require_gold_match=False)
    assert lost.record is None and lost.reason == UNPARSEABLE
    unlabeled = outcome_of(
        SVAMP, {**ROW, "label": None}, ["The answer is 5."], require_gold_match=True
    )
    assert unlabeled.record is not None and unlabeled.correct is None
    voted = outcome_of(
        SVAMP, ROW, ["The answer is 5.", "The answer is (2 + 3)."], require_gold_match=False
    )
    assert voted.record.meta["votes"] == {"5.0": 2}


def test_teacher_request_styles_and_seeds():
    cfg = load_config(None, ["teacher.temperature=0.7", "generate.num_samples=3"])
    chat = teacher_request(cfg.teacher, "svamp", "id-1", "Q?", 3)
    assert chat.prompt is None and chat.messages[-1] == ("user", "Q: Q?")
    assert chat.messages[0][0] == "system" and len(chat.messages) == 2 + 2 * len(SVAMP.exemplars)
    assert (
        chat.sampling.n == 3
        and chat.sampling.seed
        == teacher_request(cfg.teacher, "svamp", "id-1", "Q?", 3).sampling.seed
    )
    assert "\nQ:" in chat.sampling.stop
    # Each attempt is its own engine request; the seed (and so the sample) stays the row's.
    retry = teacher_request(cfg.teacher, "svamp", "id-1", "Q?", 3, attempt=2)
    assert (chat.request_id, retry.request_id) == ("id-1#0", "id-1#2")
    assert retry.sampling == chat.sampling and retry.timeout_s == cfg.teacher.request_timeout_s
    completion = teacher_request(
        cfg.teacher.model_copy(update={"prompt_style": "completion"}), "svamp", "id-1", "Q?", 1
    )
    assert completion.prompt.endswith("Q: Q?\nA:") and completion.sampling.seed is None


def test_teacher_requests_hold_the_first_num_exemplars():
    cfg = load_config(None, ["teacher.num_exemplars=2"])
    chat = teacher_request(cfg.teacher, "svamp", "id-1", "Q?", 1)
    assert len(chat.messages) == 2 + 2 * 2
    assert chat.messages[1] == ("user", f"Q: {SVAMP.exemplars[0].input}")
    completion = teacher_request(
        cfg.teacher.model_copy(update={"prompt_style": "completion"}), "svamp", "id-1", "Q?", 1
    )
    assert completion.prompt.count("So the answer is") == 2
    none = cfg.teacher.model_copy(update={"num_exemplars": 0})
    assert len(teacher_request(none, "svamp", "id-1", "Q?", 1).messages) == 2


def test_config_hash_tracks_what_the_teacher_sees_only():
    base = load_config()
    digest = config_hash(base.data, base.teacher, base.generate)
    same = load_config(
        None,
        [
            "teacher.max_replicas=4",
            "generate.max_in_flight=8",
            "generate.shard_rows=10",
            "teacher.block_size=32",
        ],
    )
    assert config_hash(same.data, same.teacher, same.generate) == digest
    for override in (
        "teacher.prompt_style=completion",
        "teacher.model=other",
        "teacher.max_tokens=50",
        "data.source=x.jsonl",
        # Teacher keys the old allow-list of hashed keys missed: a quantized teacher writes
        # other rationales, so it is another output.
        "teacher.quantization=awq",
        "teacher.kv_cache_dtype=fp8",
        "teacher.num_exemplars=2",
    ):
        changed = load_config(None, [override])
        assert config_hash(changed.data, changed.teacher, changed.generate) != digest, override


def test_config_hash_follows_the_inputs_content(tmp_path):
    """Appended or replaced inputs are a new generation, not one reported as done."""
    from dsbs import storage

    source = tmp_path / "inputs.jsonl"
    storage.write_rows(str(source), [{"id": "1", "input": "2 plus 3?"}])
    cfg = load_config(None, [f"data.source={source}"])
    digest = config_hash(cfg.data, cfg.teacher, cfg.generate)
    assert config_hash(cfg.data, cfg.teacher, cfg.generate) == digest
    storage.write_rows(str(source), [{"id": "1", "input": "2 plus 3?"}, {"id": "2", "input": "?"}])
    assert config_hash(cfg.data, cfg.teacher, cfg.generate) != digest


def test_self_consistency_needs_temperature():
    with pytest.raises(ValueError, match="generate.num_samples"):
        load_config(None, ["generate.num_samples=3"])


def test_prepare_inputs_ids_bad_rows_and_records(tmp_path):
    source = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"input": "Tom has 2.\nHow many?", "label": "( 2.0 + 0.0 )"}),
        "{broken",
        json.dumps({"input": "Tom has 2.\nHow many?", "label": "( 2.0 + 0.0 )"}),
        json.dumps({"label": "1"}),
        json.dumps(
            {"id": "keep-me", "task": "svamp", "input": "A record.\nHow many?", "label": "(1+1)"}
        ),
        json.dumps({"id": "x", "task": "cqa", "input": "wrong task"}),
    ]
    source.write_text("\n".join(lines) + "\n")
    inputs = prepare_inputs(SVAMP, str(source), str(tmp_path / "out"), shard_rows=2)
    assert (inputs.rows, inputs.bad, inputs.duplicates) == (3, 3, 1)
    assert len(inputs.files) == 2
    records = read_records(str(tmp_path / "out" / "inputs"))
    assert records[1].id == f"{records[0].id}~2" and records[2].id == "keep-me"
    assert records[2].label == "( 1.0 + 1.0 )"  # gold normalised by the task
    bad = [
        json.loads(x)
        for x in (tmp_path / "out" / "quarantine" / "inputs.jsonl").read_text().splitlines()
    ]
    assert [b["line"] for b in bad] == [2, 4, 6] and {b["reason"] for b in bad} == {"bad row"}
    assert "task 'cqa'" in bad[2]["detail"]
    # A second call reads the manifest instead of redoing the work.
    (tmp_path / "out" / "inputs" / "part-00000.parquet").unlink()
    assert prepare_inputs(SVAMP, str(source), str(tmp_path / "out"), shard_rows=2) == inputs


def test_with_retries_backs_off_then_gives_up(monkeypatch):
    sleeps = []

    async def fake_sleep(seconds):
        sleeps.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    attempts = []

    async def flaky(attempt):
        attempts.append(attempt)
        if len(attempts) < 3:
            raise RetryableError("503")
        return "ok"

    assert asyncio.run(with_retries(flaky, max_retries=5, what="t")) == ("ok", 3)
    assert attempts == [0, 1, 2]  # each attempt knows its number, for its own request id
    assert len(sleeps) == 2 and all(0 <= s <= 2 for s in sleeps)

    async def always(attempt):
        raise RetryableError("429")

    with pytest.raises(TeacherError, match="gave up after 3 attempts"):
        asyncio.run(with_retries(always, max_retries=2, what="t"))


def test_the_offered_load_reaches_the_teachers_largest_size(caplog):
    """One caller with 64 in flight never got Serve past 2 replicas at a target of 32."""
    from dsbs.generate.stage import CALLER_IN_FLIGHT, offered_load

    def load(*overrides: str):
        cfg = load_config(None, list(overrides))
        return offered_load(cfg.teacher, cfg.generate)

    assert load().in_flight == 256  # what 1 replica accepts (max_ongoing_requests)
    big = load("teacher.max_replicas=20", "teacher.max_ongoing_requests=32")
    assert big.in_flight == 640 and big.callers == 3 and big.per_caller <= CALLER_IN_FLIGHT
    assert load("teacher.engine=openai", "teacher.base_url=http://t/v1").in_flight == 64
    assert not caplog.records
    capped = load("teacher.max_replicas=4", "generate.max_in_flight=64")
    assert (capped.in_flight, capped.callers) == (64, 1)
    [warning] = [r.getMessage() for r in caplog.records]
    assert "generate.max_in_flight=64" in warning and "teacher.max_replicas=4" in warning
    assert "about 2 replica(s)" in warning and "to 128" in warning
