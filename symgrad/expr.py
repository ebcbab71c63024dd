"""Safe expression parser: user text -> allow-listed ``ast`` -> SymPy, without ``eval``.

User expressions (activations, losses, hand derivations) never reach ``eval``, ``exec``,
``sympify`` or ``parse_expr``. Parsing has two stages so other modes can reuse them:

* :func:`validate` runs ``ast.parse(text, mode="eval")`` after cheap pre-checks and checks
  size limits and an allow-list of node types. A comparison (one of ``< <= > >=``, not
  chained) is an operand like any other: as the first argument of ``where`` it is the
  condition, elsewhere it is the Iverson bracket ``[a > b]`` (1 where true, 0 elsewhere),
  as numpy multiplies a boolean array (so ``x * (x > 0)`` is relu and ``(x > 0)`` relu′). ``allow_matrix=True`` additionally admits
  ``@``, ``.T``, the keyword arguments ``axis=0|1|None`` / ``keepdims=True|False`` and the
  numpy method spellings of :data:`MATRIX_METHODS` (``x.sum(axis=0)``, ``a.dot(b)``).
* :func:`parse_scalar` builds SymPy for scalar expressions with :class:`ScalarBuilder`, an
  AST walker whose hooks (``binary``, ``power``, ``call``, ...) a matrix builder can override.

Every bad input raises :class:`~symgrad.errors.SymgradError` with a one-line explanation.
Limits keep hostile input cheap. Syntax: at most 1000 characters, 40 nesting levels (a flat
chain such as ``a + b - c + ...`` counts as one level), 400 syntax nodes, integer literals
of at most 12 digits, finite float literals with ``|v| <= 1e12``. Building (SymPy evaluates
as it goes, sometimes at absurd cost): numeric exponents within ``|p| <= 64``; constants
(no free symbols) finite, real and within 1e300; no number anywhere beyond about 1e300;
``exp`` of a constant within 700; numbers under a fractional power below 1e18 with a
denominator dividing 12; no where/relu/heaviside or comparison inside a condition. What these miss is
cut off after ``TIME_LIMIT`` seconds ("expression is too complex"). A single long C-level
integer operation inside SymPy cannot be interrupted, so the limit is best effort.
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
import re
import warnings
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType

import sympy

from symgrad.budget import OutOfTime as _OutOfTime
from symgrad.budget import clock as _clock
from symgrad.budget import deadline as _deadline
from symgrad.errors import SymgradError

__all__ = ["validate", "parse_scalar", "SCALAR_FUNCTIONS"]

MAX_LENGTH = 1000
MAX_DEPTH = 40
MAX_NODES = 400
MAX_INT_DIGITS = 12
MAX_FLOAT = 1e12
MAX_EXPONENT = 64
MAX_CONST_LOG10 = 300
MAX_EXP_ARGUMENT = 700  # constant part of an exp() argument (e**700 is about 1e304)
MAX_NUMBER_BITS = 1000  # any rational anywhere in a result (about 1e301)
MAX_ROOT_BASE = 10**18  # numbers under a fractional power (see ScalarBuilder.check_root)
TIME_LIMIT = 0.75  # seconds SymPy may spend building one expression (good input: ~0.01 s)
NUMPY_PREFIXES = ("np", "numpy")
#: numpy method spellings admitted in matrix expressions: ``x.NAME(args)`` means
#: ``FUNCTION(x, args)``. Only these; any other attribute access is refused.
MATRIX_METHODS = MappingProxyType(
    {"sum": "sum", "mean": "mean", "dot": "dot", "transpose": "transpose"}
)

#: numpy spellings that expression mode (``numpy_forms``) also reads, so that every numpy
#: line symgrad prints reads back: ``X.max(axis=0)``/``X.min(…)`` (numpy's methods),
#: ``G.reshape(a, b, c, d)`` (only as einsum's operand), ``np.arange(n)[:, None]`` and ``==``
#: (only in the one-hot form of an arg-max), einsum's subscripts (validated by
#: :data:`EINSUM_SUBSCRIPTS`: letters, commas and one ``->``, at most 32 characters) and
#: the tuple of sizes of ``np.broadcast_to(v, (N, k))`` and of ``np.ones((n, m))``/``np.zeros``.
EXPR_METHODS = MappingProxyType({"max": "max", "min": "min", "reshape": "reshape"})
EINSUM_SUBSCRIPTS = r"[a-z]{1,8}(,[a-z]{1,8}){0,3}->[a-z]{0,8}"
MAX_SUBSCRIPTS = 32

Builder = Callable[..., sympy.Expr]


# --- the scalar function table -----------------------------------------------------------


def _relu(x: sympy.Expr) -> sympy.Expr:
    return sympy.Piecewise((x, x > 0), (0, True))


def _heaviside(x: sympy.Expr) -> sympy.Expr:
    return sympy.Piecewise((1, x > 0), (0, True))


def _iverson(relation: sympy.Basic) -> sympy.Expr:
    """A comparison used as a number: ``[relation]``, 1 where it holds and 0 elsewhere."""
    return sympy.Piecewise((1, relation), (0, True))


def _where(cond: sympy.Basic, a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    return sympy.Piecewise((a, cond), (b, True))


SCALAR_FUNCTIONS: Mapping[str, tuple[int, Builder]] = MappingProxyType(
    {
        "exp": (1, sympy.exp),
        "log": (1, sympy.log),
        "log1p": (1, lambda x: sympy.log(1 + x)),
        "expm1": (1, lambda x: sympy.exp(x) - 1),
        "sqrt": (1, sympy.sqrt),
        "abs": (1, sympy.Abs),
        "sign": (1, sympy.sign),
        "tanh": (1, sympy.tanh),
        "sinh": (1, sympy.sinh),
        "cosh": (1, sympy.cosh),
        "sin": (1, sympy.sin),
        "cos": (1, sympy.cos),
        "tan": (1, sympy.tan),
        "arctan": (1, sympy.atan),
        "atan": (1, sympy.atan),
        "erf": (1, sympy.erf),
        "sigmoid": (1, lambda x: 1 / (1 + sympy.exp(-x))),
        "softplus": (1, lambda x: sympy.log(1 + sympy.exp(x))),
        "relu": (1, _relu),
        "heaviside": (1, _heaviside),
        "maximum": (2, sympy.Max),
        "minimum": (2, sympy.Min),
        "where": (3, _where),
    }
)
"""Scalar functions: name -> (exact number of positional arguments, SymPy builder)."""

# Common spellings from other libraries -> the name in the table (or a hint).
_FUNCTION_HINTS = {
    "ln": "did you mean 'log'?",
    "max": "did you mean 'maximum'?",
    "min": "did you mean 'minimum'?",
    "absolute": "did you mean 'abs'?",
    "fabs": "did you mean 'abs'?",
    "expit": "did you mean 'sigmoid'?",
    "logistic": "did you mean 'sigmoid'?",
    "pow": "write a ** b",
    "power": "write a ** b",
}


# --- stage 1: validation -----------------------------------------------------------------

_REFUSED = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "indexing (subscripts) is not allowed",
    ast.Slice: "slices are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.BoolOp: "'and'/'or' are not allowed (use where(cond, a, b))",
    ast.IfExp: "'a if cond else b' is not allowed (use where(cond, a, b))",
    ast.NamedExpr: "':=' is not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.Starred: "'*' argument unpacking is not allowed",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
}

_OPERATORS = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**",
    ast.MatMult: "@", ast.Mod: "%", ast.FloorDiv: "//", ast.BitAnd: "&", ast.BitOr: "|",
    ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>",
    ast.UAdd: "+", ast.USub: "-", ast.Not: "not", ast.Invert: "~",
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
    ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in",
}  # fmt: skip

_SCALAR_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)
_COMPARISONS = {ast.Lt: sympy.Lt, ast.LtE: sympy.Le, ast.Gt: sympy.Gt, ast.GtE: sympy.Ge}
# Left-nested chains within one group (a + b - c + ...) count as a single nesting level.
_GROUPS = {ast.Add: "+", ast.Sub: "+", ast.Mult: "*", ast.Div: "*", ast.MatMult: "*"}


def _fail(where: str, what: str) -> SymgradError:
    return SymgradError(where, what)


def _nested(where: str) -> SymgradError:
    return _fail(where, f"expression is nested too deeply (more than {MAX_DEPTH} levels)")


def _short(text: object, limit: int = 24) -> str:
    s = str(text)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _source(node: ast.AST | None, fallback: object = "") -> str:
    """Short source text of ``node`` for messages."""
    return _short(ast.unparse(node) if node is not None else fallback, 40)


def _bracket_depth(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    return deepest


def _same_group(parent: ast.AST, child: ast.AST) -> bool:
    return (
        isinstance(parent, ast.BinOp)
        and isinstance(child, ast.BinOp)
        and child is parent.left
        and _GROUPS.get(type(child.op), "") == _GROUPS.get(type(parent.op))
    )


#: np.linalg's functions an expression may call (what the matrix builder knows)
LINALG_FUNCTIONS = frozenset({"inv", "det", "solve", "slogdet", "matrix_power", "norm"})  # slogdet: refused


def _is_numpy_attribute(node: ast.AST) -> bool:
    """``np.NAME`` / ``numpy.NAME`` with a public NAME."""
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in NUMPY_PREFIXES
        and not node.attr.startswith("_")
    )


def _is_arange_column(node: ast.Subscript) -> bool:
    """``np.arange(…)[:, None]``."""
    value, parts = node.value, node.slice.elts if isinstance(node.slice, ast.Tuple) else []
    return (isinstance(value, ast.Call) and _is_numpy_attribute(value.func)
            and value.func.attr == "arange" and len(parts) == 2
            and isinstance(parts[0], ast.Slice) and parts[0].lower is parts[0].upper is None
            and parts[0].step is None
            and isinstance(parts[1], ast.Constant) and parts[1].value is None)


def _is_method(node: ast.AST) -> bool:
    """``x.NAME`` with NAME in :data:`MATRIX_METHODS` and x not numpy itself (``np.linalg``)."""
    return (
        isinstance(node, ast.Attribute)
        and node.attr in MATRIX_METHODS
        and not (isinstance(node.value, ast.Name) and node.value.id in NUMPY_PREFIXES)
        and not _is_numpy_attribute(node.value)
    )


def _parse(text: str, where: str) -> tuple[ast.Expression, str]:
    """``ast.parse`` on one line (newlines become spaces, a ``#`` comment runs to the end of
    its line, as in Python); columns are 1-based in ``text``."""
    lines = text.replace("\r", " ").split("\n")
    line = " ".join(part.split("#", 1)[0].ljust(len(part)) for part in lines)
    source = line.lstrip(" \t\f")
    shift = len(line) - len(source)
    try:
        with warnings.catch_warnings():  # e.g. SyntaxWarning for "1 is 1"
            warnings.simplefilter("ignore")
            return ast.parse(source, mode="eval"), source
    except SyntaxError as exc:
        column = exc.offset if exc.offset and exc.offset > 0 else len(source) + 1
        raise _fail(where, f"cannot parse: {exc.msg} at column {column + shift}") from None
    except (RecursionError, MemoryError):
        raise _nested(where) from None
    except ValueError as exc:  # defensive: e.g. null bytes on some Python versions
        raise _fail(where, f"cannot parse: {exc}") from None


def _check_size(tree: ast.Expression, where: str) -> None:
    """Node count and nesting depth, iteratively (no recursion on hostile trees)."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise _nested(where)
        if count > MAX_NODES:
            raise _fail(where, f"expression is too large (more than {MAX_NODES} syntax nodes)")
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr | ast.keyword):
                stack.append((child, depth if _same_group(node, child) else depth + 1))


