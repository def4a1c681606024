"""The config lr formula evaluator: right numbers, and nothing outside the whitelist gets through."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from template.schedules.expression import Expression, ExpressionError, compile_expression


def test_tutorial_step_decay() -> None:
    expr = compile_expression("0.5 ** (step // 10)")
    assert isinstance(expr, Expression)
    assert [expr(step=s) for s in range(10)] == [1.0] * 10
    assert [expr(step=s) for s in range(10, 20)] == [0.5] * 10
    assert expr(step=20) == 0.25
    assert isinstance(expr(step=0), float)


def test_warmup_cosine_matches_math() -> None:
    consts = {"warmup": 10, "total": 100}
    expr = compile_expression("min(1, step / warmup) * 0.5 * (1 + cos(pi * step / total))", constants=consts)
    for step in range(0, 101, 7):
        expected = min(1, step / 10) * 0.5 * (1 + math.cos(math.pi * step / 100))
        assert expr(step=step) == pytest.approx(expected, rel=1e-15, abs=1e-15)


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("step > 5", 1.0),
        ("1 < step <= 7 < 8", 1.0),
        ("2 if step == 6 and not epoch else 3", 2.0),
        ("epoch or 4", 4.0),
        ("clamp(step, 0, 2) + abs(-1) + floor(2.7) + ceil(0.2)", 6.0),
        ("log(8, 2) + log2(8) + round(step / 4) + round(2.345, 1)", 10.3),
        ("pow(2, 3) + sqrt(16) - max(1, 2, 3) + step % 4", 11.0),
        ("-step + +step + e * 0 + tau * 0 + (inf > 1)", 1.0),
    ],
)
def test_whitelisted_constructs(source: str, value: float) -> None:
    assert compile_expression(source)(step=6, epoch=0) == pytest.approx(value)


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("__import__('os').system('x')", "attribute access is not allowed"),
        ("__import__('os')", "function '__import__' is not allowed"),
        ("().__class__.__bases__", "attribute access is not allowed"),
        ("step.real", "attribute access is not allowed"),
        ("pi.__class__", "attribute access is not allowed"),
        ("open('f')", "function 'open' is not allowed"),
        ("eval('1')", "function 'eval' is not allowed"),
        ("getattr(step, 'real')", "function 'getattr' is not allowed"),
        ("globals()", "function 'globals' is not allowed"),
        ("[1,2][0]", "not allowed"),
        ("lambda: 1", "lambda"),
        ("(lambda: 1)()", "only calls to functions by bare name"),
        ("x", "name 'x' is not allowed (allowed: step, epoch, pi, e, tau, inf)"),
        ("os", "name 'os' is not allowed"),
        ("stpe * 2", "name 'stpe' is not allowed"),
        ("min", "name 'min' is not allowed"),
        ("'a'", "literal 'a' is not allowed"),
        ("b'a'", "not allowed"),
        ("None", "not allowed"),
        ("True", "not allowed"),
        ("1j", "not allowed"),
        ("...", "not allowed"),
        ("(1, 2)", "tuple"),
        ("{1: 2}", "dict"),
        ("[s for s in ()]", "not allowed"),
        ("(y := 1)", "not allowed"),
        ("f'{step}'", "f-string"),
        ("9**9**9", "exponent"),
        ("2 ** -5000", "exponent"),
        ("log(0)", "math domain error"),
        ("1 / 0", "division by zero"),
        ("inf", "finite"),
        ("min(1, key=2)", "keyword arguments are not allowed"),
        ("max(*step)", "starred arguments are not allowed"),
        ("round(1.5, ndigits=1)", "keyword arguments are not allowed"),
        ("min(step)", "min() takes at least 2 argument(s), got 1"),
        ("clamp(step, 1)", "clamp() takes 3 argument(s)"),
        ("step << 2", "operator '<<' is not allowed"),
        ("~step", "operator '~' is not allowed"),
        ("step in (1, 2)", "not allowed"),
        ("step is step", "operator 'is' is not allowed"),
        ("import os", "invalid expression"),
        ("step; 1", "invalid expression"),
        ("1 +", "invalid expression"),
        ("step\x00", "invalid expression"),
        ("(" * 300 + "1" + ")" * 300, "invalid expression"),
        ("-" * 200 + "step", "nested more than"),
        ("+".join(["step"] * 200), "nested more than"),
        ("1" * 1001, "characters long (limit 1000)"),
    ],
)
def test_rejected_at_compile_time(source: str, fragment: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(source)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("source", "variables", "fragment"),
    [
        ("1 / (step - 1)", {"step": 1}, "division by zero"),
        ("step % (epoch - 2)", {"step": 1, "epoch": 2}, "modulo"),
        ("sqrt(step - 5)", {"step": 0}, "math domain error"),
        ("(step - 5) ** 0.5", {"step": 0}, "math domain error"),
        ("step ** 10000", {"step": 1}, "exponent 10000"),
        ("10.0 ** (step * 100)", {"step": 4}, "math range error"),
        ("exp(step)", {"step": 1000}, "math range error"),
        ("round(step, -step)", {"step": 10**6}, "round()"),
        ("step * inf", {"step": 1}, "finite"),
        ("step * inf", {"step": 0}, "finite"),  # nan
        ("epoch", {"step": 1}, "missing variable 'epoch'"),
        ("step", {"stp": 1}, "unknown variable(s) stp"),
        ("step", {"step": "1"}, "must be a number"),
    ],
)
def test_runtime_errors(source: str, variables: dict[str, object], fragment: str) -> None:
    expr = compile_expression(source)
    with pytest.raises(ExpressionError) as info:
        expr(**variables)  # type: ignore[arg-type]
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_runtime_error_names_expression_and_values() -> None:
    with pytest.raises(ExpressionError, match=r"'1/\(step-1\)' with step=1: division by zero"):
        compile_expression("1/(step-1)")(step=1)


def test_variables_and_constants_are_validated() -> None:
    assert compile_expression("lr_scale * t", variables=("t",), constants={"lr_scale": 2})(t=3) == 6.0
    with pytest.raises(ExpressionError, match="must be a number"):
        compile_expression("a", constants={"a": "1"})  # type: ignore[dict-item]
    with pytest.raises(ExpressionError, match="defined twice or shadows"):
        compile_expression("step", constants={"step": 1})
    with pytest.raises(ExpressionError, match="defined twice or shadows"):
        compile_expression("pi", constants={"pi": 3})
    with pytest.raises(ExpressionError, match="not a valid"):
        compile_expression("1", variables=("a b",))
    with pytest.raises(ExpressionError, match="must be a string"):
        compile_expression(None)  # type: ignore[arg-type]


def test_unused_declared_variable_may_be_omitted_and_numbers_accepted() -> None:
    expr = compile_expression("0.5 ** (step // 10)")
    assert expr(step=25) == 0.25  # epoch is declared but unused
    assert compile_expression(1.0)(step=3) == 1.0  # type: ignore[arg-type]  # YAML number
    torch = pytest.importorskip("torch")
    assert expr(step=torch.tensor(25)) == 0.25


def test_repr_pickle_and_scheduler_state() -> None:
    expr = compile_expression("gamma ** step", constants={"gamma": 0.9})
    assert repr(expr) == "Expression('gamma ** step')"
    assert expr.source == "gamma ** step"
    for clone in (pickle.loads(pickle.dumps(expr)), copy.deepcopy(expr)):
        assert clone(step=3) == expr(step=3)
    # LambdaLR.state_dict saves a callable object's __dict__: keep it to plain, picklable data.
    assert expr.__dict__ == {"source": "gamma ** step"}


@given(
    gamma=st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
    step_size=st.integers(1, 50),
    step=st.integers(0, 500),
)
def test_step_decay_property(gamma: float, step_size: int, step: int) -> None:
    constants = {"gamma": gamma, "step_size": step_size}
    expr = compile_expression("gamma ** (step // step_size)", constants=constants)
    assert expr(step=step) == gamma ** (step // step_size)
