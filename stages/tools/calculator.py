"""The calculator tool: safe arithmetic on what the model writes between <|calc|> and <|/calc|>.

    from stages.tools.calculator import calculate, tool_result
    calculate("48213 * 739")        # "35629407"
    tool_result("__import__('os')")  # "error: names are not allowed"

The expression is parsed with `ast` and walked by a tiny interpreter that knows numbers, + - * / // %
**, unary +/- and parentheses, nothing else: no names, calls, attributes, subscripts, strings or
comprehensions, so there is no code to run. Sizes are bounded before any work is done (expression
length, node count, digits of every intermediate, exponent), which bounds the time too.
"""
from __future__ import annotations

import ast
import math
import operator

MAX_CHARS = 200          # longest expression accepted
MAX_NODES = 100          # AST nodes
MAX_DIGITS = 100         # digits of any number, input or intermediate
MAX_EXPONENT = 1000      # |exponent| for **

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_REFUSED = {ast.Name: "names are not allowed", ast.Attribute: "attribute access is not allowed",
            ast.Call: "function calls are not allowed", ast.Subscript: "subscripts are not allowed"}


class CalculatorError(ValueError):
    """The expression is not plain bounded arithmetic."""


def _digits(value) -> float:
    """Decimal digits of a number's magnitude (an estimate good to one digit)."""
    if isinstance(value, int):
        return value.bit_length() * math.log10(2)
    return math.log10(abs(value)) + 1 if value and math.isfinite(value) else 0.0


def _check_size(value):
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result is not a finite number")
    if _digits(value) > MAX_DIGITS:
        raise CalculatorError(f"numbers are limited to {MAX_DIGITS} digits")
    return value


def _power(base, exponent):
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large (limit {MAX_EXPONENT})")
    if base not in (0, 1, -1) and abs(exponent) * _digits(base if abs(base) >= 1 else 1 / base) > MAX_DIGITS + 1:
        raise CalculatorError(f"numbers are limited to {MAX_DIGITS} digits")
    return base ** exponent


def _eval(node):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):
            raise CalculatorError(f"only numbers are allowed, not {type(node.value).__name__}")
        return _check_size(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        if isinstance(node.op, ast.Mult) and _digits(left) + _digits(right) > MAX_DIGITS + 1:
            raise CalculatorError(f"numbers are limited to {MAX_DIGITS} digits")
        try:
            return _check_size(_BINOPS[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
    for kind, why in _REFUSED.items():
        if isinstance(node, kind):
            raise CalculatorError(why)
    raise CalculatorError(f"{type(node).__name__} is not arithmetic")


def calculate(expression: str) -> str:
    """The value of a plain arithmetic expression as text; raises CalculatorError otherwise."""
    expression = expression.strip().replace("\u00d7", "*").replace("\u00f7", "/")
    if not expression:
        raise CalculatorError("empty expression")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError("not an arithmetic expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise CalculatorError(f"expression has more than {MAX_NODES} parts")
    value = _eval(tree)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.10g}"
    return str(value)


def tool_result(expression: str) -> str:
    """What the tool inserts between <|result|> and <|/result|>: the value, or "error: why"."""
    try:
        return calculate(expression)
    except CalculatorError as exc:
        return f"error: {exc}"