class _Validator:
    """Iterative pre-order walk that accepts only allow-listed nodes."""

    def __init__(self, source: str, where: str, allow_matrix: bool, indexing: bool = False,
                 numpy_forms: bool = False) -> None:
        self.source = source
        self.where = where
        self.allow_matrix = allow_matrix
        self.indexing = indexing
        self.numpy_forms = numpy_forms and allow_matrix

    def refuse(self, what: str) -> SymgradError:
        return _fail(self.where, what)

    def run(self, tree: ast.Expression) -> None:
        stack: list[ast.AST] = [tree.body]
        while stack:
            stack.extend(reversed(self.check(stack.pop())))

    def check(self, node: ast.AST) -> list[ast.AST]:
        """Refuse ``node`` or return its children to check next."""
        if isinstance(node, ast.Name):
            return []
        if isinstance(node, ast.Constant):
            self.check_constant(node)
            return []
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.UAdd | ast.USub):
                raise self.refuse(f"operator '{_OPERATORS[type(node.op)]}' is not allowed")
            return [node.operand]
        if isinstance(node, ast.BinOp):
            self.check_operator(node.op)
            return [node.left, node.right]
        if isinstance(node, ast.Compare):
            self.check_comparison(node)
            return [node.left, node.comparators[0]]
        if isinstance(node, ast.Call):
            return self.check_call(node)
        if isinstance(node, ast.Subscript) and self.indexing:  # x[:, a:b]: the builder reads it
            parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            out = [node.value]
            for p in parts:
                if isinstance(p, ast.Slice):
                    out += [b for b in (p.lower, p.upper, p.step) if b is not None]
                elif not (isinstance(p, ast.Constant) and p.value is None):
                    out.append(p)
            return out
        if isinstance(node, ast.Subscript) and self.numpy_forms and _is_arange_column(node):
            return [node.value]  # np.arange(n)[:, None]: the one-hot form's row positions
        if isinstance(node, ast.Attribute):
            if _is_numpy_attribute(node):
                return []
            if node.attr == "T" and self.allow_matrix:
                return [node.value]
            if node.attr == "T":
                raise self.refuse("transpose '.T' is only allowed in matrix expressions")
        raise self.refuse(_REFUSED.get(type(node), f"{type(node).__name__} is not allowed"))

    def check_constant(self, node: ast.Constant) -> None:
        value = node.value
        text = _short(ast.get_source_segment(self.source, node) or repr(value))
        if isinstance(value, bool):
            raise self.refuse("True/False are not allowed here (use 1 or 0)")
        if isinstance(value, int):
            if len(str(abs(value))) > MAX_INT_DIGITS:
                raise self.refuse(f"integer {text} is too large (at most {MAX_INT_DIGITS} digits)")
            return
        if isinstance(value, float):
            if not math.isfinite(value) or abs(value) > MAX_FLOAT:
                raise self.refuse(f"number {text} is out of range (|value| at most 1e12)")
            return
        kinds = {str: "string literals", bytes: "bytes literals", complex: "complex numbers"}
        if type(value) in kinds:
            raise self.refuse(f"{kinds[type(value)]} are not allowed")
        raise self.refuse(f"'{text}' is not allowed")

    def check_operator(self, op: ast.operator) -> None:
        if isinstance(op, _SCALAR_BINOPS) or (isinstance(op, ast.MatMult) and self.allow_matrix):
            return
        if isinstance(op, ast.MatMult):
            raise self.refuse("operator '@' (matrix product) is only allowed in matrix expressions")
        if isinstance(op, ast.BitXor):
            raise self.refuse("operator '^' is not allowed (write ** for powers)")
        raise self.refuse(f"operator '{_OPERATORS[type(op)]}' is not allowed")

    def check_comparison(self, node: ast.Compare) -> None:
        if len(node.ops) > 1:
            raise self.refuse("chained comparisons are not allowed (compare two values)")
        if isinstance(node.ops[0], ast.Eq) and self.numpy_forms:
            return  # the builder reads == only in the one-hot form of an arg-max
        if type(node.ops[0]) not in _COMPARISONS:
            symbol = _OPERATORS[type(node.ops[0])]
            raise self.refuse(f"comparison '{symbol}' is not allowed (use <, <=, > or >=)")

    def check_call(self, node: ast.Call) -> list[ast.AST]:
        func = node.func
        if isinstance(func, ast.Name) or _is_numpy_attribute(func):
            pass
        elif self.allow_matrix and isinstance(func, ast.Attribute) and _is_numpy_attribute(
                func.value) and func.value.attr == "linalg" and func.attr in LINALG_FUNCTIONS:
            pass  # np.linalg.inv(A): the builder knows which (inv, det, solve)
        elif self.allow_matrix and (_is_method(func) or self.numpy_forms and isinstance(
                func, ast.Attribute) and func.attr in EXPR_METHODS and not _is_numpy_attribute(
                func)):  # x.sum(axis=0): the receiver is an argument
            for keyword in node.keywords:
                self.check_keyword(keyword)
            return [func.value, *node.args]
        elif isinstance(func, ast.Attribute):
            raise self.refuse("attribute access is not allowed")
        else:
            raise self.refuse("only named functions can be called, e.g. exp(x)")
        for keyword in node.keywords:
            self.check_keyword(keyword)
        name = func.id if isinstance(func, ast.Name) else func.attr
        if self.numpy_forms and name == "einsum" and node.args:  # its subscripts, checked
            spec = node.args[0]
            if not (isinstance(spec, ast.Constant) and isinstance(spec.value, str)
                    and len(spec.value) <= MAX_SUBSCRIPTS
                    and re.fullmatch(EINSUM_SUBSCRIPTS, spec.value)):
                raise self.refuse("einsum's first argument must be its subscripts, e.g. "
                                  '"ipjq,pq->ij" (letters, commas and one ->)')
            return list(node.args[1:])
        if self.numpy_forms and name == "broadcast_to" and len(node.args) == 2 and isinstance(
                node.args[1], ast.Tuple):  # np.broadcast_to(v, (N, k)): the tuple of sizes
            return [node.args[0], *node.args[1].elts]
        if self.numpy_forms and name in ("ones", "zeros") and len(node.args) == 1 and isinstance(
                node.args[0], ast.Tuple):  # np.ones((n, m)): the tuple of sizes
            return list(node.args[0].elts)
        if self.allow_matrix and name == "norm":  # norm(X, "fro"): the one string admitted
            strings = [a for a in node.args[1:] if isinstance(a, ast.Constant)
                       and isinstance(a.value, str)]
            if any(a.value != "fro" for a in strings):
                raise self.refuse('the only order given as a string is norm(X, "fro")')
            return [a for a in node.args if a not in strings]
        return list(node.args)

    def check_keyword(self, keyword: ast.keyword) -> None:
        if keyword.arg is None:
            raise self.refuse("'**' argument unpacking is not allowed")
        if not self.allow_matrix:
            raise self.refuse(f"keyword argument '{keyword.arg}=' is not allowed")
        value = keyword.value.value if isinstance(keyword.value, ast.Constant) else ...
        if keyword.arg == "axis":
            if self.indexing and isinstance(keyword.value, ast.UnaryOp) and isinstance(
                    keyword.value.op, ast.USub) and isinstance(keyword.value.operand, ast.Constant):
                value = -keyword.value.operand.value if type(
                    keyword.value.operand.value) is int else ...
                if value in (-1, -2):  # numpy's count from the end; the builder resolves it
                    keyword.value = ast.copy_location(ast.Constant(value), keyword.value)
            if not (value is None or (type(value) is int and value in (0, 1) or (
                    self.indexing and value in (-1, -2)))):
                raise self.refuse("axis must be 0, 1, -1, -2 or None" if self.indexing
                                  else "axis must be 0, 1 or None")
        elif keyword.arg == "keepdims":
            if not isinstance(value, bool):
                raise self.refuse("keepdims must be True or False")
        else:
            raise self.refuse(
                f"keyword argument '{keyword.arg}=' is not allowed (allowed: axis=, keepdims=)"
            )


