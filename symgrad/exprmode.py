"""Expression mode: matrix calculus for any scalar-valued expression (``--expr``).

    symgrad derive   --expr "sum(log(1 + exp(-y * (X @ w)))) / N" \\
                     --shape X=N,d --shape w=d,1 --shape y=N,1 --wrt w
    symgrad generate --expr … --shape … --wrt … -o f.py
    symgrad verify   --expr … --shape … --wrt w "-X.T @ (y * sigmoid(-y * (X @ w))) / N"

The flow is the network's, one way:

* **parse** — the safe parser (:func:`symgrad.expr.validate`, never ``eval``) and the
  hand-formula builder of :mod:`symgrad.verify` (:class:`~symgrad.verify.FormulaBuilder`,
  numpy's shape rules on symbolic sizes), extended by :class:`ExprBuilder` with
  ``trace``, ``norm``, ``logsumexp`` and the activation library;
* **graph** — one assignment ``f = EXPR`` (:meth:`symgrad.graph.Graph.of`), the
  ``--wrt`` names as parameters and every other name as data;
* **derivation** — the same reverse sweep (:func:`symgrad.derive.derive_graph`) over the
  ops' vector-Jacobian rules (:mod:`symgrad.ops`);
* **simplification** — :func:`simplify` rewrites the swept gradient toward the form a
  person writes: scalar factors pulled out, equal terms merged, common matrix factors
  factored (AᵀW + AW → (A + Aᵀ)W), elementwise bodies tidied by SymPy
  (eᵘ/(1 + eᵘ) → σ(u));
* **printing / lowering** — the printers of :mod:`symgrad.printing` and the numpy
  printer of :mod:`symgrad.verify`, then ``templates/expr_module.py.jinja``.

Shapes are given as ``NAME=R,C`` with sizes that are whole numbers or size symbols
(``N``, ``d``); a size symbol is also a scalar constant of the expression.  A name of
shape ``1,1`` that is not differentiated is a scalar symbol (``lam``, ``sigma``).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import keyword
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np
import sympy as sp

from symgrad import budget, naming
from symgrad.activations import ACTIVATIONS, expand_named, fold, sigmoid, softplus
from symgrad.budget import EXHAUSTED, deadline
from symgrad.codegen import lowerable
from symgrad.derive import Derivation, derive_graph, walk
from symgrad.errors import SymgradError
from symgrad.expr import EXPR_METHODS
from symgrad.graph import Assignment, Graph
from symgrad.ops import (
    Add,
    Broadcast,
    ColSum,
    Const,
    Exp,
    Eye,
    Hadamard,
    LogSumExp,
    Map,
    MatMul,
    MatPow,
    N,
    Node,
    Ones,
    RowSum,
    Scale,
    Softmax,
    SqNorm,
    Sub,
    Sym,
    Trace,
    Transpose,
)
from symgrad.ops.linalg import (
    Det,
    Inverse,
    LogDet,
    Solve,
    condition,
    degenerate,
    inverse_product,
    invertible_names,
    with_solves,
)
from symgrad.ops.reductions import ArgMask, Extremum, Norm
from symgrad.ops.structure import DiagMatrix, DiagPart, Kron, KronFactor
from symgrad.printing import (
    ATOM,
    HADAMARD,
    MATMUL,
    LatexPrinter,
    LatexScalarPrinter,
    TextPrinter,
    TextScalarPrinter,
)
from symgrad.verify import (
    _FUNCTION_NAMES,
    _NUMPY_NAMES,
    FormulaBuilder,
    NumpyPrinter,
    Term,
    _internal,
    _shape_text,
    _ShapeError,
    _src,
    _transpose,
)
from symgrad.verify import _MATRIX_FUNCTIONS as MATRIX_FUNCTIONS
from symgrad.verify import ADD as NP_ADD
from symgrad.verify import MUL as NP_MUL
from symgrad.verify import POW as NP_POW
from symgrad.verify import UNARY as NP_UNARY

__all__ = [
    "ExprProblem", "ExprDerivation", "parse_problem", "derive_expr", "simplify",
    "generate_expr", "verify_expr", "ExprBuilder", "Assumptions",
]

WHERE = "expr"
MAX_NAMES = 32
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED = {"np", "numpy", "value", "grad", "check", "value_and_grad", "main",
             "random_arguments", "sigmoid", "softplus", "softmax", "logsumexp", "erf"}
_CONSTANTS = {  # names the expression language gives a value
    "e": "'e' is Euler's number (2.718…) in expressions, so it cannot name an array or a size; "
         "choose another name (e.g. err)",
    "pi": "'pi' is π (3.14159…) in expressions, so it cannot name an array or a size; "
          "choose another name",
    "I": "'I' is the identity matrix in the printed gradients, so an array named I would "
         "read as the identity; choose another name (e.g. M)",
}
_COEF_NAMES = {"lam": "λ", "lambda_": "λ", "lmbda": "λ", "sigma": "σ", "mu": "μ", "alpha": "α",
               "beta": "β", "gamma": "γ", "delta": "δ", "tau": "τ", "eta": "η", "rho": "ρ"}


# --------------------------------------------------------------------------
# The problem: names, shapes, the parsed expression
# --------------------------------------------------------------------------


MAX_ENTRIES = 10**7  #: concrete entries of one array (80 MB in float64)


def _entries(shape) -> int:
    """The entries of a shape, counting a size symbol as 1 (its size is not known)."""
    return int(np.prod([int(d) if d.is_Integer else 1 for d in shape], dtype=object))


def _size_symbol(name: str) -> sp.Symbol:
    return N if name == "N" else sp.Symbol(name, positive=True, integer=True)


def parse_shapes(items: Sequence[str]) -> dict[str, tuple[sp.Expr, sp.Expr]]:
    """``["X=N,d", "w=d,1"]`` → {"X": (N, d), "w": (d, 1)} (sizes: integers or symbols)."""
    shapes: dict[str, tuple[sp.Expr, sp.Expr]] = {}
    for item in items:
        where = f"--shape {item}"
        name, eq, dims = item.partition("=")
        name = name.strip()
        if not eq or not _NAME.match(name) or keyword.iskeyword(name):
            raise SymgradError(where, "expected NAME=ROWS,COLS, e.g. X=N,d or w=d,1")
        if name in _CONSTANTS:
            raise SymgradError(where, _CONSTANTS[name])
        if name in _RESERVED:
            raise SymgradError(where, f"'{name}' is reserved (a name of the generated module); "
                               "choose another name")
        parts = [p.strip() for p in dims.split(",")]
        if len(parts) == 1 and parts[0]:
            parts.append("1")  # a column vector
        if len(parts) != 2 or not all(parts):
            raise SymgradError(where, "a shape has two sizes, ROWS,COLS (e.g. d,1 for a column)")
        out = []
        for p in parts:
            if p.isdigit():
                if not 1 <= int(p) <= 10**6:
                    raise SymgradError(where, f"size {p} must be between 1 and 1000000")
                out.append(sp.Integer(int(p)))
            elif p in _CONSTANTS:
                raise SymgradError(where, _CONSTANTS[p])
            elif _NAME.match(p) and not keyword.iskeyword(p) and p not in _RESERVED:
                out.append(_size_symbol(p))
            else:
                raise SymgradError(where, f"size '{p}' must be a whole number or a name like N or d")
        if name in shapes:
            raise SymgradError(where, f"'{name}' has two shapes")
        if _entries(out) > MAX_ENTRIES:
            raise SymgradError(where, f"{_entries(out):.3g} entries is too large for concrete sizes "
                               f"(at most {MAX_ENTRIES:.0e}); name a size instead (e.g. "
                               f"{name}=N,{parts[1] if not parts[1].isdigit() else 'd'}): the "
                               "formulas hold for any size")
        shapes[name] = (out[0], out[1])
    if len(shapes) > MAX_NAMES:
        raise SymgradError("--shape", f"at most {MAX_NAMES} names")
    for name in shapes:
        if any(name == str(s) for sh in shapes.values() for s in sh if s.is_Symbol):
            raise SymgradError(f"--shape {name}", f"'{name}' is both an array and a size; rename one")
    return shapes


@dataclass
class Space:
    """The names an expression may use (what :class:`FormulaBuilder` asks of a network)."""

    shapes: dict[str, tuple[sp.Expr, sp.Expr]]
    wrt: tuple[str, ...]
    matrices: dict[str, tuple[Sym, tuple]] = field(default_factory=dict)
    scalars: dict[str, sp.Basic] = field(default_factory=dict)
    derived: dict = field(default_factory=dict)  # a network's P1 = im2col(X, 1): none here

    def __post_init__(self) -> None:
        for name, shape in self.shapes.items():
            if shape == (1, 1) and name not in self.wrt:
                self.scalars[name] = sp.Symbol(name, real=True)
            else:
                role = "param" if name in self.wrt else "data"
                self.matrices[name] = (Sym(name, shape, role), shape)
        for shape in self.shapes.values():
            for s in shape:
                if s.is_Symbol:
                    self.scalars[str(s)] = s

    def unknown(self, name: str) -> str:
        known = [*self.matrices, *self.scalars]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        listed = ", ".join(f"{k} ({_shape_text(v[1])})" for k, v in self.matrices.items())
        sizes = ", ".join(self.scalars) or "none"
        return (f"unknown name '{name}'{hint}; give its shape with --shape {name}=ROWS,COLS "
                f"(arrays: {listed or 'none'}; scalars and sizes: {sizes})")


def _huber(r: sp.Expr) -> sp.Expr:
    """h(r) = r²/2 for |r| ≤ 1, else |r| − 1/2 (δ = 1, as the network loss)."""
    return sp.Piecewise((r**2 / 2, sp.Abs(r) <= 1), (sp.Abs(r) - sp.Rational(1, 2), True))


def _activation(name: str):
    expr = ACTIVATIONS[name].expr
    from symgrad.activations import X as X_SYM

    return lambda a: expr.xreplace({X_SYM: a})


_ACTIVATION_FUNCTIONS = {
    name: (1, _activation(name)) for name, act in ACTIVATIONS.items()
    if act.expr is not None and name not in ("identity",)
}
EXPR_FUNCTIONS = MappingProxyType({
    **FormulaBuilder.functions, **_ACTIVATION_FUNCTIONS,
    "sigmoid": (1, sigmoid), "softplus": (1, softplus), "huber": (1, _huber),
})
MATRIX_EXTRAS = ("trace", "norm", "logsumexp", "softmax", "eye")
LINALG = ("inv", "det", "logdet", "solve", "slogdet")  # also as np.linalg.NAME


class ExprBuilder(FormulaBuilder):
    """:class:`FormulaBuilder` plus ``trace(A)``, ``norm(A)`` (Frobenius),
    ``logsumexp(A, axis=1)`` (row-wise) / ``logsumexp(A)`` (over all entries) and the
    activation library as elementwise functions; and (:meth:`vocab_call`) ``diag(v)`` (a
    vector → its diagonal matrix; also ``diagflat``), ``diag(A)`` (A square → its diagonal,
    1-D as ``np.diag``), ``kron(A, B)``, ``norm(x, 1)`` / ``norm(x, 2)`` (vectors),
    ``norm(X, "fro")``, ``max``/``min`` over all entries or ``axis=0|1`` (``keepdims``),
    ``softmax(X, axis=0|1)``, ``logsumexp(X, axis=0)`` and ``expand_dims(v, 0|1)``, with
    numpy's meanings and shapes.  ``e`` and ``pi`` are Euler's number and π."""

    functions = EXPR_FUNCTIONS

    def visit_Call(self, node: ast.Call):
        spelled, node = node, _numpy_spelling(node)
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if name in NUMPY_FORMS:
            return getattr(self, NUMPY_FORMS[name])(node, _src(spelled))
        if name in ("ones", "zeros") and len(node.args) == 1 and isinstance(
                node.args[0], ast.Tuple):
            return self.filled(name, node, _src(spelled))
        if name in VOCABULARY or _vocabulary_form(name, node):
            return self.vocab_call(name, node)
        if name in MATRIX_EXTRAS:
            return self.extra_call(name, node)
        if name in LINALG or (name == "log" and len(node.args) == 1 and _is_det(
                _unabs(node.args[0]))):
            return self.linalg_call(name, node)
        if name and name not in self.functions and name not in MATRIX_FUNCTIONS:
            error = self.unknown_function(name, name)
            raise self.error(f"{error.what} in {_src(node)}")
        return super().visit_Call(node)

    # --- the numpy spellings symgrad's own numpy lines use (read back by verify --expr)

    def visit_Compare(self, node: ast.Compare):
        self._no_equality(node)
        return super().visit_Compare(node)

    def condition(self, node: ast.Compare):
        self._no_equality(node)
        return super().condition(node)

    def _no_equality(self, node: ast.Compare) -> None:
        if isinstance(node.ops[0], ast.Eq):
            raise self.error(f"{_src(node)}: '==' is read only in the one-hot form of an "
                             "arg-max, np.where(np.arange(n)[:, None] == np.argmax(X, axis=0), "
                             "1.0, 0.0); elsewhere use <, <=, > or >=")

    def _size_of(self, node: ast.expr, text: str) -> sp.Expr:
        value = self.visit(node)
        if isinstance(value, Term) or not isinstance(value, sp.Expr):
            raise self.error(f"{text}: {_src(node)} is not a size")
        return value

    def _matrix(self, node: ast.expr, text: str, what: str) -> Term:
        x = self.visit(node)
        if not isinstance(x, Term) or len(x.shape) != 2:
            raise self.shape_error(f"{text}: {what} needs a 2-D array, got "
                                   f"{x if not isinstance(x, Term) else _shape_text(x.shape)}")
        return x

    def onehot(self, node: ast.Call, text: str) -> Term:
        """np.where(POSITIONS == np.argmax(X, …), 1.0, 0.0): the one-hot of the first
        arg-max (or arg-min) of X's columns (POSITIONS np.arange(rows)[:, None], axis=0),
        rows (np.arange(cols), axis=1, keepdims=True) or entries (np.arange(rows * cols)
        .reshape(rows, cols), no axis) — what the gradient of max(X, …) prints."""
        usage = (f"{text}: '==' is read only in the one-hot form of an arg-max, "
                 "np.where(np.arange(n)[:, None] == np.argmax(X, axis=0), 1.0, 0.0)")
        if len(node.args) != 3 or node.keywords:
            raise self.error(usage)
        test, yes, no = node.args
        assert isinstance(test, ast.Compare)
        left, right = test.left, test.comparators[0]
        if not (all(isinstance(a, ast.Constant) and type(a.value) in (int, float)
                    for a in (yes, no)) and (yes.value, no.value) == (1, 0)):  # type: ignore[union-attr]
            raise self.error(usage)
        if not (isinstance(right, ast.Call) and _numpy_name(right.func) in ("argmax", "argmin")
                and len(right.args) == 1):
            raise self.error(usage)
        kw = {k.arg: k.value.value for k in right.keywords}  # type: ignore[attr-defined]
        axis, keep = kw.get("axis"), bool(kw.get("keepdims", False))
        x = self._matrix(right.args[0], text, "argmax")
        r, c = x.shape
        if axis == 0 and isinstance(left, ast.Subscript):
            count, want = left.value, r  # np.arange(r)[:, None]
        elif axis == 1 and keep:
            count, want = left, c  # np.arange(c)
        elif axis is None and isinstance(left, ast.Call) and isinstance(
                left.func, ast.Attribute) and left.func.attr == "reshape":
            dims = [self._size_of(a, text) for a in left.args]
            if [sp.expand(d) for d in dims] != [sp.expand(r), sp.expand(c)]:
                raise self.shape_error(f"{text}: the positions must be reshaped to X's shape")
            count, want = left.func.value, r * c
        else:
            raise self.error(usage)
        if not (isinstance(count, ast.Call) and _numpy_name(count.func) == "arange"
                and len(count.args) == 1 and not count.keywords):
            raise self.error(usage)
        if sp.expand(self._size_of(count.args[0], text) - want) != 0:
            raise self.shape_error(f"{text}: np.arange must count the positions along the "
                                   f"axis ({_shape_text((want,))})")
        kind = "max" if _numpy_name(right.func) == "argmax" else "min"
        return Term(ArgMask(x.node, axis, kind), x.shape, text)

    def einsum(self, node: ast.Call, text: str) -> Term:
        """np.einsum("ipjq,pq->ij", G.reshape(m, p, n, q), B) (∂L/∂A of A ⊗ B: each p×q
        block of G against B) and np.einsum("ipjq,ij->pq", G.reshape(m, p, n, q), A)
        (∂L/∂B: the blocks weighted by A's entries) — the two forms symgrad prints."""
        spec = node.args[0].value if node.args else None  # type: ignore[attr-defined]
        if spec not in _KRON_SPECS or len(node.args) != 3 or node.keywords:
            raise self.error(f"{text}: einsum is read in the two block forms of a Kronecker "
                             'gradient, np.einsum("ipjq,pq->ij", G.reshape(m, p, n, q), B) '
                             'and np.einsum("ipjq,ij->pq", G.reshape(m, p, n, q), A)')
        blocks = node.args[1]
        if not (isinstance(blocks, ast.Call) and isinstance(blocks.func, ast.Attribute)
                and blocks.func.attr == "reshape" and len(blocks.args) == 4):
            raise self.error(f"{text}: einsum's first operand is G.reshape(m, p, n, q)")
        g = self._matrix(blocks.func.value, text, "einsum")
        m, p, n, q = (self._size_of(a, text) for a in blocks.args)
        other = self._matrix(node.args[2], text, "einsum")
        left = spec == _KRON_SPECS[0]
        fits = [sp.expand(u - v) == 0 for u, v in zip(
            (*g.shape, *other.shape), (m * p, n * q, *((p, q) if left else (m, n))), strict=True)]
        if not all(fits):
            raise self.shape_error(f"{text}: G ({_shape_text(g.shape)}) and "
                                   f"{_shape_text(other.shape)} do not fit the blocks")
        return Term(KronFactor(g.node, other.node, left), (m, n) if left else (p, q), text)

    def matrix_power(self, node: ast.Call, text: str) -> Term:
        """np.linalg.matrix_power(A, k) for a whole number 0 ≤ k ≤ 64 (A square)."""
        k = node.args[1] if len(node.args) == 2 else None
        if node.keywords or not (isinstance(k, ast.Constant) and type(k.value) is int
                                 and 0 <= k.value <= 64):
            raise self.error(f"{text}: matrix_power takes a square matrix and a whole "
                             "number 0 … 64")
        x = self._matrix(node.args[0], text, "matrix_power")
        if x.shape[0] != x.shape[1]:
            raise self.shape_error(f"{text}: matrix_power needs a square matrix, got "
                                   f"{_shape_text(x.shape)}")
        power = Eye(x.shape[0]) if k.value == 0 else x.node if k.value == 1 else MatPow(
            x.node, k.value)
        return Term(power, x.shape, text)

    def broadcast_to(self, node: ast.Call, text: str) -> Term:
        """np.broadcast_to(v, (r, c)): a row, column or scalar spread to r×c (the form a
        spread operand prints)."""
        shape = node.args[1] if len(node.args) == 2 else None
        if node.keywords or not (isinstance(shape, ast.Tuple) and len(shape.elts) == 2):
            raise self.error(f"{text}: broadcast_to takes an array and its shape (rows, cols)")
        r, c = (self._size_of(a, text) for a in shape.elts)
        x = self.visit(node.args[0])
        if not isinstance(x, Term):
            return Term(Broadcast(Const(sp.sympify(x)), (r, c)), (r, c), text)
        xr, xc = _internal(x.shape)
        if not all(sp.expand(u - v) == 0 or u == 1 for u, v in ((xr, r), (xc, c))):
            raise self.shape_error(f"{text}: {_shape_text(x.shape)} cannot be broadcast to "
                                   f"{_shape_text((r, c))}")
        node_ = x.node if tuple(x.node.shape) == (xr, xc) else _transpose(x.node)
        return Term(node_ if (xr, xc) == (r, c) else Broadcast(node_, (r, c)), (r, c), text)

    def filled(self, name: str, node: ast.Call, text: str) -> Term:
        """np.ones((r, c)) / np.zeros((r, c)): an r×c array of ones (zeros)."""
        shape = node.args[0]
        if node.keywords or len(shape.elts) != 2:  # type: ignore[attr-defined]
            raise self.error(f"{text}: {name} takes the shape (rows, cols) of a matrix")
        r, c = (self._size_of(a, text) for a in shape.elts)  # type: ignore[attr-defined]
        ones = Ones((r, c))
        return Term(ones if name == "ones" else Scale(sp.Integer(0), ones), (r, c), text)

    def refused_form(self, node: ast.Call, text: str) -> Term:
        name = _numpy_name(node.func) or getattr(node.func, "id", "")
        raise self.error(f"{text}: {name} is read only inside the forms symgrad prints "
                         "(np.arange in a one-hot, .reshape as einsum's operand)")

    def unknown_function(self, name: str, label: str) -> SymgradError:
        known = [*self.functions, *MATRIX_EXTRAS, *LINALG[:4], *VOCABULARY, "sum", "mean"]
        close = difflib.get_close_matches(name, known, n=1)
        if name in self.net.matrices or name in self.names:
            return self.error(f"'{label}' is not a function")
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return self.error(f"unknown function '{label}'{hint}")

    def linalg_call(self, name: str, node: ast.Call):
        """inv(A), det(A), logdet(A) (and log(det(A))), solve(A, B), also spelled
        np.linalg.inv, …: the ops of :mod:`symgrad.ops.linalg`, A square."""
        text, func = _src(node), node.func
        if isinstance(func, ast.Attribute) and name != "log" and not _is_linalg(func):
            raise self.error(f"{text}: write {name}(…) or np.linalg.{name}(…)")
        if name == "slogdet":
            raise self.error(f"{text}: slogdet returns a pair (sign, log |det|), not an "
                             "expression; write logdet(A) (or log(det(A)))")
        if node.keywords:
            raise self.error(f"{text}: '{name}' takes no keyword arguments")
        want = 2 if name == "solve" else 1
        if len(node.args) != want:
            raise self.error(f"{text}: '{name}' takes {want} array argument{'s' * (want > 1)}")
        if name == "log":  # log(det(A)) is log det(A), with its own rule A⁻ᵀ
            name, node = "logdet", _unabs(node.args[0])  # type: ignore[assignment]
        args = [self.visit(a) for a in node.args]  # type: ignore[attr-defined]
        for x in args:
            if not isinstance(x, Term) or len(x.shape) != 2:
                raise self.shape_error(f"{text}: '{name}' needs 2-D arrays, got "
                                       f"{x if not isinstance(x, Term) else _shape_text(x.shape)}")
        a = args[0]
        if a.shape[0] != a.shape[1]:
            raise self.shape_error(f"{text}: {name} needs a square matrix, got {_shape_text(a.shape)}")
        if name == "solve":
            b = args[1]
            if b.shape[0] != a.shape[0]:
                raise self.shape_error(f"{text}: solve(A, B) needs as many rows in B as A has, "
                                       f"got {_shape_text(a.shape)} and {_shape_text(b.shape)}")
            return Term(Solve(a.node, b.node), b.shape, text)
        if name == "inv":
            return Term(Inverse(a.node), a.shape, text)
        return Term((Det if name == "det" else LogDet)(a.node), (), text)

    def extra_call(self, name: str, node: ast.Call):
        text = _src(node)
        kw = {k.arg: k.value.value for k in node.keywords}
        if len(node.args) != 1:
            raise self.error(f"{text}: '{name}' takes one array argument")
        if kw and name != "logsumexp":
            raise self.error(f"{text}: '{name}' takes no keyword arguments")
        x = self.visit(node.args[0])
        if name == "eye":  # the identity, as the numpy line writes ∂ tr(X)
            if isinstance(x, Term) or not (x.is_Symbol and x in self.net.scalars.values()
                                           or x.is_Integer and 1 <= x <= 10**6):
                raise self.error(f"{text}: eye takes a size (a size name or a whole number)")
            return Term(Eye(sp.Integer(x) if x.is_Integer else x), (x, x), text)
        if not isinstance(x, Term):
            raise self.error(f"{text}: '{name}' needs an array, got the scalar {x}")
        shape = _internal(x.shape)
        if name == "trace":
            if len(x.shape) != 2 or x.shape[0] != x.shape[1]:
                raise self.shape_error(f"{text}: trace needs a square matrix, got {_shape_text(x.shape)}")
            return Term(Trace(x.node), (), text)
        if name == "softmax":
            if len(x.shape) != 2:
                raise self.shape_error(f"{text}: softmax is row-wise and needs a matrix")
            return Term(Softmax(x.node), x.shape, text)
        if name == "norm":
            u = sp.Symbol("_e0", real=True)
            return Term(Map(sp.sqrt(u), ((u, SqNorm(x.node)),)), (), text)
        axis, keepdims = kw.get("axis"), bool(kw.get("keepdims", False))
        if axis is None:
            return Term(LogSumExp(x.node, None), (1, 1) if keepdims else (), text)
        if axis != 1 or len(x.shape) != 2:
            raise self.shape_error(f"{text}: logsumexp is row-wise (axis=1) or over all entries")
        lse = LogSumExp(x.node, 1)
        if keepdims:
            return Term(lse, (shape[0], sp.Integer(1)), text)
        return Term(Transpose(lse), (shape[0],), text)


    # --- diag, kron, norm(x, ord), max/min, softmax/logsumexp over columns (ops.structure,
    #     ops.reductions): numpy's meanings and shapes

    def vocab_call(self, name: str, node: ast.Call):
        text = _src(node)
        kw = {k.arg: k.value.value for k in node.keywords}
        axis, keepdims = kw.get("axis"), bool(kw.get("keepdims", False))
        if kw and name not in ("max", "min", "softmax", "logsumexp"):
            raise self.error(f"{text}: '{name}' takes no keyword arguments")
        want = {"kron": 2, "norm": 2, "expand_dims": 2}.get(name, 1)
        if name in ("max", "min") and len(node.args) == 2:
            raise self.error(f"{text}: {name}(X) reduces one array (over all entries or an "
                             f"axis=); for the elementwise {name}imum of two write "
                             f"{name}imum(a, b)")
        if len(node.args) != want:
            raise self.error(f"{text}: '{name}' takes {want} argument{'s' * (want > 1)}")
        if name == "norm":
            return self.norm(node, text)
        args = [self.visit(a) for a in node.args[:1 if name == "expand_dims" else want]]
        for x in args:
            if not isinstance(x, Term):
                raise self.error(f"{text}: '{name}' needs an array, got the scalar {x}")
        x = args[0]
        if name in ("diag", "diagflat"):
            return self.diag(name, x, text)
        if name == "expand_dims":  # np.expand_dims(v, 1): a 1-D vector as a column (or row)
            where = node.args[1]
            if len(x.shape) != 1 or not (isinstance(where, ast.Constant)
                                         and type(where.value) is int and where.value in (0, 1)):
                raise self.error(f"{text}: expand_dims takes a 1-D vector and the axis 0 or 1")
            if where.value == 0:
                return Term(x.node, (sp.Integer(1), x.shape[0]), text)
            return Term(_transpose(x.node), (x.shape[0], sp.Integer(1)), text)
        if name == "kron":
            a, b = args
            if len(a.shape) != 2 or len(b.shape) != 2:
                raise self.shape_error(f"{text}: kron needs 2-D arrays (a vector as n,1 or "
                                       "1,n), as its gradient is written for matrices")
            (m, n), (p, q) = a.shape, b.shape
            return Term(Kron(a.node, b.node), (m * p, n * q), text)
        if name in ("softmax", "logsumexp"):
            return self.along(name, x, axis, keepdims, text)
        return self.extremum(name, x, axis, keepdims, text)

    def diag(self, name: str, x: Term, text: str) -> Term:
        """diag(v) of a vector (n,), n×1 or 1×n: the n×n diagonal matrix (also diagflat(v));
        diag(A) of a square matrix: its diagonal, 1-D (n,) as numpy's np.diag."""
        shape = x.shape
        vector = len(shape) == 1 or (len(shape) == 2 and 1 in (shape[0], shape[1]))
        if vector:
            n = shape[0] if len(shape) == 1 or shape[1] == 1 else shape[1]
            return Term(DiagMatrix(x.node), (n, n), text)
        if name == "diagflat" or shape[0] != shape[1]:
            raise self.shape_error(f"{text}: {name} takes a vector (n,1, 1,n or 1-D), or a "
                                   f"square matrix for its diagonal; got {_shape_text(shape)}")
        return Term(_transpose(DiagPart(x.node)), (shape[0],), text)

    def norm(self, node: ast.Call, text: str) -> Term:
        """norm(x, 1) and norm(x, 2) of a vector, norm(X, "fro") of a matrix (numpy's
        meanings; norm(X) without an order is the Frobenius norm, as before)."""
        order = node.args[1]
        value = order.value if isinstance(order, ast.Constant) else None
        if value not in (1, 2, "fro") or type(value) is float:
            raise self.error(f"{text}: supported orders are norm(x, 1) and norm(x, 2) of a "
                             "vector and norm(X, \"fro\") of a matrix")
        x = self.visit(node.args[0])
        if not isinstance(x, Term):
            raise self.error(f"{text}: 'norm' needs an array, got the scalar {x}")
        shape = x.shape
        vector = len(shape) == 1 or (len(shape) == 2 and 1 in (shape[0], shape[1]))
        if value == "fro" and len(shape) != 2:
            raise self.shape_error(f"{text}: the Frobenius norm is of a 2-D array; for a 1-D "
                                   "vector write norm(x, 2)")
        if value in (1, 2) and not vector:
            what = ("its largest singular value (the spectral norm)" if value == 2 else
                    "its largest column sum of |X|")
            hint = "norm(X, \"fro\")" if value == 2 else "sum(abs(X))"
            raise self.shape_error(f"{text}: norm(X, {value}) of a {_shape_text(shape)} matrix is "
                                   f"{what} in numpy, which symgrad does not differentiate; "
                                   f"write {hint}")
        return Term(Norm(x.node, value), (), text)

    def along(self, name: str, x: Term, axis, keepdims: bool, text: str) -> Term:
        """softmax(X, axis=0|1) and logsumexp(X, axis=0): over the columns as the row-wise
        op of Xᵀ, transposed back."""
        if len(x.shape) == 1:  # a 1-D vector: its one axis
            if axis not in (0, None):
                raise self.shape_error(f"{text}: axis {axis} is out of bounds for a 1-D vector")
            if name == "softmax":
                return Term(Softmax(x.node), x.shape, text)
            return Term(LogSumExp(x.node, None), (1, 1) if keepdims else (), text)
        if axis is None:
            if name == "softmax":
                raise self.shape_error(f"{text}: softmax is over axis=1 (rows, the default) or "
                                       "axis=0 (columns)")
            return Term(LogSumExp(x.node, None), (1, 1) if keepdims else (), text)
        if axis == 1:
            if name == "softmax":
                return Term(Softmax(x.node), x.shape, text)
            lse = LogSumExp(x.node, 1)
            r = x.shape[0]
            return Term(lse, (r, sp.Integer(1)), text) if keepdims else Term(
                Transpose(lse), (r,), text)
        xt = _transpose(x.node)
        if name == "softmax":
            return Term(_transpose(Softmax(xt)), x.shape, text)
        c = x.shape[1]
        row = _transpose(LogSumExp(xt, 1))  # 1×c: one value per column
        return Term(row, (sp.Integer(1), c) if keepdims else (c,), text)

    def extremum(self, name: str, x: Term, axis, keepdims: bool, text: str) -> Term:
        """max/min over all entries (a scalar), down each column (axis=0) or along each
        row (axis=1), with numpy's shapes (1-D, or kept with keepdims=True)."""
        shape = x.shape
        if len(shape) == 1:
            if axis not in (None, 0):
                raise self.shape_error(f"{text}: axis {axis} is out of bounds for a 1-D vector")
            return Term(Extremum(x.node, None, name), (sp.Integer(1),) if keepdims else (), text)
        if axis is None:
            return Term(Extremum(x.node, None, name), (1, 1) if keepdims else (), text)
        ext = Extremum(x.node, axis, name)
        r, c = shape
        if axis == 0:
            return Term(ext, (sp.Integer(1), c) if keepdims else (c,), text)
        return Term(ext, (r, sp.Integer(1)), text) if keepdims else Term(Transpose(ext), (r,), text)


VOCABULARY = ("diag", "diagflat", "expand_dims", "kron", "max", "min")
#: numpy spellings read by their own method of :class:`ExprBuilder`
NUMPY_FORMS = {"_onehot": "onehot", "einsum": "einsum", "broadcast_to": "broadcast_to", "matrix_power": "matrix_power", "arange": "refused_form",
               "reshape": "refused_form"}
_KRON_SPECS = ("ipjq,pq->ij", "ipjq,ij->pq")


def _numpy_name(func: ast.expr) -> str | None:
    """NAME of ``np.NAME`` (or ``numpy.NAME``), else None."""
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (
            func.value.id in ("np", "numpy")):
        return func.attr
    return None


def _numpy_spelling(node: ast.Call) -> ast.Call:
    """A call as the builder reads it: ``X.max(axis=0)`` (numpy's method) is
    ``max(X, axis=0)``, ``np.amax``/``np.amin`` are ``max``/``min``, ``np.where(… == …)`` the
    one-hot, ``G.reshape(…)`` outside einsum is refused by name."""
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in EXPR_METHODS and _numpy_name(
            func) is None:
        name = ast.copy_location(ast.Name(EXPR_METHODS[func.attr], ast.Load()), func)
        return ast.copy_location(ast.Call(name, [func.value, *node.args], node.keywords), node)
    if _numpy_name(func) in ("amax", "amin"):
        name = ast.copy_location(ast.Name(func.attr[1:], ast.Load()), func)  # type: ignore[attr-defined]
        return ast.copy_location(ast.Call(name, node.args, node.keywords), node)
    if (getattr(func, "id", None) == "where" or _numpy_name(func) == "where") and node.args and (
            isinstance(node.args[0], ast.Compare) and isinstance(node.args[0].ops[0], ast.Eq)):
        name = ast.copy_location(ast.Name("_onehot", ast.Load()), func)
        return ast.copy_location(ast.Call(name, node.args, node.keywords), node)
    return node


def _vocabulary_form(name: str, node: ast.Call) -> bool:
    """norm(x, ORD), softmax(X, axis=…), logsumexp(X, axis=0): the new forms of old names."""
    if name == "norm":
        return len(node.args) == 2
    axes = [k.value.value for k in node.keywords if k.arg == "axis"
            and isinstance(k.value, ast.Constant)]
    return (name == "softmax" and bool(node.keywords)) or (name == "logsumexp" and axes == [0])


def _is_linalg(func: ast.expr) -> bool:
    """``np.linalg.NAME`` (or ``numpy.linalg.NAME``)."""
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute)
            and func.value.attr == "linalg" and isinstance(func.value.value, ast.Name)
            and func.value.value.id in ("np", "numpy"))


