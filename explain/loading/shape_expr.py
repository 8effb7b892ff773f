"""Checking a ``.pt2`` symbolic shape expression before sympy sees it.

torch's export deserializer parses shape expressions (``range_constraints``
keys, ``expr_str`` values) with ``sympy.sympify``, which ``eval``s them and
computes every constant sub-expression on the spot, holding the GIL:
``s77 + 0*9**9**8`` freezes the server for good. So Glassbox parses each
expression with Python's ``ast`` (never evaluated) and accepts only bounded
arithmetic:

- names: sympy's arithmetic vocabulary (`EXPR_NAMES`) and symbols
  (``s0``, ``u3``); calls only to those names; no attributes, subscripts or
  lambdas; strings only as a ``Symbol``'s name or a ``Float``'s digits;
- integer literals at most ``2**63`` in size, at most `MAX_NODES` nodes and
  `MAX_DEPTH` levels;
- powers and shifts (``**``, ``<<``, ``>>``, ``Pow``, ``PowByNatural``,
  ``FloatPow``, ``LShift``, ``RShift``) only with an exponent that is a
  literal of size at most `MAX_EXPONENT` or a bare symbol, never nested in
  another power; ``^`` (sympy reads it as a power) is refused.

This bounds every number sympy can build to a few million bits, so checking
and parsing take milliseconds.
"""
from __future__ import annotations

import ast
import re
from typing import Any

from explain.errors import UnsafeFile

MAX_LENGTH = 10_000
MAX_NODES = 2_000
MAX_DEPTH = 100
MAX_EXPONENT = 64
MAX_LITERAL = 2**63
#: Names a serialized sympy expression may use (functions, constants, assumptions).
EXPR_NAMES = frozenset(
    """Symbol Integer Rational Float Mul Add Pow Max Min Abs Mod Eq Ne Lt Le Gt Ge And Or Not
    Piecewise ExprCondPair oo zoo nan true false True False sqrt floor ceiling
    StrictLessThan StrictGreaterThan LessThan GreaterThan Equality Unequality
    FloorDiv ModularIndexing Where PythonMod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift
    PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat
    TruncToInt RoundToInt RoundDecimal ToFloat Identity OpaqueUnaryFn_sqrt
    positive negative integer nonnegative nonpositive real finite infinite commutative nonzero
    rational zero even odd extended_real""".split()
)
#: Keyword arguments a call may carry: sympy assumptions (booleans) and a float's precision.
_ASSUMPTIONS = frozenset(
    """positive negative integer nonnegative nonpositive real finite infinite commutative nonzero rational zero
    even odd extended_real""".split()
)
_POWER_CALLS = frozenset(["Pow", "PowByNatural", "FloatPow", "LShift", "RShift"])
_POWER_OPS = (ast.Pow, ast.LShift, ast.RShift)
_BIN_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.BitAnd, ast.BitOr) + _POWER_OPS
_UNARY_OPS = (ast.USub, ast.UAdd, ast.Not, ast.Invert)
_COMPARE_OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE)
_SYMBOL = re.compile(r"^[a-z]{1,5}\d+$")
_FLOAT_TEXT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d{1,3})?$")


def check_expression(expr: Any) -> None:
    """Refuse a symbolic shape expression that is more than bounded sympy arithmetic.

    Args:
        expr: the expression text from the ``.pt2`` program.

    Raises:
        UnsafeFile: the expression is not a string, too long, uses a name or
            construct outside sympy arithmetic, or could make sympy compute
            an unbounded number (nested or large powers, huge literals).
    """
    if not isinstance(expr, str) or len(expr) > MAX_LENGTH:
        raise UnsafeFile("The .pt2 program has a malformed shape expression.")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        _refuse(expr, "it is not an arithmetic expression")
    nodes = 0
    stack: list[tuple[ast.AST, int, bool]] = [(tree.body, 1, False)]
    while stack:
        node, depth, in_power = stack.pop()
        nodes += 1
        if nodes > MAX_NODES or depth > MAX_DEPTH:
            _refuse(expr, "it is too large")
        for child, child_in_power in _check_node(expr, node, in_power):
            stack.append((child, depth + 1, child_in_power))