def validate(text: str, *, where: str, allow_matrix: bool = False,
             indexing: bool = False, numpy_forms: bool = False) -> ast.Expression:
    """Parse ``text`` with ``ast`` and check limits and allowed constructs; return the tree.

    ``indexing`` (with ``allow_matrix``; for a builder that knows each array's dimensions,
    verify's) also admits subscripts (``x[:, a:b]``, ``v[:, None]``: their parts are checked
    as expressions, their meaning is the builder's) and ``axis=-1``/``axis=-2``.

    ``numpy_forms`` (with ``allow_matrix``; expression mode's builder) also admits the
    numpy spellings of :data:`EXPR_METHODS` (the forms symgrad's own numpy lines use).

    Names and function names are *not* checked here (each mode has its own tables); a
    comparison (``< <= > >=``, not chained) is accepted wherever an operand is.
    Raises :class:`SymgradError` (``where`` names the place) for any bad input.
    """
    if not isinstance(text, str):
        raise _fail(where, f"expected an expression string, got {type(text).__name__}")
    if not text.strip() or all(not t.split("#", 1)[0].strip() for t in text.splitlines()):
        raise _fail(where, "empty expression")
    if len(text) > MAX_LENGTH:
        raise _fail(where, f"expression is too long ({len(text)} characters, at most {MAX_LENGTH})")
    if "\0" in text:
        raise _fail(where, f"cannot parse: null character at column {text.index(chr(0)) + 1}")
    if _bracket_depth(text) > MAX_DEPTH:
        raise _nested(where)
    tree, source = _parse(text, where)
    _check_size(tree, where)
    _Validator(source, where, allow_matrix, indexing and allow_matrix, numpy_forms).run(tree)
    return tree