def _unabs(node: ast.expr) -> ast.expr:
    """x of ``abs(x)`` / ``np.abs(x)`` / ``np.absolute(x)``, else ``node``: log |det(A)| is
    logdet(A) (whose value is log |det A|, numpy's slogdet), as log det(A) is."""
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords and (
            (isinstance(node.func, ast.Name) and node.func.id == "abs")
            or _numpy_name(node.func) in ("abs", "absolute")):
        return node.args[0]
    return node


def _is_det(node: ast.expr) -> bool:
    """``det(…)`` or ``np.linalg.det(…)`` (so log(det(A)) is log det(A))."""
    return isinstance(node, ast.Call) and (
        (isinstance(node.func, ast.Name) and node.func.id == "det")
        or (_is_linalg(node.func) and node.func.attr == "det"))


@dataclass
class ExprProblem:
    """A parsed expression: its text, names and shapes, the forward tree."""

    text: str
    shapes: dict[str, tuple[sp.Expr, sp.Expr]]
    wrt: tuple[str, ...]
    space: Space
    root: Node  # 1×1
    assume: Assumptions = field(default_factory=lambda: Assumptions())  # --symmetric, …

    @property
    def args(self) -> list[str]:
        """The names a generated function takes, in the order of --shape."""
        used = self.root.syms() | {str(s) for s in self.used_scalars()}
        return [n for n in self.shapes if n in used or n in self.wrt]

    def used_scalars(self) -> set[sp.Symbol]:
        found: set[sp.Symbol] = set()
        for n in walk(self.root):
            for value in (getattr(n, "c", None), getattr(n, "value", None), getattr(n, "expr", None)):
                if isinstance(value, sp.Basic):
                    found |= value.free_symbols
        return {s for s in found if str(s) in self.shapes}

    def sizes(self) -> list[sp.Symbol]:
        seen: list[sp.Symbol] = []
        for shape in self.shapes.values():
            for s in shape:
                if s.is_Symbol and s not in seen:
                    seen.append(s)
        return seen


def parse_problem(text: str, shape_items: Sequence[str], wrt: str | Sequence[str],
                  assume: Assumptions | None = None) -> ExprProblem:
    shapes = parse_shapes(shape_items)
    assume = assume or Assumptions()
    assume.check(shapes)
    items = [wrt] if isinstance(wrt, str) else list(wrt)  # --wrt U,V and --wrt U --wrt V
    names = [w.strip() for item in items for w in item.split(",") if w.strip()]
    if not names:
        raise SymgradError("--wrt", "name the variable(s) to differentiate, e.g. --wrt w")
    for w in names:
        if w in _CONSTANTS:  # e, pi: a value of the language, never a variable
            raise SymgradError(f"--wrt {w}", _CONSTANTS[w])
        if w not in shapes:
            raise SymgradError("--wrt", f"'{w}' has no shape; add --shape {w}=ROWS,COLS")
    if len(set(names)) != len(names):
        raise SymgradError("--wrt", "a name is repeated")
    space = Space(shapes, tuple(names))
    from symgrad.expr import validate

    text = ast.unparse(validate(text, where=WHERE, allow_matrix=True, numpy_forms=True))  # one line
    root = build(text, space)
    missing = [w for w in names if w not in root.syms()]
    if missing:
        raise SymgradError("--wrt", f"the expression does not depend on {', '.join(missing)}")
    return ExprProblem(text, shapes, tuple(names), space, root, assume)


def build(text: str, space: Space, where: str = WHERE, scalar: bool = True) -> Node:
    """EXPR → a forward tree (1×1 when ``scalar``); bad input → SymgradError(where)."""
    from symgrad.expr import validate

    tree = validate(text, where=where, allow_matrix=True, numpy_forms=True)
    source = ast.unparse(tree)
    builder = ExprBuilder(space, where=where, source=source)  # type: ignore[arg-type]
    try:
        value = builder.build(ast.parse(source, mode="eval"))
    except _ShapeError as e:
        raise SymgradError(where, str(e)) from None
    if not isinstance(value, Term):
        if scalar and isinstance(value, sp.Expr) and not value.free_symbols & {
                s for s in space.scalars.values()} and not value.free_symbols:
            raise SymgradError(where, f"'{source}' is a constant; it does not depend on any array")
        return Const(sp.sympify(value))
    if scalar and _internal(value.shape) != (1, 1):
        raise SymgradError(where, f"'{source}' is {_shape_text(value.shape)}, not a scalar; "
                           f"reduce it, e.g. sum({source})")
    if scalar and value.shape != ():
        return Broadcast(value.node, (sp.Integer(1), sp.Integer(1))) if tuple(
            value.node.shape) != (1, 1) else value.node
    return value.node


# --------------------------------------------------------------------------
# Assumptions the user states (--symmetric, --assume, --positive)
# --------------------------------------------------------------------------

ASSUME_FORMS = ("rowsum(NAME) = 1 (or sum(NAME, axis=1) = 1)", "NAME = NAME.T", "NAME > 0")
SYMMETRIC_CONVENTION = (
    "∂f/∂{name} is the unconstrained gradient: each entry of {name} varied on its own (the "
    "Matrix Cookbook §2.8), taken at a symmetric {name}")


def _assume_error(item: str, what: str) -> SymgradError:
    return SymgradError(f"--assume {item}", f"{what}; supported: {'; '.join(ASSUME_FORMS)}")


def _assume_side(text: str, item: str) -> ast.expr:
    from symgrad.expr import validate

    if not text.strip():
        raise _assume_error(item, "expected a fact such as rowsum(Y) = 1")
    try:
        return validate(text, where=f"--assume {item}", allow_matrix=True).body
    except SymgradError as e:
        raise _assume_error(item, e.what) from None


def _top_level_equals(text: str) -> list[str]:
    """``text`` split at each ``=`` outside brackets that is not part of ==, <=, >=, !=."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([{") - (ch in ")]}")
        if (ch == "=" and depth == 0 and text[i - 1:i] not in ("<", ">", "=", "!")
                and text[i + 1:i + 2] != "="):
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _assumed_name(node: ast.expr) -> str | None:
    return node.id if isinstance(node, ast.Name) else None


@dataclass(frozen=True)
class Assumptions:
    """What the user states about the names, used everywhere a value is drawn or a
    gradient simplified:

    * ``symmetric`` (A = Aᵀ): the simplifier writes Aᵀ as A (∂ xᵀAx = 2Ax); random
      instances are symmetric; the proof expands at a symmetric A.  A gradient with respect
      to A itself is the unconstrained one (:data:`SYMMETRIC_CONVENTION`).
    * ``rowsum`` (rowsum(Y) = 1, entries ≥ 0: one-hot or probability rows): the simplifier
      writes rowsum(Y) as 𝟏 (so softmax cross-entropy gives softmax(XW) − Y); random rows are
      nonnegative and sum to 1; the proof expands with each row's last entry 1 − the others.
    * ``positive`` (x > 0): random instances draw x from [0.5, 1.5] (so log x and √x are
      defined); the proof takes x's entries positive; the generated module's ``DOMAIN``.
    """

    symmetric: tuple[str, ...] = ()
    rowsum: tuple[str, ...] = ()
    positive: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.symmetric or self.rowsum or self.positive)

    @classmethod
    def parse(cls, symmetric: Sequence[str] = (), assume: Sequence[str] = (),
              positive: Sequence[str] = ()) -> Assumptions:
        """The options' values (comma lists and repeats add up); each --assume FACT read by
        the safe parser, never eval."""
        def names(items: Sequence[str], option: str) -> list[str]:
            out = [n.strip() for item in items for n in item.split(",") if n.strip()]
            for n in out:
                if not _NAME.match(n):
                    raise SymgradError(f"--{option} {n}", "expected a name given with --shape")
            return out

        sym, pos, rows = names(symmetric or (), "symmetric"), names(positive or (), "positive"), []
        for item in assume or ():
            kind, name = cls._fact(item)
            {"symmetric": sym, "positive": pos, "rowsum": rows}[kind].append(name)
        unique = lambda xs: tuple(dict.fromkeys(xs))  # noqa: E731 - in the order given
        return cls(unique(sym), unique(rows), unique(pos))

    @staticmethod
    def _fact(item: str) -> tuple[str, str]:
        """``rowsum(Y) = 1`` → ("rowsum", "Y"); ``A = A.T`` → ("symmetric", "A");
        ``x > 0`` → ("positive", "x"); anything else a one-line error listing the forms."""
        text = item.strip()
        parts = _top_level_equals(text)
        if len(parts) == 1:
            expr = _assume_side(text, item)
            if (isinstance(expr, ast.Compare) and len(expr.ops) == 1
                    and isinstance(expr.ops[0], ast.Gt) and _assumed_name(expr.left)
                    and isinstance(expr.comparators[0], ast.Constant)
                    and expr.comparators[0].value == 0):
                return "positive", _assumed_name(expr.left)
            raise _assume_error(item, f"'{text}' is not a fact symgrad can use")
        if len(parts) != 2:
            raise _assume_error(item, "one '=' per fact")
        lhs, rhs = (_assume_side(p, item) for p in parts)
        if isinstance(lhs, ast.Constant):  # 1 = rowsum(Y)
            lhs, rhs = rhs, lhs
        if isinstance(rhs, ast.Constant) and rhs.value == 1 and isinstance(lhs, ast.Call):
            fn = lhs.func.id if isinstance(lhs.func, ast.Name) else getattr(lhs.func, "attr", "")
            kw = {k.arg: k.value for k in lhs.keywords}
            axis = kw.pop("axis", None)
            kw.pop("keepdims", None)
            if len(lhs.args) == 1 and _assumed_name(lhs.args[0]) and not kw and (
                    (fn == "rowsum" and axis is None)
                    or (fn == "sum" and isinstance(axis, ast.Constant) and axis.value in (1, -1))):
                return "rowsum", _assumed_name(lhs.args[0])
        a, b = _assumed_name(lhs), rhs
        if a is None:
            a, b = _assumed_name(rhs), lhs
        if a is not None and isinstance(b, ast.Attribute) and b.attr == "T" and (
                _assumed_name(b.value) == a):
            return "symmetric", a
        raise _assume_error(item, f"'{text}' is not a fact symgrad can use")

    def check(self, shapes: dict[str, tuple[sp.Expr, sp.Expr]]) -> None:
        """Each name has a shape; a symmetric one is square, a row-stochastic one a matrix."""
        for option, names in (("symmetric", self.symmetric), ("assume", self.rowsum),
                              ("positive", self.positive)):
            for n in names:
                where = f"--{option} {n}" if option != "assume" else f"--assume rowsum({n}) = 1"
                if n not in shapes:
                    raise SymgradError(where, f"'{n}' has no shape; add --shape {n}=ROWS,COLS")
                r, c = shapes[n]
                if option == "symmetric" and r != c:
                    raise SymgradError(where, f"a symmetric matrix is square, and {n} is "
                                       f"{_shape_text((r, c))}")
        both = set(self.symmetric) & set(self.rowsum)
        if both:
            raise SymgradError("--assume", f"{', '.join(sorted(both))}: symmetric and row sums "
                               "1 together is not supported; state one of them")

    def lines(self) -> list[str]:
        """The assumptions in words, as derive and verify print them."""
        out = [f"{n} = {n}ᵀ (symmetric)" for n in self.symmetric]
        out += [f"rowsum({n}) = 𝟏, {n} ≥ 0 (rows one-hot or probabilities)" for n in self.rowsum]
        out += [f"{n} > 0 (entrywise)" for n in self.positive]
        return out

    def latex_lines(self) -> list[str]:
        """The facts as one row of derive's LaTeX block (none when nothing is assumed)."""
        name = naming.latex
        facts = [rf"{name(n)} = {name(n)}^{{\top}}" for n in self.symmetric]
        facts += [rf"{name(n)} \mathbf{{1}} = \mathbf{{1}},\ {name(n)} \ge 0" for n in self.rowsum]
        facts += [rf"{name(n)} > 0" for n in self.positive]
        joined = r",\quad ".join(facts)
        return [rf"&\text{{assuming }} {joined} \\"] if facts else []

    # -- the simplifier's use: Aᵀ → A, rowsum(Y) → 𝟏

    def rewrite(self, node: Node, used: list | None = None) -> Node:
        """``node`` with the stated facts used (equal wherever they hold); each use is
        appended to ``used`` as (step name, before, after) (derive --steps lists them)."""
        from symgrad.derive import transform

        sym, rows = set(self.symmetric), set(self.rowsum)

        def fn(n: Node) -> Node | None:
            out, step = None, None
            if isinstance(n, Transpose) and isinstance(n.x, Sym) and n.x.name in sym:
                out, step = n.x, f"assumed {n.x.name} = {n.x.name}ᵀ"
            elif isinstance(n, RowSum) and isinstance(n.x, Sym) and n.x.name in rows:
                out, step = _full(sp.S.One, n.shape), f"assumed rowsum({n.x.name}) = 1"
            elif (isinstance(n, ColSum) and isinstance(n.x, Transpose)
                    and isinstance(n.x.x, Sym) and n.x.x.name in rows):
                out, step = _full(sp.S.One, n.shape), f"assumed rowsum({n.x.x.name}) = 1"
            if out is not None and used is not None:
                used.append((step, n, out))
            return out

        return transform(node, fn)

    def simplified(self, g: Node, simplify, used: list | None = None) -> Node:
        """``simplify(g)`` using the facts: applied before and after, to a fixed point
        (the simplifier may bring a fact's pattern to light, as rowsum(Y) in softmax CE);
        the uses of a fact appended to ``used``."""
        if not (self.symmetric or self.rowsum):
            return simplify(g)
        out = simplify(self.rewrite(g, used))
        for _ in range(3):
            again = self.rewrite(out, used)
            if again == out:
                break
            out = simplify(again)
        return out

    # -- random instances and the proof's explicit instance

    def draw(self, name: str, a: np.ndarray, real: bool) -> np.ndarray:
        """A random instance ``a`` made to satisfy the facts about ``name`` (``real``: it
        was drawn standard normal, else from ±[0.5, 1.5])."""
        if name in self.positive:
            a = np.abs(a) + (0.5 if real else 0.0)
        if name in self.symmetric:
            a = (a + a.T) / 2
        if name in self.rowsum:
            a = np.abs(a) + 0.1
            a = a / a.sum(axis=1, keepdims=True)
        return a

    def constrain(self, env: dict):
        """A function putting the facts into an explicit expression over ``env``'s entry
        symbols: Aⱼᵢ → Aᵢⱼ, a row's last entry → 1 − the others, x's entries positive.
        The proof differentiates first, then constrains (the unconstrained gradient at a
        point where the facts hold)."""
        structure: dict = {}
        signs: dict = {}
        for n in self.symmetric:
            m = env.get(n)
            if isinstance(m, sp.MatrixBase):
                structure.update({m[j, i]: m[i, j] for i in range(m.rows) for j in range(i)})
        for n in self.rowsum:
            m = env.get(n)
            if isinstance(m, sp.MatrixBase) and m.cols > 1:
                last = m.cols - 1
                structure.update({m[i, last]: 1 - sp.Add(*[m[i, j] for j in range(last)])
                                  for i in range(m.rows)})
        for n in self.positive:
            m = env.get(n)
            entries = list(m) if isinstance(m, sp.MatrixBase) else []
            signs.update({s: sp.Symbol(s.name, positive=True) for s in entries
                          if isinstance(s, sp.Symbol)})

        def apply(e):
            return e.xreplace(structure).xreplace(signs) if structure or signs else e

        return apply


