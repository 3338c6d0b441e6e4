import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsbs.tasks import TASKS, accuracy, build_prompt, get_task
from dsbs.tasks.base import STOP_SEQUENCES
from dsbs.tasks.cqa import choices_of, format_choices


def test_registry_has_the_design_tasks():
    assert set(TASKS) == {"svamp", "cqa", "anli1", "esnli", "free"}
    with pytest.raises(KeyError, match="known tasks"):
        get_task("nope")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_exemplars_parse_back_to_their_labels(name):
    task = TASKS[name]
    assert len(task.exemplars) >= 4
    for ex in task.exemplars:
        text = f" {ex.rationale} So the answer is {ex.answer}."
        parsed = task.parse(text, ex.input)
        assert parsed.rationale == ex.rationale
        assert parsed.label is not None
        # A choice answer reads "(b) cupboard"; its label is the choice text.
        expected = ex.answer.split(") ", 1)[1] if name == "cqa" else ex.answer
        assert task.is_correct(parsed.label, task.normalize(expected))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_prompt_ends_with_the_open_question_and_stops_fit(name):
    task = TASKS[name]
    prompt = build_prompt(task, "INPUT TEXT")
    assert prompt.endswith("Q: INPUT TEXT\nA:")
    assert prompt.count("So the answer is") == len(task.exemplars)
    # The stop sequence is what separates exemplars, so a run-on stops at the next one.
    assert all(STOP_SEQUENCES[0] in f"\n{block}" for block in prompt.split("\n\n"))


# --- arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        (
            "He has 10 * 45 = 450. The answer is (10 * 45).\n\nQ: There are 15 trees",
            "( 10.0 * 45.0 )",
        ),
        ("So the answer is (84 / 2).", "( 84.0 / 2.0 )"),
        ("Total 450 seeds.\nAnswer: 450", "450.0"),
        ("The answer is $1,200 dollars.", "1200.0"),
        ("The answer is: (10 - (3 + 6)).\nA: something else", "( 10.0 - ( 3.0 + 6.0 ) )"),
        ("So 23 + x = 27. The answer is (23 + x).", "(23 + x)"),  # kept verbatim, scores wrong
        ("He had some, then more. So he had some more", None),
        ("", None),
    ],
)
def test_svamp_parser(text, label):
    assert get_task("svamp").parse(text, "").label == label


def test_svamp_metric_is_by_value():
    task = get_task("svamp")
    assert task.is_correct("( 10.0 * 45.0 )", "( 45.0 * 10.0 )")
    assert task.is_correct("450.0", "( 10.0 * 45.0 )")
    assert not task.is_correct("(23 + x)", "4.0")
    assert not task.is_correct(None, "4.0")
    assert task.gold_label(
        {"Body": "Tom has 3.", "Question": "How many?", "Equation": "( 3.0 + 0.0 )"}
    )


# --- multiple choice --------------------------------------------------------------------

CQA_ROW = {
    "id": "q1",
    "question": "A beaver's supplies come from where?",
    "choices": ["british columbia", "body of water", "wooded area", "pay debts", "zoo"],
    "answer": "wooded area",
}


def test_cqa_input_shows_lettered_choices_and_round_trips():
    task = get_task("cqa")
    text = task.build_input(CQA_ROW)
    assert "(c) wooded area" in text
    assert choices_of(text) == CQA_ROW["choices"]
    assert task.gold_label(CQA_ROW) == "wooded area"
    hf_row = {
        "question": "Q?",
        "choices": {"label": ["A", "B"], "text": ["x", "y"]},
        "answerKey": "B",
    }
    assert task.gold_label(hf_row) == "y"


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Beavers need wood. So the answer is (c) wooded area.\n\nQ: What is", "wooded area"),
        ("Beavers need wood. So the answer is (c).", "wooded area"),
        ("Beavers need wood. The answer is C.", "wooded area"),
        ("Beavers need wood. So the answer is wooded area.", "wooded area"),
        ("The answer is something with wood. So the answer is (c) wooded area.", "wooded area"),
        ("Answer: (b) body of water", "body of water"),
        ("Beavers like the forest. So the answer is the forest.", "the forest"),
        ("Beavers chew trees all day long", None),
    ],
)
def test_cqa_parser(text, label):
    task = get_task("cqa")
    assert task.parse(text, task.build_input(CQA_ROW)).label == label