# --- stage 2: building SymPy -------------------------------------------------------------

MAX_VALUE = 1e300  # constant subexpressions must stay within this magnitude


def _float_sign(v: float) -> float:
    return float((v > 0) - (v < 0))


def _float_sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def _float_softplus(v: float) -> float:
    return max(v, 0.0) + math.log1p(math.exp(-abs(v)))


# float64 twins of the table, used only to bound constant subexpressions before SymPy
# sees them (SymPy may evaluate e.g. sinh(cosh(1e12)) numerically with absurd precision).
_FLOAT_FUNCTIONS: Mapping[str, Callable[..., float]] = MappingProxyType(
    {
        "exp": math.exp, "log": math.log, "log1p": math.log1p, "expm1": math.expm1,
        "sqrt": math.sqrt, "abs": abs, "sign": _float_sign, "tanh": math.tanh,
        "sinh": math.sinh, "cosh": math.cosh, "sin": math.sin, "cos": math.cos,
        "tan": math.tan, "arctan": math.atan, "atan": math.atan, "erf": math.erf,
        "sigmoid": _float_sigmoid, "softplus": _float_softplus,
        "relu": lambda v: max(v, 0.0), "heaviside": lambda v: float(v > 0),
        "maximum": max, "minimum": min, "where": lambda c, a, b: a if c else b,
    }
)  # fmt: skip
_FLOAT_OPERATORS: Mapping[type, Callable[..., float]] = MappingProxyType(
    {
        ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.Pow: math.pow,
    }
)  # fmt: skip