def _assumed(problem: ExprProblem, md: bool = False) -> list[str]:
    """The lines derive and verify print under f: the facts assumed, and the convention
    for a gradient with respect to a symmetric matrix when one is asked for."""
    facts = problem.assume.lines()
    if not facts:
        return []
    pad = "" if md else "  "
    out = [f"{pad}assuming {'; '.join(facts)}"]
    for name in problem.assume.symmetric:
        if name in problem.wrt:
            out.append(f"{pad}{SYMMETRIC_CONVENTION.format(name=naming.text(name))}")
    return out


def _assumed_verify(problem: ExprProblem, wrt: str) -> list[str]:
    """verify's ``assuming:`` line (and the convention when ``wrt`` is symmetric)."""
    facts = problem.assume.lines()
    if not facts:
        return []
    out = [f"  assuming: {'; '.join(facts)}"]
    if wrt in problem.assume.symmetric:
        out.append(f"    {SYMMETRIC_CONVENTION.format(name=naming.text(wrt))}")
    return out


def assumed_context(problem: ExprProblem) -> dict:
    """The generated module's view of the assumptions (its random_arguments draws them)."""
    a = problem.assume
    args = problem.args
    return {
        "assumed": a.lines(),
        "positive": [n for n in a.positive if n in args],
        "symmetric": [n for n in a.symmetric if n in args],
        "rowsum_one": [n for n in a.rowsum if n in args],
    }


def _log_softmax(z: Node) -> Node:
    """log softmax(Z) = Z − logsumexp(Z) 𝟏ᵀ row-wise (the row maximum subtracted inside)."""
    return Sub(z, Broadcast(LogSumExp(z, 1), tuple(z.shape)))


def stable_forms(node: Node) -> Node:
    """``node`` with log(softmax(Z)) written Z − logsumexp(Z): the same value, finite where
    softmax underflows to 0 (logits spread over ±1000), and a gradient without 1/softmax
    (softmax cross-entropy sweeps to softmax(Z) ⊙ rowsum(G) − G, never 0 · ∞)."""
    from symgrad.derive import transform

    def fn(n: Node) -> Node | None:
        if not isinstance(n, Map):
            return None
        subs: dict = {}
        args: list = []
        for s, a in n.args:
            a = stable_forms(a)
            column = isinstance(a, Transpose) and isinstance(a.x, Softmax)  # softmax(Z, axis=0)
            if (isinstance(a, Softmax) or column) and n.expr.has(sp.log(s)):
                t = sp.Symbol(f"{s.name}_log", real=True)
                subs[sp.log(s)] = t
                args.append((t, _transpose(_log_softmax(a.x.x)) if column else _log_softmax(a.x)))
            args.append((s, a))
        if not subs:
            return None
        expr = n.expr.xreplace(subs)
        keep = tuple((s, a) for s, a in args if s in expr.free_symbols)
        if len(keep) == 1 and expr == keep[0][0]:
            return keep[0][1]
        return Map(expr, keep, n.note) if keep else _full(expr, n.shape)

    return transform(node, fn)


def _log_sigmoid(e: sp.Expr) -> sp.Expr | None:
    """log σ(u) = −softplus(−u) and log(1 − σ(u)) = −softplus(u): finite at u = ±1000."""
    if isinstance(e, sp.log):
        if isinstance(e.args[0], sigmoid):
            return -softplus(-e.args[0].args[0])
        rest = 1 - e.args[0]
        if isinstance(rest, sigmoid):
            return -softplus(rest.args[0])
    return None


def stable_value(node: Node) -> Node:
    """:func:`stable_forms`, and log σ written −softplus(−·): the generated module's value
    (the gradient keeps σ, whose sweep is already finite), so binary cross-entropy written
    with log(sigmoid(z)) is finite at logits ±1000."""
    from symgrad.derive import transform

    def fn(n: Node) -> Node | None:
        if not isinstance(n, Map) or not n.expr.has(sigmoid):
            return None
        expr = n.expr.replace(lambda e: _log_sigmoid(e) is not None, _log_sigmoid)
        return None if expr == n.expr else Map(expr, n.args, n.note)

    return transform(stable_forms(node), fn)


# --------------------------------------------------------------------------
# Simplification toward the form a person writes
# --------------------------------------------------------------------------

_ARG = "_s"


def _one_plus_exp(e: sp.Expr):
    """v when e = 1 + exp(v), else None."""
    if isinstance(e, sp.Add) and len(e.args) == 2 and sp.S.One in e.args:
        other = e.args[0] if e.args[1] == 1 else e.args[1]
        if isinstance(other, sp.exp):
            return other.args[0]
    return None


def _sigmoidize(e: sp.Expr) -> sp.Expr:
    """eᵛ/(1 + eᵛ) → σ(v), 1/(1 + eᵛ) → σ(−v), log(1 + eᵛ) → softplus(v)."""
    e = e.replace(lambda t: isinstance(t, sp.log) and _one_plus_exp(t.args[0]) is not None,
                  lambda t: softplus(_one_plus_exp(t.args[0])))
    num, den = sp.fraction(sp.together(e))
    for f in sp.Mul.make_args(den):
        base, k = (f.base, f.exp) if f.is_Pow else (f, sp.S.One)
        v = _one_plus_exp(base)
        if v is None or not (k.is_Integer and k > 0):
            continue
        rest = den / f
        candidates = []
        for shift in range(int(k) + 1):  # eᵛ factors of the numerator turn σ(−v) into σ(v)
            top = sp.powsimp(sp.expand_power_exp(num * sp.exp(-shift * v)))
            if shift <= k:
                candidates.append(top * sigmoid(v) ** shift * sigmoid(-v) ** (k - shift) / rest)
        return min(candidates, key=lambda c: (c.count(sp.exp), sp.count_ops(c)))
    return e


SIMPLIFY_SECONDS = 2.0  # SymPy's share of the time for one elementwise body


def _real_powers(e: sp.Expr) -> sp.Expr:
    """|u^a| → |u|^a for real a (equal for real u; numpy's u**a is NaN for u < 0)."""
    return e.replace(
        lambda t: isinstance(t, sp.Abs) and t.args[0].is_Pow and t.args[0].exp.is_real is True,
        lambda t: sp.Abs(t.args[0].base) ** t.args[0].exp)



def _cases(e: sp.Expr) -> sp.Expr:
    """A case split with simplified, mutually exclusive conditions (so the Iverson-bracket
    sum that is printed means what the first-match Piecewise means)."""
    from sympy.functions.elementary.piecewise import piecewise_exclusive, piecewise_simplify

    try:
        with deadline(SIMPLIFY_SECONDS):
            out = piecewise_exclusive(piecewise_simplify(e), skip_nan=True)
    except EXHAUSTED:
        return e
    except Exception:  # noqa: BLE001 - SymPy could not: keep the first-match form
        return e
    if out.has(sp.nan, sp.zoo):
        return e
    a = sp.Wild("a")
    out = out.replace(a / sp.Abs(a), sp.sign(a))  # no 0/0 at the kink
    return out.replace(lambda t: isinstance(t, sp.Piecewise), _known_signs)


def _known_signs(pw: sp.Piecewise) -> sp.Piecewise:
    """sign(u) → ±1 in a case whose condition is u > 0 or u < 0."""
    pieces = []
    for value, cond in pw.args:
        if isinstance(cond, sp.StrictGreaterThan | sp.StrictLessThan) and cond.rhs == 0:
            value = value.subs(sp.sign(cond.lhs), 1 if isinstance(cond, sp.StrictGreaterThan) else -1)
        pieces.append((value, cond))
    if all(v == old for (v, _), (old, _) in zip(pieces, pw.args, strict=True)):
        return pw
    return sp.Piecewise(*pieces, evaluate=False)  # keep the exclusive conditions


def _common_part(pw: sp.Piecewise) -> sp.Expr:
    """The terms every branch shares, outside the cases: (u/n + 1 if u > 0 else u/n) =
    u/n + [u > 0]."""
    parts = [set(sp.Add.make_args(v)) for v, _ in pw.args]
    common = set.intersection(*parts) if parts else set()
    if not common or any(p == common for p in parts) and all(p == common for p in parts):
        return pw
    shared = sp.Add(*common)
    return shared + sp.Piecewise(*[(v - shared, c) for v, c in pw.args])


def tidy(e: sp.Expr) -> sp.Expr:
    """A scalar body in its shortest textbook form (σ, softplus recognised)."""
    e = e.replace(sp.Heaviside, lambda x, *_: sp.Piecewise((1, x > 0), (0, True)))
    e = _real_powers(e).replace(sp.DiracDelta, lambda *_: sp.S.Zero)  # 0 almost everywhere
    if e.has(sp.Max, sp.Min) and e.has(sp.Piecewise):  # max(0, 1 − u) [u < 1] → (1 − u) [u < 1]
        e = e.replace(lambda t: isinstance(t, sp.Max | sp.Min), lambda t: t.rewrite(sp.Piecewise))
    if e.has(sp.Piecewise):
        e = fold(e)  # a few branches, never 2^k
        e = e.replace(lambda t: isinstance(t, sp.Piecewise), _common_part)
        if any(len(t.args) > 2 for t in e.atoms(sp.Piecewise)):  # a middle case: exclusive
            e = _cases(e)
        return e
    if budget.too_large_to_expand(e, limit=budget.PRETTY_TERMS):
        return e  # (X₀ + ⋯ + X₉)⁶³ multiplied out: 10¹¹ terms, and never the shortest form
    candidates = [e, _sigmoidize(e), sp.expand(e)]
    for flip in (False, True):  # σ(−u) = 1 − σ(u): sums of σ's collapse
        swapped = e.replace(
            lambda t, flip=flip: isinstance(t, sigmoid) and t.args[0].could_extract_minus_sign() != flip,
            lambda t: 1 - sigmoid(-t.args[0]))
        if swapped != e:
            candidates.append(sp.expand(swapped))
            candidates.append(sp.factor_terms(sp.expand(swapped)))
    if e.has(sp.sign):  # sign(u)·u² + 2u|u| → 3u|u| (no case split where none is needed)
        unsigned = sp.expand(e.replace(sp.sign, lambda x: sp.Abs(x) / x))
        den = sp.together(unsigned).as_numer_denom()[1]
        if not any(den.has(x) for x in (t.args[0] for t in e.atoms(sp.sign))):
            candidates += [unsigned, sp.factor_terms(unsigned)]
    raw = expand_named(e)
    try:  # within the share left of the whole simplification's clock (simplify)
        with deadline(max(budget.optional_end(SIMPLIFY_SECONDS) - budget.clock(), 0.0)):
            simple = sp.simplify(raw)
            candidates += [simple, _sigmoidize(simple), _sigmoidize(sp.factor_terms(raw))]
    except EXHAUSTED:  # SymPy may take too long: keep what we have
        pass
    except Exception:  # noqa: BLE001 - or give up
        pass
    good = [c for c in candidates if not (c.has(sp.cosh, sp.sinh) and not e.has(sp.cosh, sp.sinh))]
    best = min(good, key=lambda c: (sp.count_ops(c), len(str(c))))
    if any(not p.exp.is_Rational for p in best.atoms(sp.Pow)):  # e x^e/x = e x^(e−1)
        best = sp.powsimp(best, combine="exp")
    return best


def _coefficient(node: Node) -> tuple[sp.Expr, Node]:
    if isinstance(node, Scale):
        c, inner = _coefficient(node.x)
        return node.c * c, inner
    return sp.S.One, node


def _const_value(node: Node) -> sp.Expr | None:
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Broadcast):
        return _const_value(node.x)
    return None


def _full(c: sp.Expr, shape) -> Node:
    return Const(c) if tuple(shape) == (1, 1) else Broadcast(Const(c), tuple(shape))


def _scaled(c: sp.Expr, node: Node) -> Node:
    c0, inner = _coefficient(node)
    c = sp.nsimplify(c * c0) if (c * c0).is_Float else c * c0
    if c.could_extract_minus_sign() and isinstance(inner, Sub):
        c, inner = -c, Sub(inner.b, inner.a)  # −(R − UVᵀ) is written UVᵀ − R
    elif (c.could_extract_minus_sign() and isinstance(inner, MatMul) and isinstance(inner.b, Sub)
          and not isinstance(inner.a, Sub)):
        c, inner = -c, MatMul(inner.a, Sub(inner.b.b, inner.b.a))  # −2 S⁻¹(x − μ) = 2 S⁻¹(μ − x)
    k = _const_value(inner)
    if k is not None:
        return _full(c * k, inner.shape)
    if c == 0:
        return _full(sp.S.Zero, inner.shape)
    return inner if c == 1 else Scale(c, inner)


def _depth(node: Node) -> int:
    return 1 + max((_depth(c) for c in node.children), default=0)


def _term_order(node: Node) -> tuple:
    """Terms of a sum: compound terms first, then the plain names (Xᵀ(Xw − y) + λw)."""
    depth = _depth(node)
    return (0 if depth > 2 else 1, *_order(node))


def _order(node: Node) -> tuple:
    """Factors of ⊙ and terms of + in the order people write them."""
    rank = {"Sym": 0, "Transpose": 1, "MatMul": 2, "Hadamard": 3, "Map": 5, "Softmax": 4}
    return (rank.get(type(node).__name__, 3), ExprTextPrinter()._print(node))


# --- rewrite rules: each a named declaration, its identity in its docstring ---------------
#
# A rule is ``apply(simplifier, node) -> Node | None`` for nodes of one class, registered
# with :func:`rule`; the simplifier tries the rules of a node's class on its simplified form
# and simplifies what a rule returns.  Each firing is recorded (``derive --steps`` lists
# them) and, when the simplifier is given a tiny explicit instance (``derive --prove``, the
# table test), proved there: both sides expanded entry by entry and their difference shown
# to be zero; a rewrite the proof refutes is not applied.


@dataclass(frozen=True)
class Rule:
    name: str
    on: type
    identity: str  # the docstring's first line: what is proved when it fires
    apply: object


RULES: dict[str, Rule] = {}


def rule(name: str, on: type):
    """Register ``fn(simplifier, node) -> Node | None`` as the rewrite rule ``name``."""

    def register(fn):
        RULES[name] = Rule(name, on, (fn.__doc__ or "").strip().splitlines()[0].rstrip("."), fn)
        return fn

    return register


def _chain(n: Node) -> list[Node]:
    """The factors of a product A B ⋯ (powers written out)."""
    if isinstance(n, MatMul):
        return _chain(n.a) + _chain(n.b)
    if isinstance(n, MatPow):
        return [n.x] * n.k
    return [n]


def _product(factors: list[Node]) -> Node:
    """A B ⋯ associated to the left, a run of equal square factors as a power."""
    runs: list[list] = []
    for f in factors:
        if runs and runs[-1][0] == f:
            runs[-1][1] += 1
        else:
            runs.append([f, 1])
    out: Node | None = None
    for f, k in runs:
        term = f if k == 1 else MatPow(f, k)
        out = term if out is None else MatMul(out, term)
    assert out is not None
    return out


@rule("product-normal-form", MatMul)
def _product_normal_form(s: _Simplifier, n: MatMul) -> Node | None:
    """A (B C) = (A B) C and A A ⋯ A = Aᵏ: one form for a product, so equal terms merge."""
    factors = _chain(n)
    if len(factors) < 3 and not any(isinstance(x, MatPow) for x in (n.a, n.b)) and not (
            len(factors) == 2 and factors[0] == factors[1]):
        return None
    out = _product(factors)
    return None if out == n else out


@rule("colsum-of-spread", ColSum)
def _colsum_of_spread(s: _Simplifier, n: ColSum) -> Node | None:
    """𝟏ᵀ (𝟏 r) = N r, and 𝟏ᵀ (A ± 𝟏 r) = 𝟏ᵀ A ± N r (a row spread over N rows).

    Applied where the result is shorter: terms cancel (the column-mean-centred square)."""
    rows = n.x.shape[0]
    items = [(c, t) for c, t in _signed_terms_of(n.x)]
    if not any(_row_spread(t) is not None for _, t in items):
        return None
    pairs = []
    for c, t in items:
        r = _row_spread(t)
        pairs.append((c * rows, r) if r is not None else (c, ColSum(t)))
    return _if_shorter(s.combine(pairs, n.shape), n)


@rule("rowsum-of-spread", RowSum)
def _rowsum_of_spread(s: _Simplifier, n: RowSum) -> Node | None:
    """rowsum(c 𝟏ᵀ) = n c, and rowsum(A ± c 𝟏ᵀ) = rowsum(A) ± n c (a column spread).

    Applied where the result is shorter, as colsum-of-spread."""
    cols = n.x.shape[1]
    items = _signed_terms_of(n.x)
    if not any(_col_spread(t) is not None for _, t in items):
        return None
    pairs = []
    for c, t in items:
        v = _col_spread(t)
        pairs.append((c * cols, v) if v is not None else (c, RowSum(t)))
    return _if_shorter(s.combine(pairs, n.shape), n)


@rule("colsum-of-transpose", ColSum)
def _colsum_of_transpose(s: _Simplifier, n: ColSum) -> Node | None:
    """𝟏ᵀ Aᵀ = (A 𝟏)ᵀ = rowsum(A)ᵀ: the sum is taken over the matrix as given."""
    c, x = _coefficient(n.x)
    if not isinstance(x, Transpose):
        return None
    return _scaled(c, Transpose(RowSum(x.x)))


@rule("transpose-of-map", Transpose)
def _transpose_of_map(s: _Simplifier, n: Transpose) -> Node | None:
    """f(Aᵀ, Bᵀ, …)ᵀ = f(A, B, …) for an elementwise f: no double transpose."""
    if not isinstance(n.x, Map) or not all(isinstance(a, Transpose) for _, a in n.x.args):
        return None
    return Map(n.x.expr, tuple((t, a.x) for t, a in n.x.args), n.x.note)


@rule("hadamard-cancels", Hadamard)
def _hadamard_cancels(s: _Simplifier, n: Hadamard) -> Node | None:
    """(Σ tᵢ) ⊙ S = Σ (tᵢ ⊙ S) where a term holds a function of S, so S cancels in it."""
    for a, b in ((n.a, n.b), (n.b, n.a)):
        c, inner = _coefficient(a)
        items = _signed_terms_of(inner)
        if len(items) < 2:
            continue
        if any(isinstance(f, Map) and any(x == b for _, x in f.args)
               for _, t in items for f in _flatten_hadamard(_coefficient(t)[1])):
            return _scaled(c, s.combine([(k, Hadamard(t, b)) for k, t in items], n.shape))
    return None


@rule("transpose-of-power", Transpose)
def _transpose_of_power(s: _Simplifier, n: Transpose) -> Node | None:
    """(Aᵏ)ᵀ = (Aᵀ)ᵏ: powers of one factor stay one power."""
    return MatPow(Transpose(n.x.x), n.x.k) if isinstance(n.x, MatPow) else None


