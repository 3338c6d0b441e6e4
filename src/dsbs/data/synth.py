"""The project's own labeled arithmetic word problems, for the embedded default.

Users get no datasets bundled, so `dsbs data synth` writes svamp-style problems: many
templates, one to three operations, whole-number answers, gold labels as svamp equations
(`( ( 6.0 * 12.0 ) + 5.0 )`). The same seed always gives the same rows. `max_ops` keeps the
templates of at most that many operations: the demo uses one-step problems, the size of task a
student of a few million parameters learns from a few hundred rows on 2 CPU cores.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from dsbs.errors import UsageError
from dsbs.records import IdAssigner, Record, write_records
from dsbs.tasks import get_task, safe_math

log = logging.getLogger(__name__)

NAMES = (
    "Ava",
    "Ben",
    "Chloe",
    "Dev",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonah",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Olu",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Tariq",
)
# (plural item, container it comes in)
ITEMS = (
    ("apples", "baskets"),
    ("pencils", "boxes"),
    ("stickers", "sheets"),
    ("marbles", "bags"),
    ("cookies", "trays"),
    ("books", "shelves"),
    ("stamps", "albums"),
    ("eggs", "cartons"),
    ("cards", "packs"),
    ("flowers", "pots"),
    ("shells", "jars"),
    ("toy cars", "crates"),
    ("buttons", "tins"),
    ("oranges", "crates"),
    ("balloons", "bundles"),
    ("crayons", "boxes"),
)

Problem = tuple[str, str]  # (problem text, equation)


@dataclass(frozen=True)
class _Ctx:
    name: str
    friend: str
    item: str
    container: str


def _one_add(r: random.Random, c: _Ctx) -> Problem:
    a, b = r.randint(3, 90), r.randint(2, 60)
    return (
        f"{c.name} has {a} {c.item}. {c.name} buys {b} more {c.item}.\n"
        f"How many {c.item} does {c.name} have now?",
        f"({a} + {b})",
    )


def _one_sub(r: random.Random, c: _Ctx) -> Problem:
    b = r.randint(2, 50)
    a = b + r.randint(1, 60)
    return (
        f"{c.name} had {a} {c.item}. {c.name} gave {b} {c.item} to {c.friend}.\n"
        f"How many {c.item} does {c.name} have left?",
        f"({a} - {b})",
    )


def _one_mul(r: random.Random, c: _Ctx) -> Problem:
    a, b = r.randint(2, 15), r.randint(2, 15)
    return (
        f"There are {a} {c.container} with {b} {c.item} in each.\n"
        f"How many {c.item} are there in all?",
        f"({a} * {b})",
    )


def _one_div(r: random.Random, c: _Ctx) -> Problem:
    b, k = r.randint(2, 12), r.randint(2, 15)
    return (
        f"{c.name} shares {b * k} {c.item} equally among {b} friends.\n"
        f"How many {c.item} does each friend get?",
        f"({b * k} / {b})",
    )


def _one_compare(r: random.Random, c: _Ctx) -> Problem:
    b = r.randint(2, 60)
    a = b + r.randint(1, 40)
    return (
        f"{c.name} has {a} {c.item} and {c.friend} has {b} {c.item}.\n"
        f"How many more {c.item} does {c.name} have than {c.friend}?",
        f"({a} - {b})",
    )


def _one_unknown_start(r: random.Random, c: _Ctx) -> Problem:
    a, b = r.randint(2, 60), r.randint(2, 40)
    return (
        f"{c.name} had some {c.item}. After getting {b} more, {c.name} has {a + b} {c.item}.\n"
        f"How many {c.item} did {c.name} have at first?",
        f"({a + b} - {b})",
    )


def _one_groups(r: random.Random, c: _Ctx) -> Problem:
    b, k = r.randint(2, 12), r.randint(2, 12)
    return (
        f"{c.name} packs {b * k} {c.item} into {c.container} of {b}.\n"
        f"How many {c.container} does {c.name} fill?",
        f"({b * k} / {b})",
    )


def _two_buy_give(r: random.Random, c: _Ctx) -> Problem:
    a, b = r.randint(5, 60), r.randint(2, 40)
    d = r.randint(1, a + b - 1)
    return (
        f"{c.name} had {a} {c.item}. {c.name} bought {b} more and then gave {d} to {c.friend}.\n"
        f"How many {c.item} does {c.name} have now?",
        f"(({a} + {b}) - {d})",
    )


def _two_containers_plus(r: random.Random, c: _Ctx) -> Problem:
    a, b, d = r.randint(2, 9), r.randint(2, 12), r.randint(1, 30)
    return (
        f"{c.name} buys {a} {c.container} of {c.item} with {b} in each, and already had {d}.\n"
        f"How many {c.item} does {c.name} have in all?",
        f"(({a} * {b}) + {d})",
    )


def _two_earn_spend(r: random.Random, c: _Ctx) -> Problem:
    a, b = r.randint(5, 30), r.randint(2, 9)
    d = r.randint(1, a * b - 1)
    return (
        f"{c.name} earns {a} dollars a day for {b} days and then spends {d} dollars.\n"
        f"How many dollars does {c.name} have left?",
        f"(({a} * {b}) - {d})",
    )


def _two_share_then_more(r: random.Random, c: _Ctx) -> Problem:
    b, k, d = r.randint(2, 9), r.randint(2, 12), r.randint(1, 10)
    return (
        f"{b * k} {c.item} are shared equally among {b} children, and then {c.friend} gives "
        f"each child {d} more.\nHow many {c.item} does each child have?",
        f"(({b * k} / {b}) + {d})",
    )


def _two_lose_find(r: random.Random, c: _Ctx) -> Problem:
    b = r.randint(2, 30)
    a, d = b + r.randint(1, 50), r.randint(1, 30)
    return (
        f"{c.name} had {a} {c.item}, lost {b} of them, and then found {d}.\n"
        f"How many {c.item} does {c.name} have now?",
        f"(({a} - {b}) + {d})",
    )


def _two_sold_twice(r: random.Random, c: _Ctx) -> Problem:
    b, d = r.randint(2, 40), r.randint(2, 40)
    a = b + d + r.randint(1, 50)
    return (
        f"A shop had {a} {c.item}. It sold {b} in the morning and {d} in the afternoon.\n"
        f"How many {c.item} does the shop have left?",
        f"({a} - ({b} + {d}))",
    )


def _two_collect_split(r: random.Random, c: _Ctx) -> Problem:
    d, k = r.randint(2, 9), r.randint(2, 12)
    a = r.randint(1, d * k - 1)
    return (
        f"{c.name} collects {a} {c.item} on Monday and {d * k - a} on Tuesday, then puts them "
        f"equally into {d} {c.container}.\nHow many {c.item} go in each of the {c.container}?",
        f"(({a} + {d * k - a}) / {d})",
    )


def _three_packs(r: random.Random, c: _Ctx) -> Problem:
    a, b, d = r.randint(2, 30), r.randint(2, 6), r.randint(2, 12)
    e = r.randint(1, a + b * d - 1)
    return (
        f"{c.name} had {a} {c.item}. {c.name} bought {b} {c.container} of {d} {c.item} "
        f"and gave {e} away.\nHow many {c.item} does {c.name} have now?",
        f"(({a} + ({b} * {d})) - {e})",
    )


def _three_friends(r: random.Random, c: _Ctx) -> Problem:
    n, a, b = r.randint(2, 6), r.randint(2, 9), r.randint(2, 20)
    d = r.randint(1, n * a + b - 1)
    return (
        f"{n} friends each bring {a} {c.item}, and {c.friend} brings {b} more. "
        f"They use {d} of them.\nHow many {c.item} are left?",
        f"((({n} * {a}) + {b}) - {d})",
    )


def _three_share_all(r: random.Random, c: _Ctx) -> Problem:
    p, k = r.randint(2, 8), r.randint(2, 12)
    a, b = r.randint(2, 5), r.randint(2, 6)
    d = p * k - a * b
    if d <= 0:  # keep the loose count positive by widening the total
        k += a * b
        d = p * k - a * b
    return (
        f"{c.name} buys {a} {c.container} of {b} {c.item} and {d} loose {c.item}, then shares "
        f"them equally among {p} people.\nHow many {c.item} does each person get?",
        f"((({a} * {b}) + {d}) / {p})",
    )


TEMPLATES: dict[str, Callable[[random.Random, _Ctx], Problem]] = {
    fn.__name__.lstrip("_"): fn
    for fn in (
        _one_add,
        _one_sub,
        _one_mul,
        _one_div,
        _one_compare,
        _one_unknown_start,
        _one_groups,
        _two_buy_give,
        _two_containers_plus,
        _two_earn_spend,
        _two_share_then_more,
        _two_lose_find,
        _two_sold_twice,
        _two_collect_split,
        _three_packs,
        _three_friends,
        _three_share_all,
    )
}


OPS_PREFIX = {"one": 1, "two": 2, "three": 3}
"""A template's name starts with its number of operations."""