def _exact(value: float) -> sympy.Rational:
    """A float literal as the exact rational of its shortest decimal form (0.1 -> 1/10)."""
    numerator, denominator = Decimal(repr(value)).as_integer_ratio()
    return sympy.Rational(numerator, denominator)


def _log10(value: sympy.Rational) -> float:
    p, q = abs(int(value.p)), int(value.q)
    return math.log10(p) - math.log10(q)


def _power_text(base: sympy.Basic, exponent: sympy.Basic) -> str:
    def operand(value: sympy.Basic) -> str:
        text = _short(value)
        return text if value.is_Integer and value >= 0 else f"({text})"

    return f"{operand(base)}**{operand(exponent)}"


_EXP_FUNCTIONS = frozenset({"exp", "expm1", "sigmoid", "softplus"})
_CONDITIONAL = frozenset({"where", "relu", "heaviside"})  # their first argument is a condition


def _rationals(expr: sympy.Basic) -> list[sympy.Rational]:
    return [expr] if expr.is_Rational else list(expr.atoms(sympy.Rational))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_NON_FINITE = (sympy.zoo, sympy.nan, sympy.oo, -sympy.oo)


_warm = False


def _warm_up() -> None:
    """Pay SymPy's one-time costs (lazy imports, first-use caches) outside the deadline."""
    global _warm
    if _warm:
        return
    t = sympy.Dummy("t", real=True)
    samples = {1: [t], 2: [t / 100, t], 3: [t > 0, t, -t]}
    for arity, fn in SCALAR_FUNCTIONS.values():
        fn(*samples[arity])
    sympy.Le(sympy.Abs(t - 1), 1)
    sympy.Pow(12, sympy.Rational(1, 3))
    sympy.pi.evalf(15)
    _warm = True