@rule("rowsum-of-weighted-rows", RowSum)
def _rowsum_of_weighted_rows(s: _Simplifier, n: RowSum) -> Node | None:
    """rowsum((𝟏 u) ⊙ M) = M uᵀ for a 1×n row u: a weighted sum of each row is a product."""
    c, x = _coefficient(n.x)
    factors = _flatten_hadamard(x)
    rows = [f for f in factors if f.shape[0] == 1 and n.x.shape[0] != 1
            or _row_spread(f) is not None]
    if len(factors) < 2 or len(rows) != 1:
        return None
    u = rows[0] if rows[0].shape[0] == 1 else _row_spread(rows[0])
    rest = [f for f in factors if f is not rows[0]]
    m = rest[0]
    for f in rest[1:]:
        m = Hadamard(m, f)
    if tuple(m.shape) != tuple(n.x.shape):
        return None
    return _scaled(c, MatMul(m, Transpose(u)))


@rule("colsum-of-weighted-columns", ColSum)
def _colsum_of_weighted_columns(s: _Simplifier, n: ColSum) -> Node | None:
    """𝟏ᵀ ((v 𝟏ᵀ) ⊙ M) = vᵀ M for an N×1 column v: a weighted sum of each column."""
    c, x = _coefficient(n.x)
    factors = _flatten_hadamard(x)
    cols = [f for f in factors if f.shape[1] == 1 and n.x.shape[1] != 1
            or _col_spread(f) is not None]
    if len(factors) < 2 or len(cols) != 1:
        return None
    v = cols[0] if cols[0].shape[1] == 1 else _col_spread(cols[0])
    rest = [f for f in factors if f is not cols[0]]
    m = rest[0]
    for f in rest[1:]:
        m = Hadamard(m, f)
    if tuple(m.shape) != tuple(n.x.shape):
        return None
    return _scaled(c, MatMul(Transpose(v), m))


# --- products of inverses and determinants, scalar factors (issue 13, F12) ------------------


def _scalar_factor(n: Node) -> tuple[Node, Node] | None:
    """(s, M) when n = s ⊙ M spreads a 1×1 value s over a matrix M (s M, printed so)."""
    if not isinstance(n, Hadamard):
        return None
    for s, m in ((n.a, n.b), (n.b, n.a)):
        if (isinstance(s, Broadcast) and tuple(s.x.shape) == (1, 1)
                and tuple(m.shape) != (1, 1) and tuple(s.shape) == tuple(m.shape)):
            return s.x, m
    return None


def _spread_times(s: Node, m: Node) -> Node:
    """s M for a 1×1 s (a constant folds into a coefficient)."""
    k = _const_value(s)
    if k is not None:
        return _scaled(k, m)
    c, inner = _coefficient(m)
    found = _scalar_factor(inner)
    if found is not None and isinstance(s, Map) and isinstance(found[0], Map):  # s (t M) = (s t) M
        return _scaled(c, Hadamard(Broadcast(_merge_maps([s, found[0]]), tuple(m.shape)), found[1]))
    return Hadamard(Broadcast(s, tuple(m.shape)), m)


@rule("solve-as-product", Solve)
def _solve_as_product(s: _Simplifier, n: Solve) -> Node | None:
    """solve(A, B) = A⁻¹ B (and B A⁻¹ from the right): one form for a product by an inverse,
    so equal terms merge (numpy solves it again: ops.linalg.with_solves)."""
    inv = Inverse(n.a)
    return MatMul(n.b, inv) if n.right else MatMul(inv, n.b)


@rule("inverse-of-scaled", Inverse)
def _inverse_of_scaled(s: _Simplifier, n: Inverse) -> Node | None:
    """(c A)⁻¹ = c⁻¹ A⁻¹ for a number c ≠ 0."""
    c, x = _coefficient(n.x)
    return None if c == 1 or c == 0 else _scaled(1 / c, Inverse(x))


@rule("inverse-of-power", Inverse)
def _inverse_of_power(s: _Simplifier, n: Inverse) -> Node | None:
    """(Aᵏ)⁻¹ = (A⁻¹)ᵏ: the inverse of a power is a power of the inverse."""
    return MatPow(Inverse(n.x.x), n.x.k) if isinstance(n.x, MatPow) else None


@rule("inverses-cancel", MatMul)
def _inverses_cancel(s: _Simplifier, n: MatMul) -> Node | None:
    """A⁻¹ A = A A⁻¹ = I in a product, powers written out: (Aᵀ)² (A⁻ᵀ)³ = A⁻ᵀ."""
    out: list[Node] = []
    for f in _chain(n):
        top = out[-1] if out else None
        if top is not None and (isinstance(f, Inverse) and f.x == top
                                or isinstance(top, Inverse) and top.x == f):
            out.pop()
        else:
            out.append(f)
    if len(out) == len(_chain(n)):
        return None
    return _product(out) if out else Eye(n.shape[0])


@rule("scalar-out-of-product", MatMul)
def _scalar_out_of_product(s: _Simplifier, n: MatMul) -> Node | None:
    """A (s B) = (s A) B = s (A B) for a 1×1 s: the scalar in front of the product."""
    for side in ("a", "b"):
        found = _scalar_factor(getattr(n, side))
        if found is not None:
            k, m = found
            product = MatMul(m, n.b) if side == "a" else MatMul(n.a, m)
            return _spread_times(k, product)
    return None


@rule("product-by-scalar", MatMul)
def _product_by_scalar(s: _Simplifier, n: MatMul) -> Node | None:
    """M s = s M for a 1×1 matrix s (a product by a 1×1 is a scaling)."""
    for m, k in ((n.a, n.b), (n.b, n.a)):
        if tuple(k.shape) == (1, 1) and tuple(m.shape) != (1, 1) and tuple(m.shape) == tuple(n.shape):
            return _spread_times(k, m)
    return None


@rule("transpose-of-scaled", Transpose)
def _transpose_of_scaled(s: _Simplifier, n: Transpose) -> Node | None:
    """(s M)ᵀ = s Mᵀ for a 1×1 s."""
    found = _scalar_factor(n.x)
    return None if found is None else _spread_times(found[0], Transpose(found[1]))


@rule("det-of-inverse", Det)
def _det_of_inverse(s: _Simplifier, n: Det) -> Node | None:
    """det(A⁻¹) = det(A)⁻¹."""
    if not isinstance(n.x, Inverse):
        return None
    u = sp.Symbol("_u", real=True)
    return Map(1 / u, ((u, Det(n.x.x)),))


# --- diagonal matrices (F12) ---------------------------------------------------------------


@rule("transpose-of-diagonal", Transpose)
def _transpose_of_diagonal(s: _Simplifier, n: Transpose) -> Node | None:
    """diag(v)ᵀ = diag(v): a diagonal matrix is symmetric."""
    return n.x if isinstance(n.x, DiagMatrix) else None


@rule("diagonal-of-scaled-columns", DiagPart)
def _diagonal_of_scaled(s: _Simplifier, n: DiagPart) -> Node | None:
    """diag(M diag(v)) = diag(M) ⊙ v and diag(diag(v) M) = v ⊙ diag(M)."""
    if not isinstance(n.x, MatMul):
        return None
    a, b = n.x.a, n.x.b
    for d, m in ((b, a), (a, b)):
        if isinstance(d, DiagMatrix):
            v = d.x if d.x.shape[1] == 1 else Transpose(d.x)
            return Hadamard(DiagPart(m), v)
    return None


@rule("sum-of-diagonal-matrix", ColSum)
def _colsum_of_diagonal(s: _Simplifier, n: ColSum) -> Node | None:
    """𝟏ᵀ diag(v) = vᵀ: the column sums of a diagonal matrix are its diagonal."""
    if not isinstance(n.x, DiagMatrix):
        return None
    v = n.x.x
    return Transpose(v) if v.shape[1] == 1 else v


@rule("rowsum-of-diagonal-matrix", RowSum)
def _rowsum_of_diagonal(s: _Simplifier, n: RowSum) -> Node | None:
    """diag(v) 𝟏 = v: the row sums of a diagonal matrix are its diagonal."""
    if not isinstance(n.x, DiagMatrix):
        return None
    v = n.x.x
    return v if v.shape[1] == 1 else Transpose(v)


def _if_shorter(new: Node, old: Node) -> Node | None:
    """``new`` where it prints shorter than ``old`` (a distribution that cancels terms)."""
    p = ExprTextPrinter()
    try:
        return new if len(p._print(new)) < len(p._print(old)) else None
    except NotImplementedError:  # a node without a printed form: keep the rule off
        return None


def _signed_terms_of(n: Node) -> list[tuple[sp.Expr, Node]]:
    """The terms of a sum with their coefficients (one term if ``n`` is not a sum)."""
    if isinstance(n, Add):
        return [x for t in n.terms for x in _signed_terms_of(t)]
    if isinstance(n, Sub):
        b = n.b if tuple(n.b.shape) == tuple(n.a.shape) else Broadcast(n.b, n.a.shape)
        return _signed_terms_of(n.a) + [(-c, t) for c, t in _signed_terms_of(b)]
    c, x = _coefficient(n)
    return [(c, x)]


def _row_spread(t: Node) -> Node | None:
    """r when t = 𝟏 r spreads a 1×n row r down the rows (else None)."""
    if isinstance(t, Broadcast) and t.x.shape[0] == 1 and t.shape[0] != 1:
        r = t.x
        return r if r.shape[1] == t.shape[1] else Broadcast(r, (sp.Integer(1), t.shape[1]))
    return None


def _col_spread(t: Node) -> Node | None:
    """c when t = c 𝟏ᵀ spreads an N×1 column c along the columns (else None)."""
    if isinstance(t, Broadcast) and t.x.shape[1] == 1 and t.shape[1] != 1:
        v = t.x
        return v if v.shape[0] == t.shape[0] else Broadcast(v, (t.shape[0], sp.Integer(1)))
    return None


RULE_PROOF_SECONDS = 2.0  #: SymPy's share for proving one firing of a rule
RULE_PROOFS_SECONDS = 12.0  #: for all the firings of one derivation (then undecided)


@dataclass
class RuleProof:
    """Proves each firing of a rule on a tiny explicit instance (every entry a symbol)."""

    env: dict
    results: dict = field(default_factory=dict)  # (before, after) -> True | False | None
    spent: float = 0.0  # seconds of proofs so far (at most RULE_PROOFS_SECONDS in all)

    def __call__(self, before: Node, after: Node, facts=None) -> bool | None:
        """Proved equal on the instance (``facts``: with the assumptions put in, as
        :meth:`Assumptions.constrain` does)."""
        key = (before, after) if facts is None else (before, after, "facts")
        if key not in self.results:
            if self.spent >= RULE_PROOFS_SECONDS:  # undecided: the proofs' time is spent
                return None
            start = budget.clock()
            self.results[key] = (self._decide(before, after) if facts is None
                                 else self._expanded(before, after, facts))
            self.spent += budget.clock() - start
        return self.results[key]

    def _decide(self, before: Node, after: Node) -> bool | None:
        """True when proved: first with the subterms both sides share intact replaced by
        generic matrices (an identity for every Z holds at Z = X + A), else as they are."""
        swapped = _abstracted(before, after, self.env)
        if swapped is not None:
            verdict = RuleProof(swapped[0])._expanded(*swapped[1:])
            if verdict is not False:  # proved, or out of time (as they are: slower still)
                return verdict
        return self._expanded(before, after)

    def _expanded(self, before: Node, after: Node, facts=None) -> bool | None:
        try:
            with deadline(RULE_PROOF_SECONDS):
                a, b = expand(before.explicit(self.env)), expand(after.explicit(self.env))
                if a.shape != b.shape:
                    return False
                verdicts = []
                for d in a - b:
                    d = facts(d) if facts is not None else d
                    if not (d.has(sp.Piecewise, sp.sign, sp.Abs) or budget.too_large_to_expand(d)):
                        d = sp.cancel(sp.expand(d))
                    verdicts.append(True if d == 0 else is_zero(d))
        except EXHAUSTED:
            return None
        except Exception:  # noqa: BLE001 - a size the instance does not have: undecided
            return None
        if any(v is False for v in verdicts):
            return False
        return True if all(v is True for v in verdicts) else None


def _subterms(node: Node) -> set:
    out, stack = set(), [node]
    while stack:
        n = stack.pop()
        out.add(n)
        stack.extend(n.children)
    return out


def _swap(node: Node, table: dict) -> Node:
    """``node`` with each subterm in ``table`` replaced, outermost first."""
    import dataclasses

    if node in table:
        return table[node]
    if isinstance(node, Sym) or not dataclasses.is_dataclass(node):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, Node):
            new = _swap(value, table)
        elif isinstance(value, tuple) and value and isinstance(value[0], Node):
            new = tuple(_swap(v, table) for v in value)
        elif f.name == "args" and isinstance(value, tuple):  # a map's (symbol, node) pairs
            new = tuple((s, _swap(v, table)) for s, v in value)
        else:
            continue
        if new != value:
            changes[f.name] = new
    return dataclasses.replace(node, **changes) if changes else node


#: what a subterm replaced by a generic matrix in a rule's proof is built of: sums,
#: scalings, transposes and entrywise functions of names (X + A, tanh(Z)ᵀ), which the
#: matrix rules move as wholes
_ENTRYWISE = (Sym, Const, Add, Sub, Scale, Transpose, Hadamard, Map, Broadcast)


def _abstracted(before: Node, after: Node, env: dict) -> tuple[dict, Node, Node] | None:
    """(env, before, after) with the compound subterms both sides hold intact as generic
    matrices of their shapes (fresh symbols); None when there is none to replace."""
    common = _subterms(before) & _subterms(after)
    compound = [n for n in common if n.children and n not in (before, after) and all(
        isinstance(m, _ENTRYWISE) for m in _subterms(n))]
    if not compound:
        return None
    try:
        sizes = {k: v for k, v in env.items() if isinstance(k, sp.Symbol) and isinstance(v, int)}
        table, new_env = {}, dict(env)
        for i, n in enumerate(sorted(compound, key=lambda n: -_depth(n))):
            r, c = (int(sp.sympify(d).xreplace(sizes)) for d in n.shape)
            name = f"_Z{i}"
            table[n] = Sym(name, n.shape, "data")
            new_env[name] = sp.Matrix(r, c, lambda a, b, name=name: sp.Symbol(f"{name}_{a}{b}", real=True))
    except (TypeError, ValueError):
        return None
    return new_env, _swap(before, table), _swap(after, table)