MAX_OPS = 3


def template_ops(template: str) -> int:
    """How many operations a template's equations have (`one_add` -> 1)."""
    return OPS_PREFIX[template.split("_", 1)[0]]


def worked_rationale(equation: str) -> str:
    """A worked solution of an equation, e.g. `9 * 8 = 72. 72 + 30 = 102.`."""
    return " ".join(f"{step}." for step in safe_math.worked_steps(equation))


def synth_arithmetic(
    n: int, seed: int, rationales: bool = False, max_ops: int = MAX_OPS
) -> list[Record]:
    """`n` labeled arithmetic problems of at most `max_ops` operations, the same for the same seed.

    Every answer is checked to be a positive whole number by the safe evaluator. With
    `rationales`, each row also gets a worked solution as its rationale and the gold label as
    its teacher label: an oracle teacher, for training without running one.
    """
    task = get_task("svamp")
    rng = random.Random(seed)  # noqa: S311 - reproducible data, not security
    ids, records = IdAssigner(), []
    names = sorted(t for t in TEMPLATES if template_ops(t) <= max_ops)
    if not names:
        raise UsageError(f"max_ops must be between 1 and {MAX_OPS}")
    for _ in range(n):
        template = rng.choice(names)
        name, friend = rng.sample(NAMES, 2)
        item, container = rng.choice(ITEMS)
        text, equation = TEMPLATES[template](rng, _Ctx(name, friend, item, container))
        value = safe_math.evaluate(equation)
        if value.denominator != 1 or value <= 0:
            raise AssertionError(f"template {template} made {equation} = {value}")
        label = task.normalize(equation)
        records.append(
            Record(
                id=ids(task.name, text),
                task=task.name,
                input=text,
                label=label,
                teacher_label=label if rationales else None,
                rationale=worked_rationale(equation) if rationales else None,
                meta={"template": template, "answer": int(value), "seed": seed},
            )
        )
    return records


