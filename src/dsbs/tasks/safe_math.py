"""A safe evaluator for arithmetic labels such as `( 84.0 / 2.0 )` - never Python `eval`.

It accepts numbers, `+ - * /` (and the signs × and ÷ teachers sometimes write), unary minus
and parentheses, within bounds on length and nesting, and computes with exact fractions.
Anything else (names, calls, exponents, attributes) is refused with `SafeMathError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 256
"""Longest expression accepted; svamp's longest gold equation is under 60 characters."""
MAX_DEPTH = 16
"""Deepest nesting of parentheses and unary signs."""
MAX_NUMBER_DIGITS = 40
"""Longest number accepted, so exact arithmetic stays cheap."""

_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*|\.\d+)|([-+*/()×÷]))")
_OPERATORS = {"×": "*", "÷": "/"}


class SafeMathError(ValueError):
    """The text is not a bounded arithmetic expression."""


@dataclass(frozen=True)
class Num:
    """A number literal, with its source text."""

    value: Fraction
    text: str


@dataclass(frozen=True)
class Neg:
    """Unary minus."""

    operand: Node


@dataclass(frozen=True)
class BinOp:
    """A binary operation."""

    op: str
    left: Node
    right: Node


Node = Num | Neg | BinOp


def _tokenize(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise SafeMathError(f"expression longer than {MAX_CHARS} characters")
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            if text[pos:].strip() == "":
                break
            raise SafeMathError(f"unexpected {text[pos : pos + 10]!r} at {pos}")
        number, op = match.groups()
        if number and len(number) > MAX_NUMBER_DIGITS:
            raise SafeMathError("number too long")
        tokens.append(number or _OPERATORS.get(op, op))
        pos = match.end()
    if not tokens:
        raise SafeMathError("empty expression")
    return tokens


class _Parser:
    # expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)*
    # unary := ('-'|'+') unary | atom ; atom := NUMBER | '(' expr ')'
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise SafeMathError("unexpected end of expression")
        self.pos += 1
        return token

    def expr(self, depth: int) -> Node:
        node = self.term(depth)
        while self.peek() in ("+", "-"):
            node = BinOp(self.take(), node, self.term(depth))
        return node

    def term(self, depth: int) -> Node:
        node = self.unary(depth)
        while self.peek() in ("*", "/"):
            node = BinOp(self.take(), node, self.unary(depth))
        return node

    def unary(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise SafeMathError(f"nested deeper than {MAX_DEPTH}")
        if self.peek() in ("-", "+"):
            sign = self.take()
            operand = self.unary(depth + 1)
            return Neg(operand) if sign == "-" else operand
        return self.atom(depth)

    def atom(self, depth: int) -> Node:
        token = self.take()
        if token == "(":  # noqa: S105 - a bracket, not a password
            node = self.expr(depth + 1)
            if self.take() != ")":
                raise SafeMathError("missing ')'")
            return node
        if token[0].isdigit() or token[0] == ".":
            return Num(Fraction(token), token)
        raise SafeMathError(f"unexpected {token!r}")


def parse(text: str) -> Node:
    """Parses an arithmetic expression into a tree.

    Raises:
        SafeMathError: for anything but bounded arithmetic.
    """
    parser = _Parser(_tokenize(text))
    node = parser.expr(0)
    if parser.peek() is not None:
        raise SafeMathError(f"unexpected {parser.peek()!r} after the expression")
    return node


def _value(node: Node, steps: list[str] | None = None) -> Fraction:
    """The node's value; each operation is appended to `steps` as `a op b = c` when given."""
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Neg):
        return -_value(node.operand, steps)
    left, right = _value(node.left, steps), _value(node.right, steps)
    if node.op == "+":
        value = left + right
    elif node.op == "-":
        value = left - right
    elif node.op == "*":
        value = left * right
    elif right == 0:
        raise SafeMathError("division by zero")
    else:
        value = left / right
    if steps is not None:
        steps.append(f"{_number(left)} {node.op} {_number(right)} = {_number(value)}")
    return value


def evaluate(text: str) -> Fraction:
    """The exact value of an arithmetic expression.

    Raises:
        SafeMathError: for anything but bounded arithmetic, or a division by zero.
    """
    return _value(parse(text))


def _number_text(text: str) -> str:
    if "." not in text:
        return f"{int(text)}.0"
    whole, _, frac = text.partition(".")
    return f"{int(whole or 0)}.{frac or '0'}"


def _render(node: Node) -> str:
    if isinstance(node, Num):
        return _number_text(node.text)
    if isinstance(node, Neg):
        inner = node.operand
        if isinstance(inner, Num):
            return f"-{_number_text(inner.text)}"
        return f"( -1.0 * {_render(inner)} )"
    return f"( {_render(node.left)} {node.op} {_render(node.right)} )"


def canonical(text: str) -> str:
    """The expression in svamp's label style: `(10 - (3 + 6))` -> `( 10.0 - ( 3.0 + 6.0 ) )`.

    Raises:
        SafeMathError: for anything but bounded arithmetic.
    """
    node = parse(text)
    _value(node)  # refuse expressions that divide by zero
    return _render(node)


def values_equal(a: str, b: str, rel_tol: float = 1e-6) -> bool:
    """Whether two expressions have the same value; False if either is not arithmetic.

    The tolerance admits teachers that write a rounded decimal (`3.3333333`) for `10 / 3`.
    """
    try:
        x, y = evaluate(a), evaluate(b)
    except SafeMathError:
        return False
    return abs(float(x - y)) <= rel_tol * max(1.0, abs(float(y)))


def _number(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


def worked_steps(text: str) -> list[str]:
    """The operations of an expression in evaluation order: `( 9 * 8 ) + 30` -> `9 * 8 = 72`, ...

    Raises:
        SafeMathError: for anything but bounded arithmetic, or a division by zero.
    """
    steps: list[str] = []
    _value(parse(text), steps)
    return steps