@dataclass
class _Simplifier:
    """Rewrites toward the printed normal form.

    Termination: the rules split an elementwise body into matrix factors (``lower``:
    u·g(u) → U ⊙ g(U)) and join factors that share an argument into one body
    (``_Hadamard``: U ⊙ g(U) → one map, so SymPy may cancel S ⊙ 1/S).  Joining and
    splitting are inverse rewrites, so the split form is the normal form: what ``lower``
    builds is assembled as it stands (:meth:`product`), never handed back to the join.
    A node met again while it is being rewritten (a cycle no rule should allow) is kept
    as it is, and the whole pass runs within a budget (see :func:`simplify`).
    """

    cache: dict = field(default_factory=dict)
    active: set = field(default_factory=set)
    proof: RuleProof | None = None  # proves each firing of a rule (derive --prove, tests)
    fired: dict = field(default_factory=dict)  # rule name -> verdicts of its firings
    firings: list = field(default_factory=list)  # (rule name, before, after), in order

    def __call__(self, node: Node) -> Node:
        seen = {node}
        for _ in range(8):  # to a fixed point
            new = self.node(node)
            if new == node or new in seen:  # a fixed point, or a cycle of passes
                return new
            seen.add(new)
            node = new
        return node

    def node(self, n: Node) -> Node:
        if n in self.cache:
            return self.cache[n]
        if n in self.active:  # re-entered: keep it (the visited set bounds any cycle)
            return n
        self.active.add(n)
        try:
            method = getattr(self, f"_{type(n).__name__}", None)
            out = method(n) if method else self.children(n)
            out = self.rewrite(out)
        finally:
            self.active.discard(n)
        self.cache[n] = out
        return out

    def rewrite(self, n: Node) -> Node:
        """The first rule of ``n``'s class that fires (proved, when a proof is given), its
        result simplified; ``n`` when none fires."""
        for r in RULES.values():
            if not isinstance(n, r.on):
                continue
            new = r.apply(self, n)
            if new is None or new == n:
                continue
            # proved after the pass (simplify), outside its clock; refuted in an earlier pass
            verdict = self.proof.results.get((n, new)) if self.proof is not None else None
            self.fired.setdefault(r.name, []).append(verdict)
            self.firings.append((r.name, n, new))
            if verdict is False:  # refuted on the tiny instance: not applied
                continue
            return self.node(new)
        return n

    def children(self, n: Node) -> Node:
        """Any other op: its children simplified, a scalar factor pulled out of a sum."""
        import dataclasses

        if isinstance(n, Sym) or not dataclasses.is_dataclass(n):
            return n
        changes = {}
        for f in dataclasses.fields(n):
            value = getattr(n, f.name)
            if isinstance(value, Node):
                changes[f.name] = self.node(value)
        out = dataclasses.replace(n, **changes) if changes else n
        own = getattr(out, "rewrite", None)  # an op's own rule: (A⁻¹)⁻¹ = A (ops.linalg)
        if callable(own) and (new := own()) is not None:
            return self.node(new)
        if isinstance(out, RowSum) and isinstance(out.x, Transpose):  # rowsum(Xᵀ) = (𝟏ᵀX)ᵀ
            return Transpose(ColSum(out.x.x))
        if isinstance(out, ColSum | RowSum):
            c, inner = _coefficient(out.x)
            if c != 1:
                return _scaled(c, type(out)(inner))
        return out

    # --- leaves and wrappers

    def _Scale(self, n: Scale) -> Node:
        return _scaled(n.c, self.node(n.x))

    def _Broadcast(self, n: Broadcast) -> Node:
        x = self.node(n.x)
        if tuple(x.shape) == tuple(n.shape):
            return x
        c, inner = _coefficient(x)
        if isinstance(inner, Broadcast):
            inner = inner.x
        k = _const_value(inner)
        if k is not None:
            return _full(c * k, n.shape)
        return _scaled(c, Broadcast(inner, n.shape))

    def _Transpose(self, n: Transpose) -> Node:
        x = self.node(n.x)
        if tuple(x.shape) == (1, 1):
            return x
        c, x = _coefficient(x)
        if c != 1:
            return _scaled(c, self.node(Transpose(x)))
        if isinstance(x, Transpose):
            return x.x
        if isinstance(x, Eye):
            return x
        if callable(getattr(x, "transpose", None)):  # the op's own: (A⁻¹)ᵀ = A⁻ᵀ
            return self.node(x.transpose())
        if isinstance(x, MatMul):
            return self.node(MatMul(Transpose(x.b), Transpose(x.a)))
        parts = [a for _, a in x.args] if isinstance(x, Map) else list(x.children)
        plain = all(_plain(a) for a in parts)  # (A + Aᵀ)ᵀ, not tanh(Zᵀ)
        if plain and isinstance(x, Add):
            return self.node(Add(tuple(Transpose(t) for t in x.terms)))
        if plain and isinstance(x, Sub):
            return self.node(Sub(Transpose(x.a), Transpose(x.b)))
        if plain and isinstance(x, Hadamard):
            return self.node(Hadamard(Transpose(x.a), Transpose(x.b)))
        if isinstance(x, Broadcast):
            k = _const_value(x)
            if k is not None:
                return _full(k, n.shape)
            if tuple(x.x.shape) == (1, 1):
                return Broadcast(x.x, n.shape)
        if plain and isinstance(x, Map):
            return self.node(Map(x.expr, tuple((s, Transpose(a)) for s, a in x.args), x.note))
        return Transpose(x)

    # --- products

    def _MatMul(self, n: MatMul) -> Node:
        a, b = self.node(n.a), self.node(n.b)
        ca, a = _coefficient(a)
        cb, b = _coefficient(b)
        c = ca * cb
        if isinstance(a, Eye):
            return _scaled(c, b)
        if isinstance(b, Eye):
            return _scaled(c, a)
        eye = inverse_product(a, b)  # A⁻¹ A = I
        if eye is not None:
            return _scaled(c, eye)
        ka, kb = _const_value(a), _const_value(b)
        if ka is not None and tuple(a.shape) == (1, 1):
            return _scaled(c * ka, b)
        if kb is not None and tuple(b.shape) == (1, 1):
            return _scaled(c * kb, a)
        kb, ka = _const_value(b), _const_value(a)
        if kb is not None and b.shape[0] == 1:  # a (k 𝟏ᵀ) = k a spread along the row
            return _scaled(c * kb, self.node(Broadcast(a, (a.shape[0], b.shape[1]))))
        if ka is not None and a.shape[1] == 1:  # (k 𝟏) b = k b spread down the column
            return _scaled(c * ka, self.node(Broadcast(b, (a.shape[0], b.shape[1]))))
        if isinstance(b, Broadcast) and b.x.shape[0] == 1 and b.shape[0] != 1:  # A 𝟏 x
            x = b.x if b.x.shape[1] == b.shape[1] else Broadcast(b.x, (sp.Integer(1), b.shape[1]))
            return _scaled(c, self.node(MatMul(self.node(RowSum(a)), x)))
        if isinstance(a, Broadcast) and a.x.shape[1] == 1 and a.shape[1] != 1:  # x 𝟏ᵀ B
            x = a.x if a.x.shape[0] == a.shape[0] else Broadcast(a.x, (a.shape[0], sp.Integer(1)))
            return _scaled(c, self.node(MatMul(x, self.node(ColSum(b)))))
        if c.could_extract_minus_sign() and isinstance(a, Sub):
            c, a = -c, Sub(a.b, a.a)
        elif c.could_extract_minus_sign() and isinstance(b, Sub):
            c, b = -c, Sub(b.b, b.a)
        if isinstance(a, Sub | Add) and isinstance(b, Sym) is False and False:
            pass
        return _scaled(c, MatMul(a, b))

    def collect_factors(self, parts: list[Node]) -> tuple[sp.Expr, list[Node]]:
        """The ⊙ factors of ``parts`` (simplified, flattened) and their scalar coefficient."""
        factors: list[Node] = []
        c = sp.S.One

        def collect(x: Node) -> None:
            nonlocal c
            x = self.node(x)
            k, x = _coefficient(x)
            c *= k
            v = _const_value(x)
            if v is not None:
                c *= v
            elif isinstance(x, Hadamard):
                collect(x.a)
                collect(x.b)
            else:
                factors.append(x)

        for x in parts:
            collect(x)
        return c, factors

    @staticmethod
    def assemble(c: sp.Expr, factors: list[Node], shape) -> Node:
        """c · (f₁ ⊙ f₂ ⊙ …) in the order people write the factors, at ``shape``."""
        if not factors:
            return _full(c, shape)
        factors = sorted(factors, key=_order)
        out = factors[0]
        for f in factors[1:]:
            out = Hadamard(out, f)
        if tuple(out.shape) != tuple(shape):
            out = Broadcast(out, shape)
        return _scaled(c, out)

    def product(self, c: sp.Expr, factors: list[Node], shape) -> Node:
        """The split form of an elementwise body (``lower``): factors simplified one by
        one and assembled, without joining them again (the normal form)."""
        k, flat = self.collect_factors(factors)
        return self.assemble(c * k, flat, shape)

    def _Hadamard(self, n: Hadamard) -> Node:
        c, factors = self.collect_factors([n.a, n.b])
        if not factors:
            return _full(c, n.shape)
        # broadcasts of a scalar (a 1×1 value) become coefficients only when constant
        inside = {a for f in factors if isinstance(f, Map) for _, a in f.args}
        if inside:  # S ⊙ 1/S: a factor that is also a map's argument joins the body
            u = sp.Symbol("_u", real=True)
            factors = [Map(u, ((u, f),)) if (f in inside and not isinstance(f, Map)) else f
                       for f in factors]
        maps = [f for f in factors if isinstance(f, Map)]
        if len(maps) > 1:  # one body: σ(u) ⊙ (1 − σ(u)) stays one elementwise function
            merged = _merge_maps(maps)
            factors = [f for f in factors if not isinstance(f, Map)]
            lowered = self.node(merged)
            k, lowered = _coefficient(lowered)
            c *= k
            if isinstance(lowered, Hadamard):
                factors += _flatten_hadamard(lowered)
            elif _const_value(lowered) is not None:
                c *= _const_value(lowered)
            else:
                factors.append(lowered)
            if not factors:
                return _full(c, n.shape)
        return self.assemble(c, factors, n.shape)

    # --- sums

    def _Add(self, n: Add) -> Node:
        return self.combine([(sp.S.One, t) for t in n.terms], n.shape)

    def _Sub(self, n: Sub) -> Node:
        b = n.b if tuple(n.b.shape) == tuple(n.a.shape) else Broadcast(n.b, n.a.shape)
        return self.combine([(sp.S.One, n.a), (sp.S.NegativeOne, b)], n.shape)

    def combine(self, pairs: list[tuple[sp.Expr, Node]], shape) -> Node:
        terms: dict[Node, sp.Expr] = {}
        const = sp.S.Zero

        def collect(c: sp.Expr, x: Node) -> None:
            nonlocal const
            x = self.node(x)
            k, x = _coefficient(x)
            c = c * k
            v = _const_value(x)
            if v is not None:
                const += c * v
            elif isinstance(x, Add):
                for t in x.terms:
                    collect(c, t)
            elif isinstance(x, Sub):
                collect(c, x.a)
                collect(-c, x.b)
            else:
                terms[x] = terms.get(x, sp.S.Zero) + c

        for c, x in pairs:
            collect(c, x)
        items = [(sp.factor(c), x) for x, c in terms.items() if sp.simplify(c) != 0]
        if const != 0:
            items.append((const, _full(sp.S.One, shape)))
        if not items:
            return _full(sp.S.Zero, shape)
        if len(items) == 1:
            c, x = items[0]
            return _scaled(c, x if tuple(x.shape) == tuple(shape) else Broadcast(x, shape))
        merged = self.merge_elementwise(items, shape)
        if merged is not None:
            return merged
        factored = self.factor(items)
        if factored is not None:
            return factored
        return _build_sum(items)

    def merge_elementwise(self, items: list[tuple[sp.Expr, Node]], shape) -> Node | None:
        """Σ cᵢ·(⊙ of names and elementwise functions) with two or more functions: one
        body, simplified by SymPy ((1 − y) ⊙ σ(u) − y ⊙ σ(−u) → σ(u) − y)."""
        nodes = [x for _, x in items]
        if sum(len([f for f in _flatten_hadamard(x) if isinstance(f, Map)]) for x in nodes) < 2:
            return None
        args: dict[Node, sp.Symbol] = {}
        body = sp.S.Zero
        for c, x in items:
            b = _body(x, args, shape)
            if b is None:
                return None
            body += c * b
        return self.node(Map(body, tuple((t, a) for a, t in args.items()), "merged"))

    def factor(self, items: list[tuple[sp.Expr, Node]]) -> Node | None:
        """A common matrix factor: A B + A C → A (B + C); B A + C A → (B + C) A; a
        common 1×1 factor: s A + s B → s (A + B)."""
        xs = [x for _, x in items]
        scalars = [_scalar_factor(x) for x in xs]
        groups: dict[Node, list[int]] = {}
        for i, sf in enumerate(scalars):
            if sf is not None:
                groups.setdefault(sf[0], []).append(i)
        for k, members in groups.items():
            if len(members) > 1:
                inner = self.combine([(items[i][0], scalars[i][1]) for i in members],
                                     scalars[members[0]][1].shape)
                shared = _spread_times(k, inner)
                rest = [items[i] for i in range(len(items)) if i not in members]
                return shared if not rest else self.combine([(sp.S.One, shared), *rest],
                                                            shared.shape)
        common = self.common_scalar(items, scalars)
        if common is not None:
            return common
        if all(isinstance(x, MatMul) for x in xs):
            if all(x.a == xs[0].a for x in xs):
                inner = self.combine([(c, x.b) for c, x in items], xs[0].b.shape)
                return self.node(MatMul(xs[0].a, inner))
            if all(x.b == xs[0].b for x in xs):
                inner = self.combine([(c, x.a) for c, x in items], xs[0].a.shape)
                return self.node(MatMul(inner, xs[0].b))
        for side in ("a", "b"):  # some of the terms share a factor: Xᵀ S/N + λ W − Xᵀ Y/N
            groups: dict[Node, list[int]] = {}
            for i, x in enumerate(xs):
                if isinstance(x, MatMul):
                    groups.setdefault(getattr(x, side), []).append(i)
            for members in groups.values():
                if 1 < len(members) < len(items):
                    shared = self.factor([items[i] for i in members])
                    if shared is None:
                        continue
                    rest = [items[i] for i in range(len(items)) if i not in members]
                    return self.combine([(sp.S.One, shared), *rest], shared.shape)
        return None

    def common_scalar(self, items, scalars) -> Node | None:
        """A common factor of the terms' 1×1 factors: (1/v) A x − (u/v²) x → (A x − (u/v) x)/v
        (each other factor divided by it gets shorter)."""
        members = [i for i, sf in enumerate(scalars) if sf is not None and isinstance(sf[0], Map)]
        if len(members) < 2 or len(members) != len(items):
            return None
        args: dict[Node, sp.Symbol] = {}
        bodies = []
        for i in members:
            k = scalars[i][0]
            subs = {}
            for sym, a in k.args:
                if a not in args:
                    args[a] = sp.Symbol(f"_c{len(args)}", real=True)
                subs[sym] = args[a]
            bodies.append(k.expr.xreplace(subs))
        back = tuple((t, a) for a, t in args.items())
        for b0 in sorted(set(bodies), key=sp.count_ops):
            if not b0.free_symbols:
                continue
            ratios = [sp.cancel(b / b0) for b in bodies]
            if all(r == 1 for r in ratios) or not all(
                    r.is_number or sp.count_ops(r) < sp.count_ops(b) for r, b in zip(ratios, bodies, strict=True)):
                continue
            pairs = []
            for i, r in zip(members, ratios, strict=True):
                m = scalars[i][1]
                used = tuple((t, a) for t, a in back if t in r.free_symbols)
                pairs.append((items[i][0], _scaled(r, m) if r.is_number else _spread_times(Map(r, used), m)))
            inner = self.combine(pairs, scalars[members[0]][1].shape)
            used0 = tuple((t, a) for t, a in back if t in b0.free_symbols)
            return _spread_times(Map(b0, used0), inner)
        return None

    # --- elementwise functions

    def _Map(self, n: Map) -> Node:
        args: dict[Node, sp.Symbol] = {}
        subs: dict[sp.Symbol, sp.Expr] = {}
        def leaf(x: Node) -> sp.Symbol:
            if x not in args:
                args[x] = sp.Symbol(f"{_ARG}{len(args)}", real=True)
            return args[x]

        for s, a in n.args:
            a = self.node(a)
            v = _const_value(a)
            if v is not None:
                subs[s] = v
                continue
            linear = _linear(a)
            if linear is not None:  # 1 − y: its names enter the body, so SymPy can cancel
                subs[s] = sum((c * (leaf(x) if x is not None else 1) for c, x in linear), sp.S.Zero)
                continue
            c, inner = _coefficient(a)
            subs[s] = c * leaf(inner)
        expr = tidy(n.expr.xreplace(subs))
        return self.lower(expr, {t: a for a, t in args.items()}, n.shape, n.note)

    def lower(self, e: sp.Expr, args: dict[sp.Symbol, Node], shape, note: str) -> Node:
        """A body as matrix ops where it is linear or a product: c·u → c·U, u·σ(v) → U ⊙ σ(V)."""
        used = e.free_symbols & set(args)
        if not used:
            return _full(e, shape)
        if e in args:
            node = args[e]
            return node if tuple(node.shape) == tuple(shape) else Broadcast(node, shape)
        if isinstance(e, sp.Add):
            pairs = []
            rest = []
            for t in e.args:
                c, f = t.as_independent(*args, as_Add=False)
                if f in args:
                    pairs.append((c, args[f]))
                else:
                    rest.append(t)
            if pairs and rest:
                pairs.append((sp.S.One, self.lower(sp.Add(*rest), args, shape, note)))
            if pairs:
                return self.combine(pairs, shape)
        if isinstance(e, sp.Mul):
            c, f = e.as_independent(*args, as_Add=False)
            plain = [x for x in sp.Mul.make_args(f) if x in args]
            others = [x for x in sp.Mul.make_args(f) if x not in args]
            if plain and others and all(_is_denominator(x) for x in others):
                # u/g(u) stays one quotient (2 w/(w² + 1)), not u ⊙ 1/g(u)
                plain, others = [], [sp.Mul(*plain, *others)]
            if c != 1 or (plain and others) or len(plain) > 1:
                factors = [args[x] for x in plain]
                if others:
                    factors.append(self.lower(sp.Mul(*others), args, shape, note))
                return self.product(c, factors, shape)
        if isinstance(e, sp.Piecewise):
            coefs = [v.as_independent(*args, as_Add=False)[0] for v, _ in e.args]
            if coefs and all(k == coefs[0] for k in coefs) and coefs[0] != 1 and coefs[0] != 0:
                inner = sp.Piecewise(*[(v / coefs[0], c) for v, c in e.args])
                return _scaled(coefs[0], self.lower(inner, args, shape, note))
        keep = tuple((t, a) for t, a in args.items() if t in used)
        return Map(e, keep, note)


def _is_denominator(e: sp.Expr) -> bool:
    return e.is_Pow and e.exp.is_number and e.exp.is_negative


def _body(x: Node, args: dict[Node, sp.Symbol], shape) -> sp.Expr | None:
    """An elementwise product of names and maps as one scalar body (None if not one)."""
    out = sp.S.One
    for f in _flatten_hadamard(x):
        if tuple(f.shape) != tuple(shape):
            return None
        if isinstance(f, Map):
            subs = {}
            for s, a in f.args:
                if a not in args:
                    args[a] = sp.Symbol(f"_m{len(args)}", real=True)
                subs[s] = args[a]
            out *= f.expr.xreplace(subs)
        else:
            if f not in args:
                args[f] = sp.Symbol(f"_m{len(args)}", real=True)
            out *= args[f]
    return out


def _linear(n: Node) -> list[tuple[sp.Expr, Node | None]] | None:
    """A sum of names and constants as (coefficient, name or None), else None."""
    if not isinstance(n, Add | Sub):
        return None
    out: list[tuple[sp.Expr, Node | None]] = []
    parts = [(sp.S.One, t) for t in n.terms] if isinstance(n, Add) else [
        (sp.S.One, n.a), (sp.S.NegativeOne, n.b)]
    for c, t in parts:
        k, t = _coefficient(t)
        v = _const_value(t)
        if v is not None:
            out.append((c * k * v, None))
        elif isinstance(t, Sym) and tuple(t.shape) == tuple(n.shape):
            out.append((c * k, t))
        else:
            return None
    return out


def _plain(n: Node) -> bool:
    """A name, a transposed name or a product of those (transposing it stays short)."""
    if isinstance(n, MatMul):
        return _plain(n.a) and _plain(n.b)
    if isinstance(n, Broadcast):
        return tuple(n.x.shape) == (1, 1) and isinstance(n.x, Sym | Const)
    return isinstance(n, Sym | Const) or (isinstance(n, Transpose) and isinstance(n.x, Sym))


def _flatten_hadamard(n: Node) -> list[Node]:
    if isinstance(n, Hadamard):
        return _flatten_hadamard(n.a) + _flatten_hadamard(n.b)
    return [n]


def _merge_maps(maps: list[Map]) -> Map:
    args: dict[Node, sp.Symbol] = {}
    body = sp.S.One
    for m in maps:
        subs = {}
        for s, a in m.args:
            if a not in args:
                args[a] = sp.Symbol(f"_m{len(args)}", real=True)
            subs[s] = args[a]
        body *= m.expr.xreplace(subs)
    return Map(body, tuple((t, a) for a, t in args.items()), maps[0].note)


def _build_sum(items: list[tuple[sp.Expr, Node]]) -> Node:
    """Σ cᵢ Xᵢ with a common coefficient pulled out and minus signs as subtraction."""
    coefs = [c for c, _ in items]
    common = sp.S.One
    first = coefs[0]
    if all(sp.simplify(c / first).is_Rational for c in coefs):
        # pull out the shared symbolic part and the smallest shared rational
        sym = sp.Mul(*[f for f in sp.Mul.make_args(first) if not f.is_Rational])
        rats = [sp.nsimplify(sp.simplify(c / sym)) for c in coefs]
        if all(r.is_Rational for r in rats):
            g = rats[0]
            for r in rats[1:]:
                g = sp.gcd(g, r)
            g = abs(g)
            if all(r < 0 for r in rats):
                g = -g
            common = sym * g
            if common.could_extract_minus_sign() and not all(r < 0 for r in rats):
                common = -common  # −(R − UVᵀ) is written UVᵀ − R
    items = [(sp.simplify(c / common), x) for c, x in items]
    items.sort(key=lambda cx: (bool(cx[0].could_extract_minus_sign()), _term_order(cx[1])))
    out: Node | None = None
    for c, x in items:
        if out is None:
            out = _scaled(c, x)
        elif c.could_extract_minus_sign():
            out = Sub(out, _scaled(-c, x))
        else:
            term = _scaled(c, x)
            out = Add((*out.terms, term)) if isinstance(out, Add) else Add((out, term))
    assert out is not None
    return _scaled(common, out)


def rewrite_lines(d, md: bool = False) -> list[str]:
    """``derive --steps``: the rewrite rules that fired in each gradient, with the identity
    each one applies and, where its firings were proved (``--prove``), the verdict."""
    lead = "- " if md else "  "
    lines = []
    for w, fired in d.rewrites.items():
        for name, verdicts in fired.items():
            k = len(verdicts)
            if any(v is False for v in verdicts):
                status = " — refuted on the tiny instance, not applied"
            elif all(v is True for v in verdicts):
                status = f" — proved at tiny sizes ({k} firing{'s' * (k != 1)})"
            elif any(v is True for v in verdicts):
                status = " — proved where decided, some firings not decided"
            else:
                status = f" ({k} firing{'s' * (k != 1)})"
            identity = RULES[name].identity if name in RULES else (
                "the stated fact used (--symmetric / --assume), proved where it holds")
            lines.append(f"{lead}∂f/∂{naming.text(w)}: {name}: {identity}{status}")
    return lines or [f"{lead}(none: the swept form is already the normal form)"]


def rule_proof_lines(d) -> tuple[bool, list[str]]:
    """``derive --prove``: the firings of rewrite rules, proved on the tiny instance."""
    verdicts = [v for fired in d.rewrites.values() for vs in fired.values() for v in vs]
    if all(v is None for v in verdicts):  # none fired, or derived without the rule proofs
        return True, []
    names = sorted({n for fired in d.rewrites.values() for n in fired})
    proved = sum(v is True for v in verdicts)
    if any(v is False for v in verdicts):
        return False, [f"rewrite rules: a firing was refuted on the tiny instance ({', '.join(names)})"]
    return True, [f"rewrite rules: {proved} of {len(verdicts)} firings proved on the tiny "
                  f"instance ({', '.join(names)})"]


def power_note(gradients: dict) -> str:
    """The notation line's word for a matrix power, where a gradient has one."""
    for g in gradients.values():
        for n in walk(g):
            if isinstance(n, MatPow):
                return f"; {ExprTextPrinter()._print(n)} is a matrix power (a product of equal factors)"
    return ""


def simplify(node: Node, proof: RuleProof | None = None, fired: dict | None = None) -> Node:
    """``node`` rewritten toward the form a person writes (the value is unchanged).

    Within :data:`symgrad.budget.SIMPLIFY_SECONDS`: a gradient too large to tidy in
    time (or too deep for the stack) is kept as swept, which is correct, only longer.
    ``proof`` proves each firing of a rule; ``fired`` collects rule name → verdicts.
    """
    for _ in range(3):  # a firing the proof refutes is not applied in the next pass
        s = _Simplifier(proof=proof)
        known = set(proof.results) if proof is not None else set()
        try:  # SymPy's simplify of the bodies shares half the clock: past it, their forms as
            # they are, not the whole gradient as swept (1 ⊙ 64 ⊙ …)
            with deadline(budget.SIMPLIFY_SECONDS), budget.shared_budget(budget.SIMPLIFY_SECONDS / 2):
                out = s(node)
        except EXHAUSTED:
            out = node
        if proof is None:
            break
        # the new firings proved after the pass, each on its own clock (a slow proof never
        # costs the simplification its form)
        new = [proof(b, a) for _, b, a in s.firings if (b, a) not in known]
        if False not in new:
            break
    if fired is not None:
        if proof is not None:  # the verdicts, as proved after the pass
            s.fired = {}
            for name, before, after in s.firings:
                s.fired.setdefault(name, []).append(proof.results.get((before, after)))
        for name, verdicts in s.fired.items():
            fired.setdefault(name, []).extend(verdicts)
    return out



# --------------------------------------------------------------------------
# The derivation
# --------------------------------------------------------------------------


@dataclass
class ExprDerivation:
    problem: ExprProblem
    derivation: Derivation  # the reverse sweep, as swept
    raw: dict[str, Node]  # ∂f/∂name as swept
    gradients: dict[str, Node]  # simplified
    facts: list[tuple[str, sp.Expr, sp.Expr]]  # (arg, body, ∂body/∂arg) of each elementwise map
    rewrites: dict = field(default_factory=dict)  # name -> {rule: verdicts of its firings}

    def text(self, steps: bool = False) -> str:
        return render(self, "text", steps)

    def latex(self, steps: bool = False) -> str:
        return render(self, "latex", steps)

    def markdown(self, steps: bool = False) -> str:
        return render(self, "markdown", steps)

    def __str__(self) -> str:
        return self.text()

    # -- display (symgrad.display): Jupyter, and a one-line repr --------------------------

    def _repr_latex_(self) -> str:
        return "$$" + self.latex().strip() + "$$"

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def __repr__(self) -> str:
        from symgrad.display import short_repr

        return short_repr("ExprDerivation", f"f = {self.problem.text}",
                          f"(∂f/∂{', ∂f/∂'.join(self.gradients)})")


def rule_proof(problem: ExprProblem) -> RuleProof | None:
    """The tiny explicit instance on which rule firings are proved (None when a concrete
    size is too large to expand)."""
    if reduced(problem, PROOF_SIZE) is not problem:
        return None
    return RuleProof(explicit_env(problem))


def derive_expr(problem: ExprProblem, prove_rules: bool = False) -> ExprDerivation:
    """The gradients of ``problem`` by the reverse sweep, then simplified (each firing of a
    rewrite rule proved on a tiny instance when ``prove_rules``)."""
    space = problem.space
    f = Sym("f", (sp.Integer(1), sp.Integer(1)), "value")
    params = [space.matrices[w][0] for w in problem.wrt]
    data = [s for s, _ in space.matrices.values() if s.role == "data"]
    graph = Graph.of([Assignment(f, stable_forms(problem.root))], params, data)
    d = derive_graph(graph)
    raw = {}
    for eq in d.steps:
        for w in problem.wrt:
            if eq.target.name == naming.cotangent(w):
                raw[w] = eq.rhs
    for w in problem.wrt:  # f depends on w only through zero derivatives (heaviside(w))
        raw.setdefault(w, _full(sp.S.Zero, space.matrices[w][1]))
    proof = rule_proof(problem) if prove_rules else None
    rewrites: dict[str, dict] = {w: {} for w in problem.wrt}
    gradients = {}
    for w in problem.wrt:
        used: list = []
        gradients[w] = problem.assume.simplified(
            raw[w], lambda g, w=w: simplify(g, proof, rewrites[w]), used)
        facts = problem.assume.constrain(proof.env) if proof is not None else None
        for step, before, after in used:  # each use of a fact: a step, proved where it holds
            verdict = proof(before, after, facts) if proof is not None else None
            rewrites[w].setdefault(step, []).append(verdict)
    facts = []
    for n in walk(problem.root):
        if isinstance(n, Map):
            for s, _ in n.args:
                dd = sp.diff(n.expr, s)
                if dd.free_symbols:
                    facts.append((str(s), n.expr, tidy(dd)))
    return ExprDerivation(problem, d, raw, gradients, facts, rewrites)


# --------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=True)
class _Spread(Broadcast):
    """A broadcast shown explicitly (an operand of a matrix product: 𝟏 x, x 𝟏ᵀ)."""


def _coef_names(problem: ExprProblem | None, latex: bool) -> dict:
    out = {}
    if problem is None:
        return out
    for name, s in problem.space.scalars.items():
        pretty = _COEF_NAMES.get(name)
        if pretty:
            out[s] = sp.latex(sp.Symbol(name.rstrip("_"))) if latex else pretty
    return out


def _spread_operands(node: MatMul) -> MatMul:
    a, b = (_Spread(x.x, x.shape) if isinstance(x, Broadcast) else x for x in (node.a, node.b))
    return MatMul(a, b)


def _prec(printer, node: Node) -> int | None:
    if isinstance(node, _Spread):
        (r, c), (xr, xc) = node.shape, node.x.shape
        if (xr == 1 and r != 1) or (xc == 1 and c != 1):
            return MATMUL
        return printer.prec(node.x)
    if isinstance(node, Transpose) and isinstance(node.x, ColSum):  # Sᵀ 𝟏: a product
        return MATMUL
    return None


def _atomic(s: str) -> bool:
    """A printed scalar that needs no brackets as a denominator (N, σ², 2, √d)."""
    s = s[1:] if s.startswith("√") and len(s) > 1 else s
    return all(ch.isalnum() or ch in "²³⁴⁵⁶⁷⁸⁹⁰¹_" for ch in s)


