"""Safe evaluation of learning-rate multiplier formulas written in config files.

Config text is untrusted, so a formula such as ``0.5 ** (step // 10)`` is never
handed to ``eval``/``exec``/``compile``. It is parsed with ``ast.parse`` and every
node is checked against a small whitelist and turned into a tree of closures.
Unknown names, typos and constant sub-expressions that fail (``log(0)``,
``9 ** 9 ** 9``) are reported when the config loads, not mid-training.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Expression", "ExpressionError", "compile_expression"]

MAX_SOURCE_LENGTH = 1000
MAX_DEPTH = 50
MAX_EXPONENT = 1000
MAX_ROUND_DIGITS = 100

Number = int | float
Env = dict[str, Number]
Node = Callable[[Env], Number]


class ExpressionError(ValueError):
    """Raised for any expression outside the whitelist; message is one readable line naming the problem."""


def _pow(base: Number, exponent: Number) -> Number:
    """``base ** exponent`` that refuses huge integers, overflow and complex results."""
    if abs(exponent) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {exponent!r} is larger than {MAX_EXPONENT} in absolute value")
    math.pow(base, exponent)  # raises OverflowError/ValueError where ** would build a huge int or a complex
    return base**exponent


def _round(x: Number, ndigits: Number | None = None) -> Number:
    """``round`` with a bounded ``ndigits`` (``round(5, -10**300)`` would never finish)."""
    if ndigits is None:
        return round(x)
    if ndigits != int(ndigits) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise ExpressionError(f"round() digits must be an integer within ±{MAX_ROUND_DIGITS}: {ndigits!r}")
    return round(x, int(ndigits))


def _clamp(x: Number, lo: Number, hi: Number) -> Number:
    return min(max(x, lo), hi)


# name -> (function, min args, max args)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "min": (min, 2, MAX_SOURCE_LENGTH), "max": (max, 2, MAX_SOURCE_LENGTH), "abs": (abs, 1, 1),
    "round": (_round, 1, 2), "floor": (math.floor, 1, 1), "ceil": (math.ceil, 1, 1),
    "sqrt": (math.sqrt, 1, 1), "exp": (math.exp, 1, 1), "log": (math.log, 1, 2),
    "log2": (math.log2, 1, 1), "log10": (math.log10, 1, 1), "cos": (math.cos, 1, 1),
    "sin": (math.sin, 1, 1), "tan": (math.tan, 1, 1), "tanh": (math.tanh, 1, 1),
    "acos": (math.acos, 1, 1), "asin": (math.asin, 1, 1), "atan": (math.atan, 1, 1),
    "cosh": (math.cosh, 1, 1), "sinh": (math.sinh, 1, 1), "pow": (_pow, 2, 2), "clamp": (_clamp, 3, 3),
}
_MATH_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}
_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Number]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _pow,
}
_UNARYOPS: dict[type[ast.unaryop], Callable[[Any], Number]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_OP_SYMBOLS = {
    ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.MatMult: "@",
    ast.Invert: "~", ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not",
}
_NODE_NAMES: dict[type[ast.AST], str] = {
    ast.Subscript: "subscript", ast.Lambda: "lambda", ast.JoinedStr: "f-string", ast.NamedExpr: "walrus (:=)",
    ast.ListComp: "comprehension", ast.SetComp: "comprehension", ast.DictComp: "comprehension",
    ast.GeneratorExp: "generator", ast.List: "list", ast.Tuple: "tuple", ast.Set: "set", ast.Dict: "dict",
    ast.Starred: "starred expression", ast.Slice: "slice",
}
_RUNTIME_ERRORS = (ArithmeticError, ValueError)  # ExpressionError is a ValueError


class _Const:
    """A folded constant; a distinct type so parents can fold in turn."""

    __slots__ = ("value",)

    def __init__(self, value: Number) -> None:
        self.value = value

    def __call__(self, env: Env) -> Number:
        return self.value


def _number(what: str, value: object) -> Number:
    """Accept ints, floats and number-like objects (numpy, 0-d tensors); reject strings and the rest."""
    if type(value) is int or type(value) is float:
        return value
    if not isinstance(value, (str, bytes)):
        try:
            return operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, RuntimeError):
            pass
    raise ExpressionError(f"{what} must be a number, got {value!r}")


def _short(source: str) -> str:
    return repr(source if len(source) <= 80 else source[:77] + "...")


class _Compiler:
    """Walks the AST through the whitelist, building closures ``env -> number``."""

    def __init__(self, variables: tuple[str, ...], constants: dict[str, Number]) -> None:
        self.variables = variables
        self.constants = constants

    def compile(self, node: ast.AST, depth: int = 0) -> Node:
        if depth > MAX_DEPTH:
            raise ExpressionError(f"expression is nested more than {MAX_DEPTH} levels deep")
        fn, children = self._build(node, depth + 1)
        if children and all(type(c) is _Const for c in children):
            try:  # fold now so that constant mistakes fail at config load
                return _Const(fn({}))
            except _RUNTIME_ERRORS as exc:
                raise ExpressionError(f"cannot evaluate constant part {ast.unparse(node)!r}: {exc}") from None
        return fn

    def _build(self, node: ast.AST, depth: int) -> tuple[Node, list[Node]]:
        sub = self.compile
        if isinstance(node, ast.Constant):
            value = node.value
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ExpressionError(f"literal {value!r} is not allowed (only int and float numbers)")
            return _Const(value), []
        if isinstance(node, ast.Name):
            if node.id in self.variables:
                name = node.id
                return (lambda env: env[name]), []
            if node.id in self.constants:
                return _Const(self.constants[node.id]), []
            allowed = ", ".join([*self.variables, *self.constants])
            raise ExpressionError(f"name {node.id!r} is not allowed (allowed: {allowed})")
        if isinstance(node, ast.BinOp):
            binop, left, right = self._op(_BINOPS, node.op), sub(node.left, depth), sub(node.right, depth)
            return (lambda env: binop(left(env), right(env))), [left, right]
        if isinstance(node, ast.UnaryOp):
            unop, operand = self._op(_UNARYOPS, node.op), sub(node.operand, depth)
            return (lambda env: unop(operand(env))), [operand]
        if isinstance(node, ast.Compare):
            first = sub(node.left, depth)
            ops = zip(node.ops, node.comparators, strict=True)
            pairs = [(self._op(_CMPOPS, op), sub(c, depth)) for op, c in ops]

            def compare(env: Env) -> bool:
                left = first(env)
                for cmp, right_fn in pairs:
                    right = right_fn(env)
                    if not cmp(left, right):
                        return False
                    left = right
                return True

            return compare, [first, *(fn for _, fn in pairs)]
        if isinstance(node, ast.BoolOp):
            values = [sub(v, depth) for v in node.values]
            stop_on = not isinstance(node.op, ast.And)  # `and` stops on a falsy value, `or` on a truthy one

            def boolop(env: Env) -> Number:
                for fn in values:
                    value = fn(env)
                    if bool(value) is stop_on:
                        return value
                return value

            return boolop, values
        if isinstance(node, ast.IfExp):
            test, body, orelse = sub(node.test, depth), sub(node.body, depth), sub(node.orelse, depth)
            return (lambda env: body(env) if test(env) else orelse(env)), [test, body, orelse]
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        if isinstance(node, ast.Attribute):
            raise ExpressionError("attribute access is not allowed")
        what = _NODE_NAMES.get(type(node), type(node).__name__)
        raise ExpressionError(f"{what} ({ast.unparse(node)!r}) is not allowed")

    def _call(self, node: ast.Call, depth: int) -> tuple[Node, list[Node]]:
        if isinstance(node.func, ast.Attribute):
            raise ExpressionError("attribute access is not allowed")
        if not isinstance(node.func, ast.Name):
            raise ExpressionError("only calls to functions by bare name are allowed")
        if node.func.id not in _FUNCTIONS:
            allowed = ", ".join(_FUNCTIONS)
            raise ExpressionError(f"function {node.func.id!r} is not allowed (allowed: {allowed})")
        if node.keywords:
            raise ExpressionError(f"keyword arguments are not allowed in {node.func.id}()")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise ExpressionError(f"starred arguments are not allowed in {node.func.id}()")
        func, lo, hi = _FUNCTIONS[node.func.id]
        if not lo <= len(node.args) <= hi:
            expected = str(lo) if lo == hi else f"{lo} or {hi}" if hi == lo + 1 else f"at least {lo}"
            raise ExpressionError(f"{node.func.id}() takes {expected} argument(s), got {len(node.args)}")
        args = [self.compile(a, depth) for a in node.args]
        return (lambda env: func(*[a(env) for a in args])), args

    @staticmethod
    def _op(table: Mapping[type, Callable[..., Any]], op: ast.AST) -> Callable[..., Any]:
        if type(op) not in table:
            raise ExpressionError(f"operator {_OP_SYMBOLS.get(type(op), type(op).__name__)!r} is not allowed")
        return table[type(op)]


class Expression:
    """A compiled formula; call it with keyword variables, e.g. ``expr(step=3)``.

    Only ``source`` lives in ``__dict__`` (the compiled closures sit in slots), because
    ``torch.optim.lr_scheduler.LambdaLR.state_dict`` saves ``fn.__dict__`` of callable
    objects and closures cannot be pickled. Pickling recompiles from the source.
    """

    __slots__ = ("__dict__", "_allowed", "_constants", "_fn", "_variables")

    def __init__(
        self, source: str, fn: Node, variables: tuple[str, ...], constants: dict[str, Number]
    ) -> None:
        self.source = source
        self._fn, self._variables, self._constants = fn, variables, constants
        self._allowed = frozenset(variables)

    def __call__(self, **variables: float) -> float:
        if not self._allowed.issuperset(variables):
            unknown = ", ".join(sorted(set(variables) - self._allowed))
            raise ExpressionError(f"unknown variable(s) {unknown} for {_short(self.source)} "
                                  f"(allowed: {', '.join(self._variables)})")
        for name, value in variables.items():
            if type(value) is not int and type(value) is not float:
                variables[name] = _number(f"variable {name!r}", value)
        try:
            result = float(self._fn(variables))
        except KeyError as exc:
            raise ExpressionError(f"missing variable {exc.args[0]!r} for {_short(self.source)}") from None
        except _RUNTIME_ERRORS as exc:
            where = f"{_short(self.source)} with {self._show(variables)}"
            raise ExpressionError(f"cannot evaluate {where}: {exc}") from None
        if not math.isfinite(result):
            raise ExpressionError(f"{_short(self.source)} gave {result} with {self._show(variables)}; "
                                  "the result must be a finite number")
        return result

    @staticmethod
    def _show(variables: Mapping[str, Number]) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in variables.items()) or "no variables"

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return compile_expression, (self.source, self._variables, self._constants)


def compile_expression(
    source: str, variables: Sequence[str] = ("step", "epoch"), constants: Mapping[str, float] | None = None
) -> Expression:
    """Check ``source`` against the whitelist and compile it; raises ExpressionError on any problem."""
    if isinstance(source, (int, float)) and not isinstance(source, bool):
        source = repr(source)  # YAML turns `lr_lambda: 1.0` into a float
    if not isinstance(source, str):
        raise ExpressionError(f"expression must be a string, got {type(source).__name__}")
    source = source.strip()
    if len(source) > MAX_SOURCE_LENGTH:
        raise ExpressionError(f"expression is {len(source)} characters long (limit {MAX_SOURCE_LENGTH})")
    if isinstance(variables, str):
        variables = (variables,)
    names = tuple(variables)
    values = {name: _number(f"constant {name!r}", value) for name, value in (constants or {}).items()}
    seen = set(_FUNCTIONS) | set(_MATH_CONSTANTS)
    for name in [*names, *values]:
        if not isinstance(name, str) or not name.isidentifier():
            raise ExpressionError(f"{name!r} is not a valid variable or constant name")
        if name in seen:
            raise ExpressionError(f"name {name!r} is defined twice or shadows a built-in function/constant")
        seen.add(name)
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ExpressionError(f"invalid expression {_short(source)}: {getattr(exc, 'msg', exc)}") from None
    try:
        fn = _Compiler(names, {**values, **_MATH_CONSTANTS}).compile(tree.body)
    except ExpressionError as exc:
        raise ExpressionError(f"expression {_short(source)}: {exc}") from None
    expression = Expression(source, fn, names, values)
    if type(fn) is _Const:
        expression()  # a constant formula can be fully checked (finite result) right away
    return expression
