import contextlib
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsbs.tasks.safe_math import (
    MAX_CHARS,
    MAX_DEPTH,
    SafeMathError,
    canonical,
    evaluate,
    values_equal,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("( 84.0 / 2.0 )", Fraction(42)),
        ("(10 - (3 + 6))", Fraction(1)),
        ("2 + 3 * 4", Fraction(14)),
        ("-(5 - 7)", Fraction(2)),
        ("8 ÷ 2 × 3", Fraction(12)),
        (".5 + 1.", Fraction(3, 2)),
    ],
)
def test_evaluates_arithmetic_exactly(text, value):
    assert evaluate(text) == value


def test_canonical_is_svamp_style():
    assert canonical("(10 - (3 + 6))") == "( 10.0 - ( 3.0 + 6.0 ) )"
    assert canonical("( 84.0 / 2.0 )") == "( 84.0 / 2.0 )"
    assert canonical("450") == "450.0"
    assert canonical("(5 - (-3))") == "( 5.0 - -3.0 )"
    assert evaluate(canonical("-(2 * 3) + 1")) == -5


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "2 ** 10",
        "abs(-3)",
        "x + 1",
        "1 + ",
        "(1 + 2",
        "1 2",
        "",
        "1e5",
        "[1, 2]",
        "lambda: 1",
        "1 / 0",
        "9" * 50,
        "1+" * (MAX_CHARS // 2) + "1",
        "(" * (MAX_DEPTH + 2) + "1" + ")" * (MAX_DEPTH + 2),
        "-" * (MAX_DEPTH + 2) + "1",
    ],
)
def test_refuses_anything_but_bounded_arithmetic(text):
    with pytest.raises(SafeMathError):
        evaluate(text)


def test_values_equal_by_value_with_tolerance():
    assert values_equal("(10 * 45)", "( 10.0 * 45.0 )")
    assert values_equal("3.3333333", "( 10.0 / 3.0 )")
    assert not values_equal("3.33", "( 10.0 / 3.0 )")
    assert not values_equal("(some - 3)", "3")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_never_raises_anything_else_on_any_text(text):
    with contextlib.suppress(SafeMathError):
        evaluate(text)


_numbers = st.integers(min_value=0, max_value=10_000).map(str)


@st.composite
def _expressions(draw, depth=3):
    if depth == 0 or draw(st.booleans()):
        return draw(_numbers)
    op = draw(st.sampled_from(["+", "-", "*", "/"]))
    return f"({draw(_expressions(depth - 1))} {op} {draw(_expressions(depth - 1))})"


@settings(max_examples=300, deadline=None)
@given(_expressions())
def test_canonical_keeps_the_value(expression):
    try:
        value = evaluate(expression)
    except SafeMathError:  # division by zero
        return
    assert evaluate(canonical(expression)) == value