class _ScalarProducts:
    """A scalar printer of elementwise bodies in which a product of scalars (numbers,
    sizes, coefficients, 1×1 arguments) is written as a product, never with ⊙: 2λ, m n;
    ``matrices`` are the symbols that stand for matrix-valued arguments (⊙ stays between
    them and anything: 2 ⊙ X, λ ⊙ W)."""

    juxtaposed = " "

    tight = True  # a number touches the symbol it multiplies (2λ); LaTeX spaces it

    def __init__(self, names=None, elementwise: bool = True, matrices=frozenset()):
        super().__init__(names, elementwise)
        self.elementwise = elementwise
        self.matrices = frozenset(matrices)

    def _print_Mul(self, e):
        c, rest = e.as_coeff_Mul()
        if (c.is_Rational and c.p == 1 and c.q > 1 and rest.is_Pow and rest.exp.is_number
                and rest.exp.is_negative):  # 1/(2√x), not 1/√x/2
            return f"1/({c.q}{self._print(rest.base ** -rest.exp)})"
        if not self.elementwise:
            return super()._print_Mul(e)
        if e.free_symbols & self.matrices:
            return self._matrix_product(e)
        if c.is_Integer and c > 1 and not isinstance(rest, sp.Add) and self.tight:
            r = self._print(rest)
            if r[:1].isalpha():
                return f"{c}{r}"  # 2λ, 2n₀ (as a slice's bound prints)
        times, self.times = self.times, self.juxtaposed
        try:
            return super()._print_Mul(e)
        finally:
            self.times = times


    def _matrix_product(self, e) -> str:
        """One rule for ⊙: it stands only between two matrix-valued factors; a scalar
        factor (a number, a size, a coefficient) is written before them as a product:
        2 X, 2λ W ⊙ V, never 2 ⊙ X."""
        c, rest = e.as_coeff_Mul()
        if c < 0:
            neg = -e
            return self.minus + (self._print(neg) if not isinstance(neg, sp.Add)
                                 else f"{self.lparen}{self._print(neg)}{self.rparen}")
        p, q = sp.fraction(c)
        factors = sp.Mul.make_args(rest)
        scalars = [f for f in factors if not f.free_symbols & self.matrices
                   and not (f.is_Pow and f.exp.is_number and f.exp < 0)]
        if not scalars and p == 1 or len(scalars) == len(factors):
            return super()._print_Mul(e)
        tail = sp.Mul(*[f for f in factors if f not in scalars]) / q
        lead = sp.Mul(p, *scalars)
        head = self._print(lead)
        if isinstance(lead, sp.Add):
            head = f"{self.lparen}{head}{self.rparen}"
        if p != 1 and all(f.is_Pow and f.exp.is_number and f.exp < 0
                          for f in sp.Mul.make_args(tail) if not f.is_number):
            bottom = 1 / tail  # −3/x⁴, 6/(7x⁴): a number over the powers, never −3 1/x⁴
            low = self._print(bottom)
            if not (bottom.is_Symbol or bottom.is_Pow and bottom.base.is_Symbol):
                low = f"{self.lparen}{low}{self.rparen}"
            return f"{head}/{low}" if self.minus == "−" else rf"\frac{{{head}}}{{{self._print(bottom)}}}"
        body = self._print(tail)
        if isinstance(tail, sp.Add):
            body = f"{self.lparen}{body}{self.rparen}"
        return f"{head}{self.juxtaposed}{body}"

    def _iverson(self, value, bracket: str) -> str:
        """value [c]: ⊙ between them where the value is a matrix (X ⊙ [X > 0]), as
        between any two matrices; a scalar value is written before it (2 [X > 0])."""
        if value.free_symbols & self.matrices:
            return f"{self._bracketed(value)}{self.times}{bracket}"
        return f"{self._bracketed(value)} {bracket}"


class _TextScalar(_ScalarProducts, TextScalarPrinter):
    minus, lparen, rparen = "−", "(", ")"

    def _bracketed(self, value) -> str:
        return self._atomic(value)

    def _print_Add_terms(self, terms, pr):
        parts = [f"[{pr(cond)}]" if value == 1 else self._iverson(value, f"[{pr(cond)}]")
                 for value, cond in terms]
        return " + ".join(parts) if parts else "0"

    def _print_Integer(self, e):  # one minus sign: −2 (X⁻ᵀ)², as − everywhere in the text
        return "−" + str(-e) if e < 0 else str(e)

    def _print_Rational(self, e):
        out = super()._print_Rational(e)
        return "−" + out[1:] if out.startswith("-") else out

    def _print_Float(self, e):
        out = super()._print_Float(e)
        return "−" + out[1:] if out.startswith("-") else out


class _LatexScalar(_ScalarProducts, LatexScalarPrinter):
    tight = False
    minus, lparen, rparen = "-", r"\left(", r"\right)"

    def _bracketed(self, value) -> str:
        return self._wrap(value)

    def _print_Piecewise(self, e):
        from symgrad.printing import iverson_terms

        parts = []
        for value, cond in iverson_terms(e):
            bracket = rf"\left[{self._print(cond)}\right]"
            parts.append(bracket if value == 1 else self._iverson(value, bracket))
        return " + ".join(parts) if parts else "0"


class ExprTextPrinter(TextPrinter):
    """The network's text printer plus the expression-mode ops (I, tr, logsumexp);
    a scaled product is written −Xᵀ(…)/N rather than −(Xᵀ(…))/N."""

    scalar_printer = _TextScalar

    def __init__(self, names: dict | None = None):
        super().__init__()
        self.names = names or {}

    def coef(self, c):
        return self.scalar_printer(self.names)._print(c)

    def map_body(self, node):
        return _map_body(self, node)

    f: Map | None = None  # f's own value, printed f where a gradient holds it

    def _is_f(self, node) -> bool:
        return self.f is not None and isinstance(node, Map) and _same_map(node, self.f)

    def _print(self, expr, **kwargs):
        if self._is_f(expr):
            return "f"
        return super()._print(expr, **kwargs)

    def prec(self, node):
        if self._is_f(node):
            return ATOM
        p = _prec(super(), node)
        return super().prec(node) if p is None else p

    def _print_Scale(self, node):
        num, den = sp.fraction(node.c)
        x = node.x
        if (node.c.is_Rational and (num != 1 or den != 1) and isinstance(x, Map)
                and x.expr.is_Pow and x.expr.exp.is_number
                and x.expr.exp.is_negative):  # 1/(2√x), not 1/√x/2; −3/x⁴, not −3 1/x⁴
            return self._print_Map(Map(sp.Mul(node.c, x.expr), x.args, x.note))
        if den != 1 and self.prec(node.x) >= MATMUL:
            lead = "" if num == 1 else ("−" if num == -1 else self.coef(num) + " ")
            bottom = self.scalar_printer(self.names, elementwise=False)._print(den)
            bottom = bottom if _atomic(bottom) else f"({bottom})"  # /(2·N), never /2 ⊙ N
            return f"{lead}{self._print(node.x)}/{bottom}"
        if num == -1 and den == 1:
            if _scalar_factor(node.x) is not None:  # −det(X) X⁻ᵀ, −X⁻ᵀ/det(X): a product
                return "−" + self._print(node.x)
            return "−" + self.paren(node.x, MATMUL)
        return super()._print_Scale(node)

    def _print_Broadcast(self, node):
        return self._print(node.x)  # b added to every row, as the network formulas write it

    def _print_MatMul(self, node):
        return super()._print_MatMul(_spread_operands(node))

    def _print__Spread(self, node):  # an operand of a product: 𝟏 x, x 𝟏ᵀ or 𝟏 x 𝟏ᵀ
        (r, c), (xr, xc) = node.shape, node.x.shape
        left = "𝟏 " if xr == 1 and r != 1 else ""
        right = " 𝟏ᵀ" if xc == 1 and c != 1 else ""
        inner = self.paren(node.x, MATMUL + 1) if left else self.paren(node.x, MATMUL)
        if left and _const_value(node.x) == 1:
            return "𝟏" + right
        return f"{left}{inner}{right}"

    def _print_Ones(self, node):
        return "𝟏"

    def _print_Transpose(self, node):
        if isinstance(node.x, ColSum):  # (𝟏ᵀ S)ᵀ = Sᵀ 𝟏
            return f"{self.paren(node.x.x, ATOM)}ᵀ 𝟏"
        return super()._print_Transpose(node)

    def _print_SqNorm(self, node):
        return f"‖{self._print(node.x)}‖²"

    def _print_Hadamard(self, node):
        if _scalar_valued(node.a) and _scalar_valued(node.b):  # two scalars: a product
            return f"{self.paren(node.a, MATMUL)} {self.paren(node.b, MATMUL)}"
        # A ⊙ (a scalar c spread to A's shape): written A/c or c A
        for a, b in ((node.a, node.b), (node.b, node.a)):
            if isinstance(b, Broadcast) and tuple(b.x.shape) == (1, 1):
                if isinstance(b.x, Map):
                    num, den = sp.fraction(b.x.expr)
                    if num == 1:
                        body = self._print_Map(Map(den, b.x.args, b.x.note))
                        return f"{self.paren(a, MATMUL)}/{body}"
                return f"{self.paren(b.x, ATOM)} {self.paren(a, MATMUL)}"
        return super()._print_Hadamard(node)

    def _print_Map(self, node):
        return self.map_body(_norms(node, lambda x: f"‖{self._print(x)}‖"))


class ExprLatexPrinter(LatexPrinter):
    scalar_printer = _LatexScalar

    def __init__(self, names: dict | None = None):
        super().__init__()
        self.names = names or {}

    def coef(self, c):
        return self.scalar_printer(self.names)._print(c)

    def map_body(self, node):
        return _map_body(self, node)

    def prec(self, node):
        p = _prec(super(), node)
        return super().prec(node) if p is None else p

    def _print_Hadamard(self, node):  # A ⊙ (a scalar spread to A's shape): c A, as in text
        for a, b in ((node.a, node.b), (node.b, node.a)):
            if isinstance(b, Broadcast) and tuple(b.x.shape) == (1, 1) and not isinstance(b.x, Map):
                return f"{self.paren(b.x, ATOM)} {self.paren(a, MATMUL)}"
        return super()._print_Hadamard(node)

    def _print_Broadcast(self, node):
        return self._print(node.x)

    def _print_MatMul(self, node):
        return super()._print_MatMul(_spread_operands(node))

    def _print__Spread(self, node):
        (r, c), (xr, xc) = node.shape, node.x.shape
        left = r"\mathbf{1} " if xr == 1 and r != 1 else ""
        right = r" \mathbf{1}^{\top}" if xc == 1 and c != 1 else ""
        inner = self.paren(node.x, MATMUL + 1) if left else self.paren(node.x, MATMUL)
        if left and _const_value(node.x) == 1:
            return r"\mathbf{1}" + right
        return f"{left}{inner}{right}"

    def _print_Ones(self, node):
        return r"\mathbf{1}"

    def _print_SqNorm(self, node):
        return rf"\lVert {self._print(node.x)} \rVert_F^{{2}}"

    def _print_Map(self, node):
        return self.map_body(_norms(node, lambda x: rf"\lVert {self._print(x)} \rVert_F"))


def _map_body(printer, node: Map) -> str:
    """A body with its matrix arguments named; an argument is bracketed where it must be,
    but never as the sole argument of a function (sign(Xw − y), |Xw − y|)."""
    names = {}
    expr = node.expr
    matrices = {s for s, child in node.args if not _scalar_valued(child)}  # ⊙ only with these
    for s, child in node.args:
        txt = printer._print(child)
        if printer.prec(child) >= ATOM or _bare(expr, s, printer.prec(child)):
            names[s] = txt
            continue
        names[s] = printer.lparen + txt + printer.rparen
        alias = sp.Symbol(s.name + "_bare", real=True)
        expr = expr.replace(lambda t, s=s: isinstance(t, sp.Function | sp.Abs) and t.args == (s,),
                            lambda t, alias=alias: t.func(alias))
        names[alias] = txt
        if s in matrices:
            matrices.add(alias)
    return printer.scalar_printer({**printer.names, **names}, matrices=matrices)._print(expr)


def _scalar_valued(node: Node) -> bool:
    """A 1×1 value, or one spread to a matrix (its entries all equal)."""
    while isinstance(node, Broadcast):
        node = node.x
    return tuple(node.shape) == (1, 1)


def _bare(e: sp.Expr, s: sp.Symbol, prec: int) -> bool:
    """Whether argument ``s`` (a compound matrix of precedence ``prec``) can be printed
    without brackets in body ``e``: as the sole argument of a function (tanh(XW + b),
    |Xw − y|), or a ⊙ product anywhere but under a power."""

    def ok(t: sp.Basic) -> bool:
        if t == s:
            return False
        if isinstance(t, sp.Function | sp.Abs) and t.args == (s,):
            return True
        if isinstance(t, sp.Pow) and t.base == s:
            return False
        if isinstance(t, sp.Mul | sp.Add | sp.Rel | sp.Piecewise | sp.logic.boolalg.Boolean):
            return all(ok(a) or (a == s and prec == HADAMARD) or not a.has(s) for a in t.args)
        return all(ok(a) or not a.has(s) for a in t.args)

    return ok(e)


def _norms(node: Map, show) -> Map:
    """√‖A‖² in a body printed as ‖A‖ (a placeholder leaf named by ``show``)."""
    subs, args = {}, []
    for s, a in node.args:
        if isinstance(a, SqNorm):
            t = sp.Symbol(s.name + "_norm", positive=True)
            subs[s] = t**2
            args.append((t, Sym(show(a.x), (sp.Integer(1), sp.Integer(1)))))
        else:
            args.append((s, a))
    if not subs:
        return node
    expr = sp.powsimp(node.expr.xreplace(subs))
    return Map(expr, tuple(args), node.note)


def _inverse_of_transposed_sum(n: Node) -> Node | None:
    """(Aᵀ + Bᵀ)⁻¹ shown as (A + B)⁻ᵀ (the same matrix)."""
    if not isinstance(n, Inverse):
        return None
    x = n.x
    if isinstance(x, Add) and all(isinstance(t, Transpose) for t in x.terms):
        return Inverse(Transpose(Add(tuple(t.x for t in x.terms))))
    if isinstance(x, Sub) and isinstance(x.a, Transpose) and isinstance(x.b, Transpose):
        return Inverse(Transpose(Sub(x.a.x, x.b.x)))
    return None


def shown(g: Node) -> Node:
    """A gradient as printed: a value spread to the variable's shape shows its 𝟏
    (∂/∂X sum(X w) = 𝟏 wᵀ, not wᵀ), as an operand of a product does; (Aᵀ + Bᵀ)⁻¹ is
    shown (A + B)⁻ᵀ."""
    from symgrad.derive import transform

    g = transform(g, _inverse_of_transposed_sum)
    if isinstance(g, Add):
        return Add(tuple(shown(t) for t in g.terms))
    if isinstance(g, Sub):
        return Sub(shown(g.a), shown(g.b))
    c, inner = _coefficient(g)
    if c != 1 and isinstance(inner, Add | Sub):
        return Scale(c, shown(inner))
    if isinstance(inner, Broadcast) and _const_value(inner) is None:
        (r, k), (xr, xk) = inner.shape, inner.x.shape
        if (xr == 1 and r != 1) or (xk == 1 and k != 1):
            spread = _Spread(inner.x, inner.shape)
            return spread if c == 1 else Scale(c, spread)
    return g


_VALUES: dict = {}  # the problem's root -> f as the simplified gradients hold it


def _value_of_f(problem: ExprProblem | None) -> Map | None:
    """f itself where a gradient holds it (the Rayleigh quotient's 2 (A x − f x)/(xᵀ x)): a
    root that is a scalar function of two or more 1×1 values (a quotient uᵀ A u/(uᵀ u),
    not det(X)², which stays as it is written), simplified as the gradients are."""
    if (problem is None or "f" in problem.shapes or not isinstance(problem.root, Map)
            or len(problem.root.args) < 2):
        return None
    if problem.root not in _VALUES:
        out = simplify(problem.root)
        _VALUES[problem.root] = out if isinstance(out, Map) else None
    return _VALUES[problem.root]


def _same_map(a: Map, b: Map) -> bool:
    """The same body of the same arguments (up to the names of the body's symbols)."""
    if len(a.args) != len(b.args) or {x for _, x in a.args} != {x for _, x in b.args}:
        return False
    names = {x: sp.Symbol(f"_v{i}", real=True) for i, (_, x) in enumerate(b.args)}
    return (a.expr.xreplace({t: names[x] for t, x in a.args})
            == b.expr.xreplace({t: names[x] for t, x in b.args}))


def text(node: Node, problem: ExprProblem | None = None) -> str:
    printer = ExprTextPrinter(_coef_names(problem, False))
    printer.f = _value_of_f(problem)
    return printer._print(node)


def latex(node: Node, problem: ExprProblem | None = None) -> str:
    return ExprLatexPrinter(_coef_names(problem, True))._print(node)


#: scalar heads with a numpy form: numpy's own, and the helpers a generated module defines
_NUMPY_HEADS = frozenset(_NUMPY_NAMES) | {"sigmoid", "softplus", "erf"}
HELPERS = {
    "sigmoid": "sigmoid(u) = 1 / (1 + np.exp(-u))",
    "softplus": "softplus(u) = np.logaddexp(0, u)",
    "softmax": "softmax(Z) = E / np.sum(E, axis=1, keepdims=True) with E = "
               "np.exp(Z - np.max(Z, axis=1, keepdims=True)) (row-wise, the row maximum "
               "subtracted: no overflow)",
    "logsumexp": "logsumexp(Z, axis=None, keepdims=False) as scipy.special.logsumexp",
    "erf": "erf as scipy.special.erf",
    "logdet": "logdet(A) = np.linalg.slogdet(A)[1], log |det A|",
}


class ExprNumpyPrinter(NumpyPrinter):
    """numpy for expression mode: the one printer of the ``numpy:`` line that derive
    prints, verify's ``correct:`` line and the generated module (so they cannot differ).

    Every matrix op and scalar head the derivation can produce has a form here, written
    so that :class:`ExprBuilder` reads it back (``where`` nested for ∧/∨, Heaviside as a
    ``where`` with the left-rule value 0 at the kink, DiracDelta as 0 almost everywhere);
    anything else is a clean :class:`SymgradError`, never a name numpy does not know.
    """

    def __init__(self) -> None:
        super().__init__("np.")

    ATOM, MUL, ADD = ATOM, NP_MUL, NP_ADD  # the precedences an op's numpy() returns

    def expr(self, n, at_least: int) -> str:  # the lowering services an op's numpy() uses
        return self.wrap(self.node(n), at_least)

    def form(self, n):
        return self.node(n)

    def size(self, e) -> str:
        return self.scalar(sp.sympify(e), {})[0]

    POW = NP_POW

    def full(self, n, at_least: int) -> str:
        """``n`` as a 2-D array of its own shape: a value numpy would broadcast (a constant,
        a row spread down) is spread explicitly, for ops that read every entry (diag, kron)."""
        code = self.two_d(n)
        if numpy_shape(n) != tuple(n.shape):
            r, c = (self.size(d) for d in n.shape)
            code = (f"np.broadcast_to({code[0]}, ({r}, {c}))", ATOM)
        return self.wrap(code, at_least)

    def node(self, n):
        method = getattr(self, f"_node_{type(n).__name__}", None)
        if method is None and isinstance(n, Node) and n.declares("numpy"):
            return n.numpy(self)  # an op that declares its numpy form (ops.linalg)
        if method is None:
            raise SymgradError(WHERE, f"the gradient contains {type(n).__name__}, which has no "
                               "numpy form in this version")
        return method(n)

    def _node_ColSum(self, n):
        if isinstance(n.x, RowSum):  # the sum of all entries, as a 1×1 array
            return f"np.sum({self.node(n.x.x)[0]}, keepdims=True)", ATOM
        return f"np.sum({self.node(n.x)[0]}, axis=0, keepdims=True)", ATOM

    def scalar(self, e, names):
        if e in names:
            return names[e]
        if isinstance(e, sp.Max | sp.Min):
            fn = "np.maximum" if isinstance(e, sp.Max) else "np.minimum"
            args = [self.scalar(a, names)[0] for a in e.args]
            out = args[0]
            for a in args[1:]:
                out = f"{fn}({out}, {a})"
            return out, ATOM
        if isinstance(e, sp.Heaviside | sp.DiracDelta):  # codegen's rules: the left rule
            return self.scalar(lowerable(e), names)
        if e is sp.pi:
            return "np.pi", ATOM
        if e is sp.E:
            return "np.e", ATOM
        if isinstance(e, sp.Piecewise | sp.Rel):
            return super().scalar(e, names)
        if isinstance(e, sp.Function):
            name = _FUNCTION_NAMES.get(type(e).__name__, type(e).__name__)
            if name not in _NUMPY_HEADS:
                raise SymgradError(WHERE, f"the gradient contains {type(e).__name__}(…), which "
                                   "has no numpy form; rewrite the expression without it")
        elif isinstance(e, sp.Number) and not e.is_finite:
            raise SymgradError(WHERE, f"the gradient is not finite ({e}) for some inputs")
        elif not isinstance(e, sp.Symbol | sp.Number | sp.Add | sp.Mul | sp.Pow | sp.Piecewise
                            | sp.Rel):
            raise SymgradError(WHERE, f"the gradient contains {type(e).__name__}, which has no "
                               "numpy form in this version")
        return super().scalar(e, names)

    def _scalar_piecewise(self, pieces, names):
        (value, cond), rest = pieces[0], pieces[1:]
        if cond is sp.true or not rest:
            return self._branch(value, names)
        other = self._scalar_piecewise(rest, names)[0]
        return self.where(cond, self._branch(value, names)[0], other, names), ATOM

    def _branch(self, value, names):
        """A case's value; a whole number as a float literal (``np.where(X > 0, 1.0,
        0.0)``): an indicator is a float array, never int64."""
        if isinstance(value, sp.Integer):
            return f"{float(value)!r}", (NP_UNARY if value < 0 else ATOM)
        return self.scalar(value, names)

    def where(self, cond, yes: str, no: str, names) -> str:
        """``where`` on a condition; ∧, ∨ and ¬ as nested ``where`` (no ``&``, which the
        safe parser does not take)."""
        if cond is sp.true:
            return yes
        if cond is sp.false:
            return no
        if isinstance(cond, sp.And):
            first, *others = cond.args
            return self.where(first, self.where(sp.And(*others), yes, no, names), no, names)
        if isinstance(cond, sp.Or):
            first, *others = cond.args
            return self.where(first, yes, self.where(sp.Or(*others), yes, no, names), names)
        if isinstance(cond, sp.Not):
            return self.where(cond.args[0], no, yes, names)
        if not isinstance(cond, sp.Rel):
            raise SymgradError(WHERE, f"the gradient has a condition {cond} with no numpy form")
        return f"np.where({self.scalar(cond, names)[0]}, {yes}, {no})"

    def _node_MatMul(self, n):
        m = _spread_operands(n)
        ka, kb = _const_value(m.a), _const_value(m.b)
        if ka is not None and tuple(m.a.shape) == (1, 1):  # a 1×1 factor scales
            return self._node_Scale(Scale(ka, m.b))
        if kb is not None and tuple(m.b.shape) == (1, 1):
            return self._node_Scale(Scale(kb, m.a))
        return self.product(m.a, "@", m.b)

    def _node__Spread(self, n):
        r, c = (self.scalar(d, {})[0] for d in n.shape)
        return f"np.broadcast_to({self.node(n.x)[0]}, ({r}, {c}))", ATOM

    def _node_SqNorm(self, n):
        from symgrad.verify import POW

        return f"np.sum({self.wrap(self.node(n.x), POW + 1)}**2)", ATOM

    def _node_Eye(self, n):
        return f"np.eye({self.scalar(n.n, {})[0]})", ATOM

    def _node_Trace(self, n):
        return f"np.trace({self.node(n.x)[0]})", ATOM

    def _node_LogSumExp(self, n):
        if n.axis == 1:
            return f"logsumexp({self.node(n.x)[0]}, axis=1, keepdims=True)", ATOM
        return f"logsumexp({self.node(n.x)[0]})", ATOM

    def _node_Softmax(self, n):
        return f"softmax({self.node(n.x)[0]})", ATOM