def _check_node(expr: str, node: ast.AST, in_power: bool) -> list[tuple[ast.AST, bool]]:
    """Check one node; returns its children to check and whether they sit inside a power."""
    if isinstance(node, ast.Constant):
        _check_literal(expr, node.value)
        return []
    if isinstance(node, ast.Name):
        if node.id not in EXPR_NAMES and not _SYMBOL.match(node.id):
            _refuse(expr, f"it uses {node.id!r}")
        return []
    if isinstance(node, ast.BinOp):
        if not isinstance(node.op, _BIN_OPS):
            _refuse(expr, f"it uses the operator {type(node.op).__name__}")
        if isinstance(node.op, _POWER_OPS):
            return _check_power(expr, node.left, node.right, in_power)
        return [(node.left, in_power), (node.right, in_power)]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY_OPS):
        return [(node.operand, in_power)]
    if isinstance(node, ast.BoolOp):
        return [(v, in_power) for v in node.values]
    if isinstance(node, ast.Compare) and all(isinstance(op, _COMPARE_OPS) for op in node.ops):
        return [(node.left, in_power)] + [(c, in_power) for c in node.comparators]
    if isinstance(node, ast.Tuple):
        return [(e, in_power) for e in node.elts]
    if isinstance(node, ast.Call):
        return _check_call(expr, node, in_power)
    _refuse(expr, f"it uses {type(node).__name__}")
    return []


def _check_call(expr: str, node: ast.Call, in_power: bool) -> list[tuple[ast.AST, bool]]:
    if not isinstance(node.func, ast.Name) or node.func.id not in EXPR_NAMES:
        _refuse(expr, "it calls something other than a sympy function")
    name = node.func.id
    for kw in node.keywords:
        value = kw.value.value if isinstance(kw.value, ast.Constant) else None
        if kw.arg in _ASSUMPTIONS and isinstance(value, bool):
            continue
        if kw.arg == "precision" and name == "Float" and type(value) is int and 0 < value <= 1024:
            continue
        _refuse(expr, f"it passes {kw.arg or '**'}= to {name}")
    args = list(node.args)
    if any(isinstance(a, ast.Starred) for a in args):
        _refuse(expr, "it unpacks arguments")
    if args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
        text = args[0].value
        if not ((name == "Symbol" and _SYMBOL.match(text)) or (name == "Float" and _FLOAT_TEXT.match(text))):
            _refuse(expr, f"it passes the string {text[:20]!r} to {name}")
        args = args[1:]
    if name in _POWER_CALLS:
        if len(args) != 2:
            _refuse(expr, f"{name} takes a base and an exponent")
        return _check_power(expr, args[0], args[1], in_power)
    return [(a, in_power) for a in args]


def _check_power(expr: str, base: ast.AST, exponent: ast.AST, in_power: bool) -> list[tuple[ast.AST, bool]]:
    """A power's exponent is a small literal or a bare symbol, and no power sits inside another."""
    if in_power:
        _refuse(expr, "it nests one power inside another")
    value = _literal_value(exponent)
    if value is not None:
        if abs(value) > MAX_EXPONENT:
            _refuse(expr, f"it raises to the power {value!r} (at most {MAX_EXPONENT} is allowed)")
    elif not _is_symbol(exponent):
        _refuse(expr, "its exponent is neither a small number nor a symbol")
    return [(base, True), (exponent, True)]


def _literal_value(node: ast.AST) -> int | float | None:
    """The value of ``5``, ``-5``, ``Integer(5)``, ``Float('0.5')`` or ``Integer(-5)``; None otherwise."""
    sign = 1
    while isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign = -sign if isinstance(node.op, ast.USub) else sign
        node = node.operand
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("Integer", "Float") \
            and len(node.args) == 1:
        inner = _literal_value(node.args[0])
        return None if inner is None else sign * inner
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return sign * node.value
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and _FLOAT_TEXT.match(node.value):
        return sign * float(node.value)
    return None


def _is_symbol(node: ast.AST) -> bool:
    """``s0`` or ``Symbol('s0', ...)``."""
    if isinstance(node, ast.Name):
        return bool(_SYMBOL.match(node.id))
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Symbol"
            and bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            and bool(_SYMBOL.match(node.args[0].value)))


def _check_literal(expr: str, value: Any) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if abs(value) > MAX_LITERAL:
            _refuse(expr, "it holds an integer larger than 2**63")
        return
    if isinstance(value, float):
        return
    if isinstance(value, str):
        _refuse(expr, f"it holds the string {value[:20]!r}")
    _refuse(expr, f"it holds a {type(value).__name__} literal")


def _refuse(expr: str, why: str) -> None:
    raise UnsafeFile(
        f"The .pt2 shape expression {expr[:60]!r} is not evaluated: {why}.",
        "Export the model again with torch.export.save; Glassbox only reads bounded shape arithmetic.",
    )
