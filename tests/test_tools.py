"""The calculator: plain arithmetic works; code, names, attributes and huge numbers are refused."""
from __future__ import annotations

import pytest

from stages.tools.calculator import CalculatorError, calculate, tool_result


@pytest.mark.parametrize("expr, value", [
    ("48213 * 739", "35629407"), ("2 + 3 * 4", "14"), ("(2 + 3) * 4", "20"), ("-7 + 2", "-5"),
    ("10 / 4", "2.5"), ("10 / 5", "2"), ("17 // 5", "3"), ("17 % 5", "2"), ("2 ** 10", "1024"),
    ("1.5 * 4", "6"), ("12\u00d73", "36"), ("  9 - 10 ", "-1"), ("2 ** -1", "0.5"),
])
def test_arithmetic(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr, why", [
    ("__import__('os').system('echo hi')", "function calls"),
    ("__import__", "names"),
    ("x + 1", "names"),
    ("(1).real", "attribute"),
    ("(2).__class__.__bases__", "attribute"),
    ("9 ** 9 ** 9", "exponent"),
    ("2 ** 100000", "exponent"),
    ("10 ** 500", "digits"),
    ("99999999999 ** 50", "digits"),
    ("(10 ** 90) * (10 ** 90)", "digits"),
    ("1 / 0", "division by zero"),
    ("'a' * 3", "only numbers"),
    ("[1, 2][0]", "subscripts"),
    ("lambda: 1", "not arithmetic"),
    ("1 if 1 else 2", "not arithmetic"),
    ("1 < 2", "not arithmetic"),
    ("import os", "not an arithmetic expression"),
    ("1 +", "not an arithmetic expression"),
    ("", "empty"),
    ("1+" * 150 + "1", "longer than"),
    ("True + 1", "only numbers"),
])
def test_refuses(expr, why):
    with pytest.raises(CalculatorError, match=why):
        calculate(expr)


def test_tool_result_never_raises():
    assert tool_result("6 * 7") == "42"
    assert tool_result("open('/etc/passwd').read()").startswith("error: ")
    assert tool_result("((((((((((((((((((((1))))))))))))))))))))") == "1"