def _broadcast_shapes(*shapes: tuple) -> tuple:
    out: tuple = ()
    for shape in shapes:
        if len(shape) > len(out):
            out, shape = shape, out
        if shape:
            out = tuple(b if a == 1 else a for a, b in zip(out, shape, strict=True))
    return out


def numpy_shape(n: Node) -> tuple:
    """The shape numpy gives the printed code of ``n`` (``()`` for a numpy scalar), which
    is smaller than ``n.shape`` where a broadcast is left to numpy's rules."""
    if isinstance(n, Broadcast):
        return numpy_shape(n.x)
    if isinstance(n, Const | SqNorm | Trace | Det | LogDet) or (
            isinstance(n, LogSumExp) and n.axis is None):
        return ()
    if isinstance(n, Scale | Softmax):
        return numpy_shape(n.x)
    if isinstance(n, Transpose):
        return tuple(reversed(numpy_shape(n.x)))
    if isinstance(n, Add):
        return _broadcast_shapes(*(numpy_shape(t) for t in n.terms))
    if isinstance(n, Sub | Hadamard):
        return _broadcast_shapes(numpy_shape(n.a), numpy_shape(n.b))
    if isinstance(n, Map):
        return _broadcast_shapes(*(numpy_shape(a) for _, a in n.args))
    return tuple(n.shape)  # names, products (operands spread), sums kept 2-D, I


def _needs_spread(g: Node) -> bool:
    """Whether numpy computes ``g``'s code at a smaller shape than ``g``'s own (a
    constant, a broadcast left to numpy): then the code is spread to the variable's shape."""
    return numpy_shape(g) != tuple(g.shape)


def gradient_code(g: Node, wrt: str) -> str:
    """∂f/∂wrt as one numpy expression of exactly wrt's shape (the printed line)."""
    code = numpy_code(g)
    if not _needs_spread(g):
        return code
    k = _const_value(g)
    if k is not None:
        if k == 1:
            return f"np.ones_like({wrt})"
        if k == 0:
            return f"np.zeros_like({wrt})"
        return f"{ExprNumpyPrinter().doprint(k)} * np.ones_like({wrt})"
    return f"{ExprNumpyPrinter().wrap((code, _code_prec(g)), NP_MUL)} * np.ones_like({wrt})"


def _code_prec(g: Node) -> int:
    return ExprNumpyPrinter().node(g)[1]


def helpers_used(code: str) -> list[str]:
    return [h for h in HELPERS if re.search(rf"(?<![\w.]){h}\(", code)]


def numpy_code(node: Node) -> str:
    return ExprNumpyPrinter().doprint(with_solves(node))  # A⁻¹ B as solve(A, B)


def _display(problem: ExprProblem) -> str:
    return ", ".join(f"{n} ({_shape_text(problem.shapes[n])})" for n in problem.shapes)


def render(d: ExprDerivation, fmt: str, steps: bool = False) -> str:
    p = d.problem
    if fmt == "latex":
        lines = [r"\begin{aligned}", rf"f &= {latex(p.root, p)} \\", *p.assume.latex_lines()]
        for w, g in d.gradients.items():
            lines.append(rf"\frac{{\partial f}}{{\partial {naming.latex(w)}}} &= {latex(shown(g), p)} \\")
        lines.append(r"\end{aligned}")
        return "\n".join(lines) + "\n"
    md = fmt == "markdown"
    lines = ["## Gradient of an expression" if md else "Expression", ""]
    lines.append(f"{'' if md else '  '}f = {'`' if md else ''}{ast.unparse(ast.parse(p.text, mode='eval'))}{'`' if md else ''}")
    lines.append(f"{'' if md else '  '}with {_display(p)}")
    lines += _assumed(p, md)
    lines += ["", "### Gradients" if md else "Gradients"]
    for w, g in d.gradients.items():
        if md:
            lines.append(f"$$\\frac{{\\partial f}}{{\\partial {naming.latex(w)}}} = {latex(shown(g), p)}$$")
            lines.append(f"numpy: `{gradient_code(g, w)}`")
        else:
            lines.append(f"  ∂f/∂{naming.text(w)} = {text(shown(g), p)}")
            lines.append(f"      numpy: {gradient_code(g, w)}")
    if steps:
        lines += ["", "### Chain rule, as swept" if md else "Chain rule (reverse sweep), before simplification"]
        for w, g in d.raw.items():
            lines.append(f"{'- ' if md else '  '}∂f/∂{naming.text(w)} = {text(g, p)}")
        lines += ["", "### Scalar derivatives found by SymPy" if md else "Scalar derivatives found by SymPy"]
        tp = ExprTextPrinter(_coef_names(p, False)).scalar_printer(_coef_names(p, False))
        for s, body, dd in d.facts:
            u = sp.Symbol("u", real=True)
            sym = sp.Symbol(s, real=True)
            b = body.xreplace({sym: u})
            lines.append(f"{'- ' if md else '  '}∂/∂u [{tp._print(b)}] = "
                         f"{tp._print(dd.xreplace({sym: u}))}")
        if not d.facts:
            lines.append(f"{'- ' if md else '  '}(none: the expression has no elementwise function)")
        lines += ["", "### Rewrite rules that fired" if md else "Rewrite rules that fired (simplification)"]
        lines += rewrite_lines(d, md)
    lines += ["", "Notation: ⊙ elementwise product, ᵀ transpose, σ the logistic sigmoid, "
              "tr the trace, I the identity; functions and powers apply elementwise"
              + power_note(d.gradients) + "."]
    used = helpers_used(" ".join(gradient_code(g, w) for w, g in d.gradients.items()))
    if used:
        lines.append("numpy lines: np is numpy; " + "; ".join(HELPERS[h] for h in used)
                     + " (defined in the generated module).")
    return "\n".join(lines) + "\n"




# --------------------------------------------------------------------------
# Evaluation (numeric instances, explicit expansion)
# --------------------------------------------------------------------------


def instance_sizes(problem: ExprProblem, k: int = 0) -> dict[sp.Symbol, int]:
    """Pairwise distinct sizes (so a formula that only holds for square shapes fails),
    assigned so that every matrix f inverts (under inv, det, logdet, solve) is invertible
    at a random draw: XᵀX with X n×m is drawn with n > m.  The one choice of sizes that
    verify's instances, ``symgrad check`` and the generated module's CHECK_SIZES share."""
    base = [3, 4, 5, 6, 7, 2, 8, 9]
    symbols = problem.sizes()
    values = [base[(i + k) % len(base)] + (2 if s == N else 0) for i, s in enumerate(symbols)]
    first = dict(zip(symbols, values, strict=True))
    inverted = [m for n in walk(problem.root) for m in _inverted(n)]
    if not inverted or len(symbols) < 2:
        return first
    import itertools

    for order in itertools.islice(itertools.permutations(range(len(symbols))), 120):
        sizes = {s: values[j] for s, j in zip(symbols, order, strict=True)}
        if _invertible_at(problem, inverted, sizes):
            return sizes
    return first


def _inverted(node: Node) -> list[Node]:
    """The matrices ``node`` needs invertible (an inverse's, a determinant's, a solve's)."""
    if isinstance(node, Inverse | Det | LogDet):
        return [node.x]
    return [node.a] if isinstance(node, Solve) else []


def _invertible_at(problem: ExprProblem, inverted: list[Node], sizes: dict) -> bool:
    """Every matrix of ``inverted`` well conditioned at a random draw at ``sizes``."""
    env = _draw(problem, sizes, np.random.default_rng([7, len(sizes)]), "real")
    scalars = {k: v for k, v in env.items() if isinstance(k, sp.Symbol)}
    try:
        with np.errstate(all="ignore"):
            for m in inverted:
                a = np.asarray(_bind(m, scalars).numeric(env), dtype=float)
                if a.ndim == 2 and a.shape[0] == a.shape[1] and not np.linalg.cond(a) < 1e10:
                    return False
    except (ArithmeticError, TypeError, ValueError, np.linalg.LinAlgError):
        return False
    return True


DRAWS = ("real", "positive", "negative")  # numeric instances, tried in this order


def numeric_env(problem: ExprProblem, seed: int = 0, k: int = 0, positive: bool = False,
                draw: str | None = None) -> dict:
    """Random values of every name: standard normal (``draw="real"``), uniform in
    [0.5, 1.5] (``"positive"``) or in [−1.5, −0.5] (``"negative"``)."""
    draw = draw or ("positive" if positive else "real")
    return _draw(problem, instance_sizes(problem, k), np.random.default_rng([seed, k]), draw)


def _draw(problem: ExprProblem, sizes: dict, rng: np.random.Generator, draw: str) -> dict:
    env: dict = dict(sizes)
    invertible = invertible_names(problem.root)
    for name, shape in problem.shapes.items():
        dims = tuple(int(sp.sympify(d).xreplace(sizes)) for d in shape)
        a = rng.standard_normal(dims) if draw == "real" else rng.uniform(0.5, 1.5, dims)
        a = -a if draw == "negative" else a
        a = problem.assume.draw(name, a, real=draw == "real") if problem.assume else a
        if name in invertible:  # under inv/det/logdet/solve: well conditioned, det > 0
            a = condition(a)
        if name in problem.space.scalars:
            env[problem.space.scalars[name]] = float(a.reshape(-1)[0])
        else:
            env[name] = a
    return env


def explicit_env(problem: ExprProblem, sizes: dict[sp.Symbol, int] | None = None) -> dict:
    """Every entry a SymPy symbol, at tiny concrete sizes (2, 3, …)."""
    if sizes is None:
        sizes = {s: 2 + (i % 2) for i, s in enumerate(problem.sizes())}
    env: dict = dict(sizes)
    for name, shape in problem.shapes.items():
        r, c = (int(sp.sympify(d).xreplace(sizes)) for d in shape)
        if name in problem.space.scalars:
            env[problem.space.scalars[name]] = sp.Symbol(name, positive=True)
        else:
            env[name] = sp.Matrix(r, c, lambda i, j, name=name: sp.Symbol(f"{name}_{i}{j}", real=True))
    return env


def proof_env(problem: ExprProblem) -> dict:
    """:func:`explicit_env` for a proof: where a matrix that f inverts is singular at the
    tiny sizes (det(XᵀX) ≡ 0 for a wide 2×3 X), the other assignment of 2 and 3."""
    env = explicit_env(problem)
    sizes = problem.sizes()
    if len(sizes) > 1 and degenerate(problem.root, env):
        env = explicit_env(problem, {s: 3 - (i % 2) for i, s in enumerate(sizes)})
    return env


def expand(m: sp.Matrix) -> sp.Matrix:
    """Explicit entries in plain SymPy (Exp atoms, σ and softplus written with exp)."""
    return m.applyfunc(lambda e: expand_named(e.replace(Exp, sp.exp)))


# --------------------------------------------------------------------------
# Code generation
# --------------------------------------------------------------------------

TEMPLATE = "expr_module.py.jinja"
MARKER = "Generated by symgrad"


def _templates_dir() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / TEMPLATE).exists():
            return candidate
    raise FileNotFoundError(TEMPLATE)


def input_domain(problem: ExprProblem) -> str:
    """``"positive"`` when f needs positive inputs (a log, a root or a fractional power of
    something not positive for every real input), else ``"real"``; the generated module's
    ``DOMAIN``, which its own check() and ``symgrad check`` draw from.  A function that is
    not finite at a real draw (found numerically) is ``"positive"`` too.  ``--positive``
    is the user's word instead: ``"positive"`` when it names every argument, else ``"real"``
    (the names it gives are drawn positive whatever DOMAIN says: POSITIVE)."""
    if problem.assume.positive:
        return "positive" if set(problem.args) <= set(problem.assume.positive) else "real"
    for n in walk(stable_forms(problem.root)):  # log softmax(Z) = Z − logsumexp(Z): real
        if not isinstance(n, Map):
            continue
        subs = {s: sp.Dummy(nonnegative=True) if isinstance(a, SqNorm) else sp.Dummy(real=True)
                for s, a in n.args}
        body = expand_named(n.expr.replace(Exp, sp.exp)).xreplace(subs)
        for t in sp.preorder_traversal(body):
            if isinstance(t, sp.log) and not (t.args[0].is_positive
                                              or sp.together(t.args[0]).is_positive):
                return "positive"
            if t.is_Pow and t.exp.is_integer is not True and t.base.is_nonnegative is not True:
                return "positive"

    def finite(positive: bool) -> bool:
        try:
            with np.errstate(all="ignore"):
                env = numeric_env(problem, 0, 0, positive=positive)
                return bool(np.all(np.isfinite(np.asarray(problem.root.numeric(env), float))))
        except (ArithmeticError, TypeError, ValueError):
            return False

    return "positive" if not finite(False) and finite(True) else "real"


def module_context(d: ExprDerivation, name: str = "expr") -> dict:
    p = d.problem
    args = p.args
    bind: list[str] = []
    seen: set = set()
    for n in args:
        if n in p.space.scalars:
            continue
        dims = p.shapes[n]
        new = []
        for s in dims:  # `n, _ = X.shape` for a square X, never `n, n = ...`
            new.append(str(s) if (s.is_Symbol and s not in seen) else "_")
            seen |= {s} if s.is_Symbol else set()
        if any(x != "_" for x in new):
            bind.append(f"{', '.join(new)} = {n}.shape")
    (root,), value_temps = shared_values([stable_value(p.root)], set(p.shapes))
    code = numpy_code(root)
    exprs, temps = shared_values(list(d.gradients.values()), set(p.shapes))
    grads = []
    for (w, g), e in zip(d.gradients.items(), exprs, strict=True):
        grads.append({
            "name": w, "var": f"d_{w}", "formula": text(shown(g), p), "code": numpy_code(e),
            # a constant or a 1×1 value may come out of numpy as a scalar: give it w's shape
            "spread": _needs_spread(g),
        })
    helpers = []
    value_lines = [{"var": t.name, "formula": text(rhs, p), "code": numpy_code(rhs),
                    "lines": layout(t.name, numpy_code(rhs))} for t, rhs in value_temps]
    temp_lines = [{"var": t.name, "formula": text(rhs, p), "code": numpy_code(rhs),
                   "lines": layout(t.name, numpy_code(rhs))} for t, rhs in temps]
    for g in grads:
        g["lines"] = layout(g["var"], g["code"])
    joined = code + " ".join(g["code"] for g in grads) + " ".join(
        t["code"] for t in value_lines + temp_lines)
    for helper in ("sigmoid", "softplus", "softmax", "logsumexp", "erf", "logdet"):
        if re.search(rf"(?<![\w.]){helper}\(", joined):
            helpers.append(helper)
    sizes = {str(s): v for s, v in instance_sizes(p, 0).items()}
    return {
        "name": name,
        "expr": ast.unparse(ast.parse(p.text, mode="eval")),
        "args": args,
        "signature": ", ".join(args),
        "wrt": list(p.wrt),
        "shapes": {n: tuple(str(s) for s in p.shapes[n]) for n in args},
        "scalars": [n for n in args if n in p.space.scalars],
        "bind": bind,
        "value_code": code,
        "value_lines": layout("f", code),
        "value_temps": value_lines,
        "temps": temp_lines,
        "grads": grads,
        "helpers": helpers,
        "sizes": sizes,
        "shape_text": _display(p),
        "domain": input_domain(p),
        "invertible": sorted(invertible_names(p.root)),
        **assumed_context(p),
    }


LINE_LENGTH = 100


def _top_level_breaks(code: str) -> list[int]:
    """Positions of binary operators outside brackets (where a long line may break)."""
    depth, out = 0, []
    for i, ch in enumerate(code):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and ch in "+-@*/" and code[i - 1:i] == " " and code[i + 1:i + 2] == " ":
            out.append(i)
    return out


def layout(target: str, code: str, indent: int = 4) -> list[str]:
    """``target = code`` within LINE_LENGTH, broken before top-level operators if needed."""
    pad = " " * indent
    line = f"{pad}{target} = {code}"
    breaks = _top_level_breaks(code)
    if len(line) <= LINE_LENGTH or not breaks:
        return [line]
    parts, start = [], 0
    for b in breaks:
        parts.append(code[start:b].strip())
        start = b
    parts.append(code[start:].strip())
    lines = [f"{pad}{target} = ("]
    current = ""
    for part in parts:
        candidate = f"{current} {part}".strip()
        if current and len(pad) + 4 + len(candidate) > LINE_LENGTH:
            lines.append(f"{pad}    {current}")
            current = part
        else:
            current = candidate
    lines.append(f"{pad}    {current}")
    lines.append(f"{pad})")
    return lines