SYNTH_TASKS = {"arithmetic": synth_arithmetic}


def synth(
    task: str, n: int, seed: int, out: str, rationales: bool = False, max_ops: int = MAX_OPS
) -> str:
    """Writes `n` synthetic rows of `task` to `out` (jsonl, parquet or csv; local or s3://).

    With `rationales`, rows carry an oracle teacher's worked solution (see synth_arithmetic);
    `max_ops` bounds the operations per problem. A file that already holds these rows is not
    rewritten, so a rerun (`make demo` twice) skips the stages done on it.

    Returns:
        The one-line summary.

    Raises:
        UsageError: for an unknown task, a non-positive `n` or a `max_ops` out of range.
    """
    if task not in SYNTH_TASKS:
        raise UsageError(
            f"unknown synthetic task '{task}'; expected one of {', '.join(SYNTH_TASKS)}"
        )
    if n <= 0:
        raise UsageError("n must be positive")
    records = SYNTH_TASKS[task](n, seed, rationales, max_ops)
    written = write_records(out, records, keep_same=True)
    templates = len({r.meta["template"] for r in records})
    oracle = " with oracle rationales" if rationales else ""
    return (
        f"synth {task}: {len(records)} rows{oracle} from {templates} templates of at most "
        f"{max_ops} operations (seed {seed}) "
        f"-> {out}{'' if written else ' (already there, unchanged)'}"
    )