class ScalarBuilder:
    """Builds SymPy from a tree accepted by :func:`validate` (scalar mode).

    ``names`` maps user names to the caller's SymPy objects; they shadow the constants.
    Subclasses (e.g. a matrix mode) override ``functions``, ``constants`` or the hooks
    ``lookup``, ``binary``, ``power``, ``call`` and ``visit_<Node>`` methods.

    SymPy evaluates as it builds, sometimes at absurd cost (numeric evaluation of huge
    constants, exact powers, factoring), so each step is bounded: a constant gets a
    float64 estimate from its arguments' estimates *before* SymPy builds it (``estimate``),
    every result is checked for large numbers and constants (``remember``, ``audit``),
    powers and ``exp`` of numbers are restricted (``check_root``, ``check_exponential``)
    and the whole build runs under a time limit (``time_limit``).
    """

    functions: Mapping[str, tuple[int, Builder]] = SCALAR_FUNCTIONS
    float_functions: Mapping[str, Callable[..., float]] = _FLOAT_FUNCTIONS
    constants: Mapping[str, sympy.Expr] = MappingProxyType({"pi": sympy.pi, "e": sympy.E})
    time_limit: float = TIME_LIMIT

    def __init__(self, names: Mapping[str, sympy.Basic], *, where: str) -> None:
        self.names = names
        self.where = where
        self._values: dict[sympy.Basic, float] = {}
        self._seen: set[tuple[sympy.Basic, bool]] = set()
        self._end = math.inf

    def error(self, what: str) -> SymgradError:
        return SymgradError(self.where, what)

    def build(self, tree: ast.Expression) -> sympy.Basic:
        """The SymPy object for ``tree``; refuses infinite, undefined or non-real results."""
        _warm_up()
        self._end = _clock() + self.time_limit
        try:
            with _deadline(self.time_limit):
                result = self.visit(tree.body)
        except (_OutOfTime, RecursionError, MemoryError):
            raise self.error(
                f"expression is too complex (building it took over {self.time_limit:g} s); "
                "simplify it"
            ) from None
        if result.has(*_NON_FINITE):
            raise self.error("the expression is infinite or undefined; check its constants")
        if result.has(sympy.I):
            raise self.error("the expression is not real; check its constants")
        return result

    def visit(self, node: ast.AST) -> sympy.Basic:
        if _clock() > self._end:  # in case SymPy swallowed the tracer's exception
            raise _OutOfTime
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise self.error(_REFUSED.get(type(node), f"{type(node).__name__} is not allowed"))
        return method(node)

    # --- bounding constants

    def value(self, expr: sympy.Basic) -> float | None:
        """The float64 estimate of a constant ``expr``; None if it depends on names."""
        if expr in self._values:
            return self._values[expr]
        if isinstance(expr, sympy.logic.boolalg.BooleanAtom):
            return float(bool(expr))
        if expr.is_Rational:
            try:
                return float(expr)
            except OverflowError:
                return math.inf
        if expr.free_symbols or not isinstance(expr, sympy.Expr):
            return None
        return self._evaluate(expr, None)

    def estimate(
        self, node: ast.AST, fn: Callable[..., float] | None, args: list[sympy.Basic]
    ) -> float | None:
        """``fn`` on the arguments' estimates; refuses overflow before SymPy sees it."""
        values = [self.value(arg) for arg in args]
        if fn is None or None in values:
            return None
        try:
            value = float(fn(*values))
        except OverflowError:
            raise self._too_large(node) from None
        except (ValueError, ZeroDivisionError):
            return None  # let SymPy decide (exact zero, complex, ...)
        if not math.isfinite(value) or abs(value) > MAX_VALUE:
            raise self._too_large(node)
        return value

    def remember(self, node: ast.AST, result: sympy.Basic, estimate: float | None) -> sympy.Basic:
        """Check and record the value of ``result`` if it is constant; return ``result``."""
        if result in _NON_FINITE:
            raise self.error(f"the value of {_source(node)} is undefined or infinite")
        if isinstance(result, sympy.Expr) and not result.free_symbols:
            value = estimate
            if value is None:
                value = self._values.get(result)
            if value is None:
                value = self.value(result) if result.is_Rational else self._evaluate(result, node)
            if value is None or not math.isfinite(value) or abs(value) > MAX_VALUE:
                raise self._too_large(node)
            self._values[result] = value
        self.audit(node, result)
        return result

    def audit(self, node: ast.AST, result: sympy.Basic) -> None:
        """Bound the parts of ``result`` that SymPy created in this step.

        SymPy rewrites as it builds (``where(c, a, b)**46`` raises both branches,
        ``(x**40)**2`` merges exponents), so the parts of a non-constant result are checked
        too: rationals of at most ``MAX_NUMBER_BITS`` bits, rational exponents of at most
        ``MAX_EXPONENT`` and constant subexpressions within ``MAX_VALUE``. Parts seen
        before are skipped, so each part is checked once.
        """
        stack: list[tuple[sympy.Basic, bool]] = [(result, True)]
        while stack:
            expr, maximal = stack.pop()
            if (expr, maximal) in self._seen:
                continue
            self._seen.add((expr, maximal))
            if expr.is_Rational:
                if max(abs(expr.p), expr.q).bit_length() > MAX_NUMBER_BITS:
                    raise self.error(f"a number in {_source(node)} is too large (over 1e300)")
                continue
            size = self.value(expr.exp) if expr.is_Pow else None
            if size is not None and abs(size) > MAX_EXPONENT:
                raise self.error(
                    f"{_source(node)} has the exponent {_short(expr.exp)} (at most "
                    f"{MAX_EXPONENT} in absolute value)"
                )
            if maximal and isinstance(expr, sympy.Expr) and not expr.is_Atom:
                if not expr.free_symbols:  # a maximal constant subexpression
                    maximal = False
                    if expr not in self._values:
                        value = self._evaluate(expr, None)
                        if not math.isfinite(value) or abs(value) > MAX_VALUE:
                            raise self._too_large(None, expr)
                        self._values[expr] = value
            stack.extend((arg, maximal) for arg in expr.args)

    def _evaluate(self, expr: sympy.Expr, node: ast.AST | None) -> float:
        try:
            value = complex(expr.evalf(15))
        except OverflowError:
            raise self._too_large(node, expr) from None
        except (TypeError, ValueError, ArithmeticError):
            raise self.error(f"the value of {_source(node, expr)} is undefined") from None
        if abs(value.imag) > 1e-12 * max(1.0, abs(value.real)):
            raise self.error(f"the value of {_source(node, expr)} is not a real number")
        return value.real

    def _too_large(self, node: ast.AST | None, expr: object = "") -> SymgradError:
        return self.error(
            f"the value of {_source(node, expr)} is too large (constants must stay within 1e300)"
        )

    # --- leaves

    def visit_Constant(self, node: ast.Constant) -> sympy.Basic:
        value = node.value
        if isinstance(value, int) and not isinstance(value, bool):
            return sympy.Integer(value)
        if isinstance(value, float):
            return _exact(value)
        raise self.error(f"{_short(repr(value))} is not allowed")

    def visit_Name(self, node: ast.Name) -> sympy.Basic:
        return self.remember(node, self.lookup(node.id), None)

    def visit_Attribute(self, node: ast.Attribute) -> sympy.Basic:
        if _is_numpy_attribute(node) and node.attr in self.constants:
            return self.remember(node, self.constants[node.attr], None)
        if _is_numpy_attribute(node) and node.attr in self.functions:
            label = f"{node.value.id}.{node.attr}"  # type: ignore[attr-defined]
            raise self.error(f"'{label}' is a function; call it like {label}(x)")
        raise self.error("attribute access is not allowed")

    def lookup(self, name: str) -> sympy.Basic:
        """A user name (first) or a constant; a clear error otherwise."""
        if name in self.names:
            return self.names[name]
        if name in self.constants:
            return self.constants[name]
        if name in self.functions:
            raise self.error(f"'{name}' is a function; call it like {name}(x)")
        allowed = [*self.names, *(c for c in self.constants if c not in self.names)]
        close = difflib.get_close_matches(name, allowed, n=1)
        if close:
            raise self.error(f"unknown name '{name}' (did you mean '{close[0]}'?)")
        raise self.error(f"unknown name '{name}' (allowed: {', '.join(allowed)})")

    # --- operators

    def visit_UnaryOp(self, node: ast.UnaryOp) -> sympy.Basic:
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.UAdd):
            return operand
        estimate = self.estimate(node, operator.neg, [operand])
        return self.remember(node, -operand, estimate)

    def visit_BinOp(self, node: ast.BinOp) -> sympy.Basic:
        # Walk the left spine of a same-group chain iteratively: long sums stay cheap.
        chain = [node]
        while _same_group(chain[-1], chain[-1].left):
            chain.append(chain[-1].left)  # type: ignore[arg-type]
        result = self.visit(chain[-1].left)
        for link in reversed(chain):
            right = self.visit(link.right)
            estimate = self.estimate(link, _FLOAT_OPERATORS.get(type(link.op)), [result, right])
            result = self.remember(link, self.binary(link.op, result, right), estimate)
        return result

    def binary(self, op: ast.operator, left: sympy.Basic, right: sympy.Basic) -> sympy.Basic:
        """``left op right`` for the scalar operators."""
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            return left * right
        if isinstance(op, ast.Div):
            if right == 0:
                raise self.error("division by zero")
            return left / right
        if isinstance(op, ast.Pow):
            return self.power(left, right)
        raise self.error(f"operator '{_OPERATORS.get(type(op), '?')}' is not allowed here")

    def power(self, base: sympy.Basic, exponent: sympy.Basic) -> sympy.Basic:
        """``base ** exponent``; numeric exponents and exact numeric results are bounded."""
        size = self.value(exponent)
        if base != sympy.E and size is not None and abs(size) > MAX_EXPONENT:
            raise self.error(
                f"exponent {_short(exponent)} is too large (at most {MAX_EXPONENT} "
                "in absolute value)"
            )
        if exponent.is_Rational:
            if base.is_Rational and base == 0 and exponent < 0:
                raise self.error("division by zero (0 to a negative power)")
            if base.is_Rational and base < 0 and not exponent.is_Integer:
                raise self.error(
                    "negative number to a fractional power is not real: "
                    + _power_text(base, exponent)
                )
            if base.is_Rational and base != 0:
                if abs(float(exponent) * _log10(base)) > MAX_CONST_LOG10:
                    raise self.error(
                        f"number {_power_text(base, exponent)} is out of range "
                        f"(beyond 1e{MAX_CONST_LOG10} or 1e-{MAX_CONST_LOG10})"
                    )
        self.check_root(base, exponent)
        if base == sympy.E:
            self.check_exponential(exponent, f"e**({_short(exponent, 30)})")
        return base**exponent

    def check_exponential(self, arg: sympy.Basic, text: str) -> None:
        """Refuse ``exp`` arguments that SymPy turns into huge exact powers.

        ``exp(x + k*log(c))`` becomes ``c**k * exp(x)`` (``3**999999999999``), so the
        constant part of each term must stay within ``MAX_EXP_ARGUMENT``; likewise
        ``exp(k*log(u))`` becomes ``u**k``, so ``k`` must stay within ``MAX_EXPONENT``.
        """
        for term in sympy.Add.make_args(arg):
            value = self.value(term)
            if value is not None and abs(value) > MAX_EXP_ARGUMENT:
                raise self.error(
                    f"{text} is out of range (the constant part of the exponent must be at "
                    f"most {MAX_EXP_ARGUMENT} in absolute value)"
                )
            logs = [f for f in sympy.Mul.make_args(term) if isinstance(f, sympy.log)]
            rest = [f for f in sympy.Mul.make_args(term) if not isinstance(f, sympy.log)]
            scale = [self.value(f) for f in rest]
            if value is None and len(logs) == 1 and None not in scale:
                if abs(math.prod(scale)) > MAX_EXPONENT:  # type: ignore[arg-type]
                    raise self.error(
                        f"{text} is out of range (exp(k*log(u)) is u**k, and k must be at "
                        f"most {MAX_EXPONENT} in absolute value)"
                    )
                self.check_root(logs[0].args[0], sympy.Mul(*rest))

    def check_root(self, base: sympy.Basic, exponent: sympy.Basic) -> None:
        """Refuse fractional powers of numbers that SymPy would factor at great cost.

        SymPy splits ``(c*x)**(p/q)`` into ``c**(p/q) * x**(p/q)`` (also through Piecewise
        branches and powers), merges powers of one number (``c**(1/5) * c**(1/7) =
        c**(12/35)``) and factors integers of about ``q * log2(c)`` bits, which takes
        minutes past a few thousand bits. So numbers under a fractional power must be
        small and the denominators must divide 12 (a set closed under merging).
        """
        fractions = [r for r in _rationals(exponent) if not r.is_Integer]
        if not fractions:
            return
        numbers: list[sympy.Rational] = []
        parts = [base]  # where SymPy looks for numbers: factors, powers, Piecewise branches
        while parts:
            part = parts.pop()
            if part.is_Mul:
                parts.extend(part.args)
            elif isinstance(part, sympy.Piecewise):
                parts.extend(branch.expr for branch in part.args)
            elif part.is_Pow and part.exp.is_Rational:
                parts.append(part.base)
                fractions.append(part.exp)
            elif part.is_Rational and (abs(part.p) > 1 or part.q > 1):
                numbers.append(part)
        too_big = any(max(abs(n.p), n.q) > MAX_ROOT_BASE for n in numbers)
        if numbers and (too_big or any(r.is_Rational and 12 % r.q for r in fractions)):
            raise self.error(
                f"unsupported power ({_short(base, 30)})**({_short(exponent, 30)}): a number "
                "under a fractional power must be below 1e18 and the denominator must divide 12"
            )

    def visit_Compare(self, node: ast.Compare) -> sympy.Basic:
        """A comparison used as a number: the Iverson bracket (see :func:`_iverson`)."""
        relation = self.condition(node)
        if relation.has(sympy.Piecewise):  # as in a where() condition: unbounded folding
            raise self.error(
                f"the comparison {_source(node)} cannot contain where(), relu(), heaviside() "
                "or a comparison; rewrite it without nesting them"
            )
        return self.remember(node, _iverson(relation), None)

    def condition(self, node: ast.Compare) -> sympy.Basic:
        """The relation ``a < b`` (…) itself: the first argument of ``where``."""
        if _clock() > self._end:
            raise _OutOfTime
        left, right = self.visit(node.left), self.visit(node.comparators[0])
        relation = _COMPARISONS.get(type(node.ops[0]))
        if relation is None:
            raise self.error(f"comparison '{_OPERATORS[type(node.ops[0])]}' is not allowed")
        try:
            return relation(left, right)
        except (TypeError, ValueError) as exc:
            raise self.error(f"invalid comparison: {_first_line(exc)}") from None

    # --- calls

    def visit_Call(self, node: ast.Call) -> sympy.Basic:
        func = node.func
        if isinstance(func, ast.Name):
            name = label = func.id
        elif _is_numpy_attribute(func):
            name, label = func.attr, f"{func.value.id}.{func.attr}"  # type: ignore[attr-defined]
        else:
            raise self.error("only named functions can be called, e.g. exp(x)")
        if node.keywords:
            raise self.error(f"keyword argument '{node.keywords[0].arg}=' is not allowed")
        if name not in self.functions:
            raise self.unknown_function(name, label)
        arity = self.functions[name][0]
        if len(node.args) != arity:
            plural = "" if arity == 1 else "s"
            raise self.error(f"'{label}' takes {arity} argument{plural}, got {len(node.args)}")
        if name == "where" and not isinstance(node.args[0], ast.Compare):
            raise self.error(
                f"the first argument of {label}() must be a comparison, e.g. {label}(x > 0, x, 0)"
            )
        args = [self.condition(arg) if name == "where" and i == 0 else self.visit(arg)
                for i, arg in enumerate(node.args)]  # type: ignore[arg-type]
        if name in _CONDITIONAL and args[0].has(sympy.Piecewise):
            # SymPy folds a Piecewise inside a condition into every branch combination,
            # with unbounded cost (it has taken minutes on 200-character inputs).
            raise self.error(
                f"the {'condition' if name == 'where' else 'argument'} of {label}() cannot "
                "contain where(), relu(), heaviside() or a comparison; rewrite it without "
                "nesting them"
            )
        estimate = self.estimate(node, self.float_functions.get(name), args)
        return self.remember(node, self.call(name, label, args), estimate)

    def call(self, name: str, label: str, args: list[sympy.Basic]) -> sympy.Basic:
        """Apply table function ``name`` (written as ``label``) to built arguments."""
        if name == "sqrt":
            self.check_root(args[0], sympy.S.Half)
        if name in _EXP_FUNCTIONS:
            self.check_exponential(args[0], f"{label}({_short(args[0], 30)})")
        try:
            return self.functions[name][1](*args)
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise self.error(f"invalid argument for '{label}': {_first_line(exc)}") from None

    def unknown_function(self, name: str, label: str) -> SymgradError:
        if name in self.names or name in self.constants:
            return self.error(f"'{label}' is not a function")
        prefix = label[: len(label) - len(name)]
        if name in _FUNCTION_HINTS:
            return self.error(f"unknown function '{label}' ({_FUNCTION_HINTS[name]})")
        close = difflib.get_close_matches(name, list(self.functions), n=1)
        if close:
            return self.error(f"unknown function '{label}' (did you mean '{prefix}{close[0]}'?)")
        return self.error(
            f"function '{label}' is not allowed (allowed: {', '.join(self.functions)})"
        )


def parse_scalar(text: str, names: Mapping[str, sympy.Basic], *, where: str) -> sympy.Expr:
    """Parse a scalar expression over ``names`` (plus ``pi``, ``e``) into SymPy.

    ``names`` maps the allowed user names to the caller's SymPy symbols (they are used
    as given; no symbols are created). Float literals become exact rationals of their
    decimal form (``0.1`` -> ``1/10``). ``where(cond, a, b)`` becomes
    ``Piecewise((a, cond), (b, True))``. Raises :class:`SymgradError` for any bad input.
    """
    return ScalarBuilder(names, where=where).build(validate(text, where=where))