def _literal(value) -> str:
    """A Python literal with double-quoted strings (as ruff format writes them)."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        inner = ", ".join(_literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


def constant(name: str, value) -> str:
    """``NAME = literal``; a long dict one item per line."""
    line = f"{name} = {_literal(value)}"
    if len(line) <= LINE_LENGTH or not isinstance(value, dict):
        return line
    items = "".join(f"    {_literal(k)}: {_literal(v)},\n" for k, v in value.items())
    return f"{name} = {{\n{items}}}"


_TRIVIAL = (Sym, Const, Eye, Ones)


def _worth_naming(n: Node) -> bool:
    if isinstance(n, _TRIVIAL) or _const_value(n) is not None:
        return False
    if isinstance(n, Transpose | Broadcast | Scale):
        return _worth_naming(n.x)
    return True


def shared_values(roots: list[Node], taken: set[str]) -> tuple[list[Node], list[tuple[Sym, Node]]]:
    """Common subexpressions, largest first, as temporaries t1, t2, … (each computed once)."""
    from symgrad.derive import transform

    temps: list[tuple[Sym, Node]] = []
    roots = [with_solves(r) for r in roots]  # A⁻¹ B as solve(A, B), before naming parts
    while True:
        counts: dict[Node, int] = {}
        for r in [*roots, *(rhs for _, rhs in temps)]:
            for n in walk(r):
                if _worth_naming(n) and not isinstance(n, Transpose | Broadcast | Scale):
                    counts[n] = counts.get(n, 0) + 1
        repeated = [n for n, k in counts.items() if k > 1]
        if not repeated:
            break
        target = max(repeated, key=lambda n: (_depth(n), -len(TextPrinter()._print(n))))
        i = len(temps) + 1
        while f"t{i}" in taken:
            i += 1
        sym = Sym(f"t{i}", target.shape, "value")
        taken.add(sym.name)
        roots = [transform(r, lambda n, target=target, sym=sym: sym if n == target else None)
                 for r in roots]
        temps = [(t, transform(rhs, lambda n, target=target, sym=sym: sym if n == target else None))
                 for t, rhs in temps]
        temps.append((sym, target))
    # a temporary is computed after those it uses (the later-found, smaller ones first),
    # and numbered in that order
    from symgrad.derive import substitute

    ordered = list(reversed(temps))
    names = {t.name: Sym(f"_t{i}", t.shape, "value") for i, (t, _) in enumerate(ordered, 1)}
    final = {f"_t{i}": Sym(f"t{i}", t.shape, "value") for i, (t, _) in enumerate(ordered, 1)}

    def rename(n: Node) -> Node:
        return substitute(substitute(n, names), final)

    return [rename(r) for r in roots], [(rename(t), rename(rhs)) for t, rhs in ordered]


def generate_expr(d: ExprDerivation, name: str = "expr") -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_templates_dir())),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pyrepr"] = _literal
    env.globals["constant"] = constant
    return env.get_template(TEMPLATE).render(**module_context(d, name))


def write_module(path: Path, source: str, force: bool) -> bool:
    """Write the module through symgrad's one write path (:mod:`symgrad.files`): checked
    target, header with the hash of the body, atomic; returns whether the file changed."""
    from symgrad import files
    from symgrad.spec import check_module_path

    if str(path) != files.STDOUT:
        check_module_path(path)  # random.py would import itself
    return files.write_text(path, files.stamp(source, "--expr"), force=force)


# --------------------------------------------------------------------------
# Verification of a hand-derived gradient
# --------------------------------------------------------------------------

RTOL = 1e-8
EXACT = 1e-12  # numeric agreement that counts as exact when no proof decides


@dataclass
class ExprVerdict:
    ok: bool
    lines: list[str]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    # -- display (symgrad.display): Jupyter, and a one-line repr --------------------------

    @property
    def kind(self) -> str:
        """The display class: pass, fail or undecided (``NOT DECIDED``)."""
        head = self.lines[0] if self.lines else ""
        return "pass" if self.ok else "undecided" if head.startswith("NOT DECIDED") else "fail"

    def _parts(self) -> tuple[str, str, list[tuple[str, list[str]]]]:
        """(verdict word, the rest of the first line, [(label, lines)]) from ``lines``: a
        label is a line ``  label: text``; deeper lines continue it."""
        head = self.lines[0] if self.lines else ""
        word, _, rest = head.partition(": ")
        items: list[tuple[str, list[str]]] = []
        for line in self.lines[1:]:
            label, sep, value = line.strip().partition(":")
            if line.startswith("  ") and not line.startswith("   ") and sep:
                items.append((label, [value.strip()] if value.strip() else []))
            elif not line.startswith(" "):
                items.append(("", [line]))
            elif items:
                items[-1][1].append(line.strip())
        return word, rest, items

    def _code(self, label: str) -> str:
        for key, values in self._parts()[2]:
            if key == label and values:
                return values[0]
        return ""

    def _repr_html_(self) -> str:
        from symgrad import display as h

        word, rest, items = self._parts()
        sides = [(label, self._code(label)) for label in ("yours", "correct")]
        sides = [(label, code) for label, code in sides if code]
        table = ('<table class="symgrad-table symgrad-sides"><thead><tr>'
                 + "".join(f"<th>{label}</th>" for label, _ in sides) + "</tr></thead><tbody><tr>"
                 + "".join(f"<td>$${h.formula_latex(c)}$$</td>" for _, c in sides) + "</tr><tr>"
                 + "".join(f"<td><code>{h.escape(c)}</code></td>" for _, c in sides)
                 + "</tr></tbody></table>")
        shown = [(k, v) for k, v in items if k not in ("yours",)]
        evidence = h.definitions(
            (k or "expression", "<br>".join(h.escape(x) for x in v)) for k, v in shown if v)
        title = f"{h.badge(self.kind, word)} {h.escape(rest)}"
        return h.panel(self.kind, title, table, evidence, what="verdict")

    def _repr_markdown_(self) -> str:
        from symgrad import display as h

        word, rest, items = self._parts()
        yours, correct = self._code("yours"), self._code("correct")
        lines = [f"**{h.md_escape(word)}** — {h.md_escape(rest)}", "",
                 "| yours | correct |", "|---|---|",
                 f"| $${h.formula_latex(yours)}$$ | "
                 + (f"$${h.formula_latex(correct)}$$ |" if correct else " |"),
                 f"| `{yours}` | " + (f"`{correct}` |" if correct else " |"), ""]
        for k, v in items:
            if k != "yours" and v:
                lines.append(f"- **{h.md_escape(k or 'expression')}**: "
                             + "; ".join(h.md_escape(x) for x in v))
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        from symgrad.display import short_repr

        word = self._parts()[0]
        return short_repr("ExprVerdict", word, f"yours = {self._code('yours')}")


def _relerr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-12)))


def _bind(node: Node, scalars: dict) -> Node:
    """``node`` with the values of scalar names (p, λ, sizes) put into its elementwise
    bodies, which :meth:`Map.numeric` evaluates as they stand."""
    from symgrad.derive import transform

    def fn(n: Node) -> Node | None:
        if isinstance(n, Map) and n.expr.free_symbols & set(scalars):
            body = n.expr.xreplace({s: sp.Float(v) if isinstance(v, float) else v
                                    for s, v in scalars.items()})
            return Map(body, tuple((s, _bind(a, scalars)) for s, a in n.args), n.note)
        return None

    return transform(node, fn)


def _values(node: Node, env: dict, shape) -> np.ndarray:
    scalars = {k: val for k, val in env.items() if isinstance(k, sp.Symbol)}
    v = np.asarray(_bind(node, scalars).numeric(env), dtype=float)
    dims = tuple(int(sp.sympify(x).xreplace({k: val for k, val in env.items()
                                              if isinstance(k, sp.Symbol)})) for x in shape)
    return np.broadcast_to(v, dims)


def _numpy_shape(formula: str, space: Space) -> tuple:
    """The numpy shape of ``formula`` (``sum(X, axis=0)`` is 1-D, (n,)), which the tree's
    2-D shape does not keep."""
    from symgrad.expr import validate

    source = ast.unparse(validate(formula, where="formula", allow_matrix=True, numpy_forms=True))
    builder = ExprBuilder(space, where="formula", source=source)  # type: ignore[arg-type]
    value = builder.build(ast.parse(source, mode="eval"))
    return tuple(value.shape) if isinstance(value, Term) else ()


def verify_expr(problem: ExprProblem, wrt: str, formula: str, seed: int = 0) -> ExprVerdict:
    """Is ``formula`` (numpy syntax over the same names) ∂f/∂``wrt``?"""
    if wrt not in problem.wrt:
        raise SymgradError("--wrt", f"'{wrt}' is not differentiated")
    full = problem
    big = any(_entries(shape) > NUMERIC_ENTRIES for shape in problem.shapes.values())
    problem = reduced(problem, 10, start=5) if big else problem  # numeric instances: bounded
    d = derive_expr(problem)
    correct = d.gradients[wrt]
    target = problem.shapes[wrt]
    mine = build(formula, problem.space, where="formula", scalar=False)
    partial = f"∂f/∂{naming.text(wrt)}"
    head = [f"{partial} for f = {ast.unparse(ast.parse(problem.text, mode='eval'))}",
            f"  yours:   {formula}", *_assumed_verify(problem, wrt)]
    fix = [f"  correct: {gradient_code(correct, wrt)}", f"           = {text(shown(correct), problem)}"]
    shape = tuple(mine.shape)
    if shape != tuple(target) and not (shape == (1, 1)):
        given = _numpy_shape(formula, problem.space)  # a 1-D array is kept 1×n inside
        if len(given) == 1 and len(target) == 2:
            return ExprVerdict(False, [
                f"WRONG: your formula is 1-D, shape {_shape_text(given)}"
                + (" (.T leaves a 1-D array as it is)" if ".T" in formula else "")
                + f", but {partial} is {_shape_text(target)}, shape "
                f"({', '.join(map(str, target))})", *head, *fix])
        if shape == (target[1], target[0]):
            same = _transposed_value(problem, correct, mine, target, seed)  # by value too
            what = ("yours = correctᵀ" if same else "and transposed it still differs"
                    if same is False else "not compared by value")
            return ExprVerdict(False, ["WRONG: your formula is transposed "
                                       f"(it is {_shape_text(shape)}; {partial} is "
                                       f"{_shape_text(target)}; {what})", *head, *fix])
        return ExprVerdict(False, [f"WRONG: shape {_shape_text(shape)}, but {partial} is "
                                   f"{_shape_text(target)}", *head, *fix])
    errors, ratios = [], []
    rows, instances = [], []
    for k in range(3):
        for draw in DRAWS:  # the first kind of input where the gradient is finite
            env = numeric_env(problem, seed, k, draw=draw)
            with np.errstate(all="ignore"):
                try:
                    c = _values(correct, env, target)
                except np.linalg.LinAlgError:  # a singular draw: the next kind of input
                    continue
                try:
                    u = _values(mine, env, target)
                except np.linalg.LinAlgError:  # your formula inverts a singular matrix
                    u = np.full(c.shape, np.nan)
            if np.all(np.isfinite(c)):
                break
        else:
            return ExprVerdict(False, [
                f"NOT DECIDED: {partial} is not finite at random real, positive or negative "
                "inputs (it overflows or leaves its domain), so there is no numeric evidence",
                *head, *fix])
        errors.append(_relerr(u, c))
        instances.append((env, u, c))
        sizes = " ".join(f"{s}={v}" for s, v in instance_sizes(problem, k).items())
        rows.append(f"    instance {k + 1} ({sizes}): max relative error {errors[-1]:.1e}")
        mask = np.abs(c) > 1e-9 * max(1.0, float(np.max(np.abs(c))))  # x⁶²: tiny entries,
        mask = mask if np.any(mask) else np.abs(c) > 1e-300  # yet a ratio of them
        if np.any(mask):
            ratios.append(np.median(u[mask] / c[mask]))
    if problem is not full:
        rows.append(f"    ({_sizes_note(full, problem)}; the same text at those sizes)")
    if max(errors) <= RTOL:
        proved, proof = _prove(full, wrt, formula)
        evidence = ["  evidence:", *rows, f"    symbolic: {proof}"]
        if proved is False:  # close in floating point, yet another formula
            return ExprVerdict(False, [f"WRONG: {partial} differs from your formula (by less "
                                       f"than {RTOL:g} relative at the random points)",
                                       *head, *evidence, *fix])
        if proved is None and max(errors) > EXACT:
            return ExprVerdict(False, [f"NOT DECIDED: {partial} agrees within {RTOL:g} but not "
                                       "exactly, and the proof did not decide", *head,
                                       *evidence, *fix])
        return ExprVerdict(True, [f"CORRECT: {partial} = {formula}", *head[1:], *evidence])
    diag = _convention(problem, wrt, instances) or _diagnosis(
        problem, correct, target, instances, ratios)
    hint = _assumption_hint(problem, wrt, mine, seed) if not diag else ""
    return ExprVerdict(False, [f"WRONG: {partial} differs from your formula", *head, "  evidence:",
                               *rows, *([diag] if diag else []), *([hint] if hint else []), *fix])


def _transposed_value(problem: ExprProblem, correct: Node, mine: Node, target, seed: int
                      ) -> bool | None:
    """Whether yoursᵀ = correct at three random instances (None: no finite instance)."""
    seen = False
    for k in range(3):
        env = numeric_env(problem, seed, k)
        with np.errstate(all="ignore"):
            try:
                c = _values(correct, env, target)
                u = _values(Transpose(mine), env, target)
            except np.linalg.LinAlgError:
                continue
        if not np.all(np.isfinite(c)):
            continue
        seen = True
        if _relerr(u, c) > RTOL:
            return False
    return True if seen else None


def _convention(problem: ExprProblem, wrt: str, instances: list) -> str:
    """For a symmetric ``wrt``: yours = G + Gᵀ − diag(diag(G)) (= 2G − diag(diag(G)) at a
    symmetric point), the derivative with respect to a symmetric matrix, where symgrad
    gives G, the unconstrained gradient."""
    if wrt not in problem.assume.symmetric:
        return ""
    with np.errstate(all="ignore"):
        if not all(_relerr(u, c + c.T - np.diag(np.diag(c))) <= RTOL for _, u, c in instances):
            return ""
    g = naming.text(wrt)
    return (f"  diagnosis: yours is the symmetric-matrix derivative 2G − diag(diag(G)) of "
            f"G = ∂f/∂{g} (the Matrix Cookbook's convention for a symmetric {g}, §2.8); symgrad "
            f"gives G, the unconstrained gradient (each entry of {g} varied on its own)")


def _assumption_hint(problem: ExprProblem, wrt: str, mine: Node, seed: int) -> str:
    """One line where your formula is right under a fact not stated (rowsum(Y) = 1 for a
    data matrix, A symmetric for a square one): the option to add; "" when none makes it
    right."""
    a = problem.assume
    options = []
    for name, (r, c) in problem.shapes.items():
        if name == wrt or name in problem.space.scalars:
            continue
        if c != 1 and r != 1 and name not in a.rowsum and name not in a.symmetric:
            options.append((f'--assume "rowsum({name}) = 1"', f"rowsum({name}) = 1",
                            Assumptions(a.symmetric, (*a.rowsum, name), a.positive)))
        if r == c and r != 1 and name not in a.symmetric and name not in a.rowsum:
            options.append((f"--symmetric {name}", f"{name} is symmetric",
                            Assumptions((*a.symmetric, name), a.rowsum, a.positive)))
    import dataclasses

    for flag, fact, assume in options[:6]:
        other = dataclasses.replace(problem, assume=assume)
        try:
            correct = derive_expr(other).gradients[wrt]
        except SymgradError:
            continue
        target, ok = problem.shapes[wrt], True
        for k in range(3):
            env = numeric_env(other, seed, k)
            with np.errstate(all="ignore"):
                try:
                    c, u = _values(correct, env, target), _values(mine, env, target)
                except np.linalg.LinAlgError:
                    ok = False
                    break
            if not (np.all(np.isfinite(c)) and _relerr(u, c) <= RTOL):
                ok = False
                break
        if ok:
            return f"  hint: your formula is right if {fact}: add {flag}"
    return ""


def _diagnosis(problem: ExprProblem, correct: Node, target, instances: list,
               ratios: list) -> str:
    """What is wrong with your formula, each candidate confirmed on every instance (yours
    ≈ the corrected gradient within RTOL) before it is named; "" when none is."""

    def holds(fix) -> bool:
        with np.errstate(all="ignore"):
            return all(_relerr(u, fix(env, c)) <= RTOL for env, u, c in instances)

    if ratios and len(ratios) == len(instances) and abs(ratios[0]) > 1e-12:
        r = float(ratios[0])
        if not np.isclose(r, 1) and holds(lambda env, c: r * c):
            if np.isclose(r, -1):
                return "  diagnosis: sign (your formula is the negative of the gradient)"
            return f"  diagnosis: off by a constant factor (yours = {r:g} × correct)"
        for size in problem.sizes():
            values = [instance_sizes(problem, k)[size] for k in range(len(instances))]
            for power, word in ((1, f"{size}"), (-1, f"1/{size}")):
                scaled = [q / v**power for q, v in zip(ratios, values, strict=True)]
                f = float(scaled[0])
                if abs(f) > 1e-12 and holds(lambda env, c, f=f, s=size, p=power:
                                            f * env[s] ** p * c):
                    lead = "" if np.isclose(f, 1) else ("−" if np.isclose(f, -1) else f"{f:g}·")
                    return f"  diagnosis: off by a factor {lead}{word} (yours = {lead}{word} × correct)"
    if len(target) == 2 and target[0] == target[1] and holds(lambda env, c: c.T):
        return "  diagnosis: your formula is transposed (yours = correctᵀ)"
    for sign, term in _signed_terms(correct):
        def t(env, sign=sign, term=term):
            return sign * _values(term, env, target)

        word = "+" if sign > 0 else "−"
        if holds(lambda env, c, t=t: c - t(env)):
            return f"  diagnosis: missing term {word} {text(term, problem)}"
        if holds(lambda env, c, t=t: c + t(env)):
            return f"  diagnosis: an extra term {word} {text(term, problem)}"
    return ""


def is_zero(e: sp.Expr, seed: int = 0) -> bool | None:
    """e = 0 for every value of its symbols: True (proved), False (a point where it is not),
    None (undecided).  Case splits (piecewise, sign, |·|) that simplify cannot decide are
    evaluated exactly at random rational points instead (evidence, reported as such)."""
    import random

    cases = e.has(sp.Piecewise, sp.sign, sp.Abs)
    if not cases and not budget.too_large_to_expand(e):  # else: at points only (undecided)
        if e.has(sp.tanh, sp.sinh, sp.cosh) and sp.cancel(sp.expand(e.rewrite(sp.exp))) == 0:
            return True  # hyperbolic functions as exponentials: a rational function of them
        if sp.simplify(e) == 0:
            return True
    rng = random.Random(seed)
    symbols = sorted(e.free_symbols, key=str)
    for _ in range(6):
        point = {}
        for x in symbols:
            v = sp.Rational(rng.randint(-30, 30), rng.randint(1, 7))
            point[x] = abs(v) + 1 if x.is_positive else v
        value = sp.N(e.xreplace(point), 30)
        if value != 0 and abs(value) > 1e-25:
            return False
    return True if cases else None


PROOF_SIZE = 3  #: concrete sizes above this are reduced for a proof by expansion
PROOF_SECONDS = 20.0  #: the whole proof of ``derive --expr --prove``
NUMERIC_ENTRIES = 10**5  #: arrays larger than this are reduced for numeric evidence


def reduced(problem: ExprProblem, limit: int, start: int = 2) -> ExprProblem:
    """The same expression with every concrete size above ``limit`` replaced by a small
    distinct one (equal sizes stay equal), re-parsed: its own derivation, at a size where
    expansion and numeric instances are cheap.  ``problem`` itself when nothing is large."""
    sizes = {int(d) for shape in problem.shapes.values() for d in shape if d.is_Integer}
    large = sorted(v for v in sizes if v > limit)
    if not large:
        return problem
    free = (v for v in range(start, 10**6) if v not in sizes)
    mapping = {v: next(free) for v in large}

    def dim(d: sp.Expr) -> str:
        return str(mapping.get(int(d), int(d))) if d.is_Integer else str(d)

    items = [f"{n}={dim(r)},{dim(c)}" for n, (r, c) in problem.shapes.items()]
    try:
        return parse_problem(problem.text, items, problem.wrt, problem.assume)
    except SymgradError:  # sizes tied by the expression (kron(A, B) beside a 4×6 C): as given
        return problem


def _sizes_note(problem: ExprProblem, small: ExprProblem) -> str:
    if small is problem:
        return ""
    changed = [f"{n} {_shape_text(problem.shapes[n])}→{_shape_text(small.shapes[n])}"
               for n in problem.shapes if problem.shapes[n] != small.shapes[n]]
    return "sizes reduced: " + ", ".join(changed)


def prove(d: ExprDerivation, seconds: float = PROOF_SECONDS) -> tuple[bool, list[str]]:
    """Each gradient against SymPy's entrywise derivative of the expanded expression, on a
    tiny instance (sizes 2 and 3, every entry a symbol) whatever the sizes given: concrete
    sizes above :data:`PROOF_SIZE` are reduced (:func:`reduced`).  Within ``seconds``;
    what is not decided by then is reported as not decided."""
    original = d.problem
    small = reduced(original, PROOF_SIZE)
    if small is not original:
        d = derive_expr(small)
    p = d.problem
    env = proof_env(p)
    sizes = ", ".join(f"{s}={v}" for s, v in env.items()
                      if isinstance(s, sp.Symbol) and isinstance(v, int)) or "as given"
    note = _sizes_note(original, small)
    ok, lines = True, []
    constrain = p.assume.constrain(env)  # after differentiating: the facts at the point
    try:
        with deadline(seconds):
            f = expand(p.root.explicit(env))[0, 0]
    except EXHAUSTED:
        return True, [f"not decided symbolically: expanding f took over {seconds:g} s"]
    for w, g in d.gradients.items():
        verdicts: list[bool | None] = []
        try:
            with deadline(seconds / len(d.gradients)):
                mine = expand(g.explicit(env))
                entries = env[w]
                for i in range(entries.rows):
                    for j in range(entries.cols):
                        verdicts.append(is_zero(constrain(mine[i, j] - sp.diff(f, entries[i, j]))))
        except EXHAUSTED:
            verdicts.append(None)
        if all(v is True for v in verdicts):
            lines.append(f"∂f/∂{naming.text(w)}: proved equal to the entrywise derivative ({sizes})")
        elif any(v is False for v in verdicts):
            ok = False
            lines.append(f"∂f/∂{naming.text(w)}: DIFFERS from the entrywise derivative ({sizes})")
        else:
            lines.append(f"∂f/∂{naming.text(w)}: not decided symbolically ({sizes})")
    if note:
        lines.append(note)
    rules_ok, rule_lines = rule_proof_lines(d)
    return ok and rules_ok, lines + rule_lines


def _signed_terms(node: Node, sign: int = 1) -> list[tuple[int, Node]]:
    """The terms of a sum with their signs (a single term if ``node`` is not a sum), then
    those of each term multiplied out where a factor is a sum ((B + Bᵀ) X: B X and Bᵀ X,
    the term a hand derivation forgets), at most ``_TERMS`` in all."""
    terms = _sum_terms(node, sign)
    out = list(terms)
    for s, t in terms:
        spread = _spread_terms(t, s)
        if len(spread) > 1 and len(out) + len(spread) <= _TERMS:
            out += spread
    return out


_TERMS = 16  #: candidate terms the missing/extra-term diagnosis tries


def _sum_terms(node: Node, sign: int) -> list[tuple[int, Node]]:
    if isinstance(node, Add):
        return [t for x in node.terms for t in _sum_terms(x, sign)]
    if isinstance(node, Sub):
        return _sum_terms(node.a, sign) + _sum_terms(node.b, -sign)
    return [(sign, node)]


def _spread_terms(node: Node, sign: int) -> list[tuple[int, Node]]:
    """``node`` multiplied out over the sums among its factors (products, scalings)."""
    if isinstance(node, Add | Sub):
        return [x for s, t in _sum_terms(node, sign) for x in _spread_terms(t, s)]
    if isinstance(node, MatMul):
        left, right = _spread_terms(node.a, 1), _spread_terms(node.b, 1)
        if len(left) * len(right) <= _TERMS:
            return [(sign * sa * sb, MatMul(a, b)) for sa, a in left for sb, b in right]
    if isinstance(node, Scale):
        return [(s, Scale(node.c, t)) for s, t in _spread_terms(node.x, sign)]
    return [(sign, node)]


def _prove(problem: ExprProblem, wrt: str, formula: str,
           seconds: float = 5.0) -> tuple[bool | None, str]:
    """``formula`` against the derived ∂f/∂wrt, expanded on a tiny instance (concrete sizes
    reduced as for :func:`prove`), within ``seconds``: (True proved | False differs |
    None undecided, the evidence in words)."""
    small = reduced(problem, PROOF_SIZE)
    env = proof_env(small)
    sizes = ", ".join(f"{s}={v}" for s, v in env.items()
                      if isinstance(s, sp.Symbol) and isinstance(v, int))
    if small is not problem:
        sizes = ", ".join(x for x in (sizes, _sizes_note(problem, small)) if x)
    try:
        with deadline(seconds):
            a = build(formula, small.space, where="formula", scalar=False)
            b = derive_expr(small).gradients[wrt]
            diff = expand(a.explicit(env)) - expand(b.explicit(env))
            constrain = small.assume.constrain(env)
            verdicts = [is_zero(constrain(e)) for e in diff]
    except EXHAUSTED:
        return None, f"not decided (over the {seconds:g} s budget; numeric evidence only)"
    except Exception:  # noqa: BLE001 - a proof is extra evidence
        return None, "not decided (numeric evidence only)"
    if all(v is True for v in verdicts):
        return True, f"proved equal entry by entry on a tiny instance ({sizes or 'as given'})"
    if any(v is False for v in verdicts) and small is problem:
        return False, f"DIFFERS entry by entry on a tiny instance ({sizes or 'as given'})"
    return None, "not decided (numeric evidence only)"


# --------------------------------------------------------------------------
# Commands (routed here by symgrad.cli when --expr is given)
# --------------------------------------------------------------------------


def _problem_from(args: argparse.Namespace) -> ExprProblem:
    if not args.wrt:
        raise SymgradError("--wrt", "name the variable(s) to differentiate, e.g. --wrt w")
    return parse_problem(args.expr, args.shape or [], args.wrt, _assumptions(args))


def _assumptions(args: argparse.Namespace) -> Assumptions:
    return Assumptions.parse(getattr(args, "symmetric", None) or (),
                             getattr(args, "assume", None) or (),
                             getattr(args, "positive", None) or ())


def cmd_derive(args: argparse.Namespace) -> int:
    d = derive_expr(_problem_from(args), prove_rules=getattr(args, "prove", False))
    return write_derivation(d, args, prove)


def write_derivation(d, args: argparse.Namespace, prove_fn) -> int:
    """derive's output of ``d`` (gradients here, Hessians in symgrad.hessian) in the asked
    format, then with --prove the proof ``prove_fn(d)``'s lines; the exit status."""
    sys.stdout.write({"text": d.text, "latex": d.latex, "markdown": d.markdown}[args.format](
        steps=args.steps))
    if getattr(args, "prove", False):
        ok, lines = prove_fn(d)
        sys.stdout.write("\nProof by scalar expansion on a tiny instance\n"
                         + "".join(f"  {line}\n" for line in lines))
        return 0 if ok else 1
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from symgrad.spec import check_module_path

    out = Path(args.output or "generated/expr_module.py")
    if str(out) != "-":
        check_module_path(out)  # before the derivation: random.py would import itself
    d = derive_expr(_problem_from(args))
    name = re.sub(r"\W", "_", out.stem) or "expr"
    if write_module(out, generate_expr(d, name), args.force) and str(out) != "-":
        print(f"symgrad: wrote {out}", file=sys.stderr)
    elif str(out) != "-":
        print(f"symgrad: {out} is up to date", file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    problem = parse_problem(args.expr, args.shape or [], args.wrt, _assumptions(args))
    if len(problem.wrt) != 1:
        raise SymgradError("--wrt", "verify checks one gradient at a time")
    verdict = verify_expr(problem, problem.wrt[0], args.formula, seed=args.seed)
    sys.stdout.write(verdict.text())
    return 0 if verdict.ok else 1


_ = (Ones, Softmax, HADAMARD, sigmoid)