def test_cqa_letter_out_of_range_falls_back_to_text():
    task = get_task("cqa")
    text = format_choices("Q?", ["yes", "no"])
    assert task.parse("So the answer is (e) maybe.", text).label == "(e) maybe"


# --- NLI: realistic teacher texts in both styles, with run-ons --------------------------

NLI_TEXTS = [
    (
        "The premise says Marta won the tournament in Oslo, and winning requires playing. "
        "The hypothesis says she never played chess. So the answer is contradiction.\n\n"
        "Premise: A dog runs on the beach.\nHypothesis: An animal is outside.\nA: A dog is",
        "contradiction",
    ),
    (
        "A bakery that sells bread every morning sells bread.\nAnswer: entailment\n"
        "Q: Premise: The river froze.",
        "entailment",
    ),
    (
        "Nothing in the premise says why the cyclist rides. So the answer is neutral.",
        "neutral",
    ),
    ("The premise does not say. The answer is: it is not possible to tell.", "neutral"),
    ("Tuesday is a weekday. So the answer is No.", "contradiction"),
    ("It follows directly. So the answer is yes.\nPremise: next", "entailment"),
    ("The hypothesis is implied. Answer: Entailment.", "entailment"),
    ("I am not sure what to make of this premise", None),
]


@pytest.mark.parametrize("name", ["anli1", "esnli"])
@pytest.mark.parametrize(("text", "label"), NLI_TEXTS)
def test_nli_parsers(name, text, label):
    task = get_task(name)
    parsed = task.parse(text, "Premise: p\nHypothesis: h")
    assert parsed.label == label
    assert "Premise:" not in parsed.rationale and "Q:" not in parsed.rationale


def test_nli_gold_labels_are_words():
    task = get_task("anli1")
    base = {"premise": "p", "hypothesis": "h"}
    assert [task.gold_label({**base, "label": v}) for v in (0, 1, 2)] == [
        "entailment",
        "neutral",
        "contradiction",
    ]
    assert task.gold_label({**base, "label": "2"}) == "contradiction"
    assert task.gold_label({**base, "label": "Neutral"}) == "neutral"
    assert task.gold_label({**base, "label": -1}) is None
    with pytest.raises(ValueError, match="label"):
        task.gold_label({**base, "label": 7})
    assert task.build_input(base) == "Premise: p\nHypothesis: h"


# --- free labels and shared behaviour ---------------------------------------------------


def test_free_task():
    task = get_task("free")
    assert task.parse("Spiders have eight. The answer is Eight.", "q").label == "eight"
    assert task.gold_label({"question": "q", "answer": "Paris "}) == "paris"
    assert accuracy(task, [("paris", "Paris"), ("lyon", "paris")]) == 0.5
    assert accuracy(task, []) == 0.0


@pytest.mark.parametrize("name", sorted(TASKS))
def test_build_input_reports_missing_and_empty_fields(name):
    task = TASKS[name]
    with pytest.raises(ValueError, match="missing field"):
        task.build_input({})
    field = {
        "svamp": "input",
        "cqa": "question",
        "anli1": "premise",
        "esnli": "premise",
        "free": "input",
    }[name]
    with pytest.raises(ValueError, match=f"empty field: {field}"):
        task.build_input({field: "   ", "choices": ["a", "b"], "hypothesis": "h"})


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=400), input_text=st.text(max_size=200))
def test_parsers_never_raise_on_arbitrary_text(text, input_text):
    for task in TASKS.values():
        parsed = task.parse(text, input_text)
        assert isinstance(parsed.rationale, str)
        assert parsed.label is None or isinstance(parsed.label, str)


_answerish = st.lists(
    st.sampled_from(
        [
            "So the answer is",
            "The answer is",
            "Answer:",
            "(a)",
            "(z)",
            "\nQ:",
            "\nPremise:",
            "(",
            ")",
            "1",
            "+",
            "/",
            "0",
            ".",
            " ",
            "entailment",
            "no",
            "yes",
            "\n",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_answerish)
def test_parsers_never_raise_on_answer_shaped_text(text):
    cqa_input = format_choices("Q?", ["x", "y", "z"])
    for task in TASKS.values():
        task.parse(text, cqa_input)
