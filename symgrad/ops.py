"""Matrix-level expressions and ops, each with its vector-Jacobian rule.

A network is a list of assignments ``Z1 = X W1 + b1``, ``A1 = tanh(Z1)``, …
whose right-hand sides are trees of the nodes below.  Leaves are :class:`Sym`
(a named matrix: data, parameter, forward value or cotangent).  Every forward op
declares, together:

* its forward formula and shape (the constructor and ``shape``),
* its vector-Jacobian rule ``vjp(g, out)``: given the cotangent ``g = ∂L/∂out``
  it returns the cotangent of each input (``None`` for inputs that need none),
* the math, in its docstring.

Backward-only nodes (:class:`Transpose`, :class:`Hadamard`, :class:`Map`,
:class:`ColSum`, :class:`RowSum`, …) are plain expressions.  Every node can be
expanded into an explicit SymPy matrix at concrete sizes (``explicit``: the
scalar-expansion cross-check) and evaluated with numpy (``numeric``).

Shapes are (rows, cols) of SymPy expressions: X is N×n0, W1 is n0×n1 and a bias
is kept as a 1×n row (stored as shape (n,) in generated code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import sympy as sp

from symgrad.activations import A as A_SYM
from symgrad.activations import Activation, sigmoid, softplus
from symgrad.activations import X as X_SYM
from symgrad.losses import YHAT, Loss, Y

__all__ = [
    "N", "L1", "L2", "ONE", "Node", "Sym", "MatMul", "BiasAdd", "Elementwise", "Softmax",
    "MeanLoss", "SqNormHalf", "AbsSum", "Scale", "Add", "Transpose", "Hadamard", "Sub",
    "Map", "ColSum", "RowSum", "Const", "add", "scale", "hadamard", "filled", "is_ones", "Env",
    "Broadcast", "Ones", "Eye", "Trace", "LogSumExp", "SqNorm",
]

N = sp.Symbol("N", positive=True, integer=True)
L1 = sp.Symbol("lambda_1", nonnegative=True)
L2 = sp.Symbol("lambda_2", nonnegative=True)
SCALAR = (sp.Integer(1), sp.Integer(1))

Env = dict[str, Any]  # name -> matrix (sp.Matrix or np.ndarray); coefficients under their symbol


class Node:
    """A matrix-valued expression."""

    children: tuple[Node, ...] = ()
    shape: tuple[sp.Expr, sp.Expr]

    @property
    def is_scalar(self) -> bool:
        return self.shape == SCALAR

    def explicit(self, env: Env) -> sp.Matrix:  # pragma: no cover - abstract
        raise NotImplementedError

    def numeric(self, env: Env) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def vjp(self, g: Node, out: Node | None) -> tuple[Node | None, ...]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} has no vjp")

    def syms(self) -> set[str]:
        found: set[str] = set()
        stack: list[Node] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, Sym):
                found.add(node.name)
            stack.extend(node.children)
        return found


def _coef(c: sp.Expr, env: Env) -> Any:
    """A scalar coefficient with the environment's values substituted."""
    subs = {s: env[s] for s in c.free_symbols if s in env}
    return c.xreplace(subs) if subs else c


# --------------------------------------------------------------------------
# Leaves
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=True)
class Sym(Node):
    """A named matrix: data (X, Y), a parameter (W1, b1), a forward value (Z1, A1)
    or a cotangent (dZ1).  ``role`` is one of data, param, value, cotangent."""

    name: str
    shape: tuple[sp.Expr, sp.Expr]
    role: str = "value"

    def explicit(self, env: Env) -> sp.Matrix:
        return env[self.name]

    def numeric(self, env: Env) -> np.ndarray:
        return env[self.name]


@dataclass(frozen=True, eq=True)
class Const(Node):
    """A scalar constant (the seed cotangent ∂L/∂L = 1)."""

    value: sp.Expr
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    def explicit(self, env: Env) -> sp.Matrix:
        return sp.Matrix([[_coef(self.value, env)]])

    def numeric(self, env: Env) -> np.ndarray:
        return np.array([[float(_coef(self.value, env))]])

    def vjp(self, g, out):
        return ()


ONE = Const(sp.Integer(1))


class Exp(sp.Function):
    """exp, kept as an opaque atom in explicit expansions: e^a·e^b stays a product,
    so softmax entries are rational functions that ``cancel`` decides quickly."""

    is_real = True

    def fdiff(self, argindex=1):
        return self

    def _eval_evalf(self, prec):
        return sp.exp(self.args[0]).evalf(prec)

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return sp.exp(arg)


# --------------------------------------------------------------------------
# Forward ops (with their vector-Jacobian rules)
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=True)
class MatMul(Node):
    """C = A B.   ∂L/∂A = G Bᵀ,  ∂L/∂B = Aᵀ G."""

    a: Node
    b: Node

    @property
    def children(self):
        return (self.a, self.b)

    @property
    def shape(self):
        return (self.a.shape[0], self.b.shape[1])

    def vjp(self, g, out):
        return MatMul(g, Transpose(self.b)), MatMul(Transpose(self.a), g)

    def explicit(self, env):
        return self.a.explicit(env) * self.b.explicit(env)

    def numeric(self, env):
        return self.a.numeric(env) @ self.b.numeric(env)


@dataclass(frozen=True, eq=True)
class BiasAdd(Node):
    """Z = A + 𝟏 b (b a 1×n row added to every row).   ∂L/∂A = G,  ∂L/∂b = 𝟏ᵀ G."""

    a: Node
    b: Node

    @property
    def children(self):
        return (self.a, self.b)

    @property
    def shape(self):
        return self.a.shape

    def vjp(self, g, out):
        return g, ColSum(g)

    def explicit(self, env):
        a, b = self.a.explicit(env), self.b.explicit(env)
        return a + sp.ones(a.rows, 1) * b

    def numeric(self, env):
        return self.a.numeric(env) + self.b.numeric(env)


@dataclass(frozen=True, eq=True)
class Elementwise(Node):
    """A = f(Z) elementwise.   ∂L/∂Z = G ⊙ f′(Z), or G ⊙ g(A) when f′ = g(f)."""

    fn: Activation
    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return self.x.shape

    def derivative(self, out: Node | None) -> Node:
        """f′ as a matrix: in terms of the output when possible."""
        if out is not None and self.fn.output_derivative is not None:
            return Map(self.fn.output_derivative, ((A_SYM, out),), note=f"{self.fn.name}′")
        return Map(self.fn.derivative, ((X_SYM, self.x),), note=f"{self.fn.name}′")

    def vjp(self, g, out):
        d = self.fn.derivative
        if d is not None and not d.has(X_SYM):  # f′ = c: the cotangent scaled, shape kept
            return (g if d == 1 else hadamard(g, filled(d, self.x)),)
        return (hadamard(g, self.derivative(out)),)

    def explicit(self, env):
        return self.x.explicit(env).applyfunc(self.fn)

    def numeric(self, env):
        x = self.x.numeric(env)
        out = _lambdified(self.fn.expr, (X_SYM,))(x)  # a constant f gives a scalar: spread it
        return np.broadcast_to(out, x.shape).astype(np.result_type(out, x), copy=True)


@dataclass(frozen=True, eq=True)
class Softmax(Node):
    """Ŷ = softmax(Z) row-wise, ŷ_ik = e^{z_ik} / Σ_j e^{z_ij}.

    ∂L/∂Z = Ŷ ⊙ (G − (G ⊙ Ŷ) 𝟏 𝟏ᵀ): the Jacobian of a row is diag(ŷ) − ŷ ŷᵀ,
    written in terms of the output as PyTensor's softmax pullback is."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return self.x.shape

    def vjp(self, g, out):
        out = self if out is None else out  # inside an expression: the softmax itself
        return (hadamard(out, Sub(g, RowSum(hadamard(g, out)))),)

    def explicit(self, env):
        z = self.x.explicit(env)
        rows = []
        for i in range(z.rows):
            e = [Exp(z[i, j]) for j in range(z.cols)]
            s = sp.Add(*e)
            rows.append([v / s for v in e])
        return sp.Matrix(rows)

    def numeric(self, env):
        z = self.x.numeric(env)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True, eq=True)
class MeanLoss(Node):
    """J = (1/N) Σ_ik ℓ(ŷ_ik, y_ik).   ∂J/∂Ŷ = ℓ′(Ŷ, Y) / N (elementwise)."""

    loss: Loss
    yhat: Node
    y: Node
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    @property
    def children(self):
        return (self.yhat, self.y)

    def vjp(self, g, out):
        """A loss affine in ŷ has a constant ℓ′ = c: the cotangent is still an N×k
        matrix, c 𝟏𝟏ᵀ/N (never the scalar c/N)."""
        d = self.loss.derivative
        if not d.has(YHAT, Y):
            return scale(g, filled(d / N, self.yhat)), None
        d = Map(d, ((YHAT, self.yhat), (Y, self.y)), note="ℓ′")
        return scale(g, Scale(1 / N, d)), None

    def explicit(self, env):
        yh, y = self.yhat.explicit(env), self.y.explicit(env)
        total = sp.Add(*[self.loss(yh[k], y[k]) for k in range(len(yh))])
        return sp.Matrix([[total / _coef(N, env)]])

    def numeric(self, env):
        yh, y = self.yhat.numeric(env), self.y.numeric(env)
        v = _lambdified(self.loss.expr, (YHAT, Y))(yh, y)
        return np.array([[np.sum(v) / yh.shape[0]]])


@dataclass(frozen=True, eq=True)
class SqNormHalf(Node):
    """P = ½ ‖W‖²_F.   ∂P/∂W = W."""

    x: Node
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    @property
    def children(self):
        return (self.x,)

    def vjp(self, g, out):
        return (scale(g, self.x),)

    def explicit(self, env):
        w = self.x.explicit(env)
        return sp.Matrix([[sp.Add(*[v**2 for v in w]) / 2]])

    def numeric(self, env):
        w = self.x.numeric(env)
        return np.array([[np.sum(w * w) / 2]])


@dataclass(frozen=True, eq=True)
class AbsSum(Node):
    """P = Σ |W_ij|.   ∂P/∂W = sign(W)  (0 at 0, the left rule)."""

    x: Node
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    @property
    def children(self):
        return (self.x,)

    def vjp(self, g, out):
        return (scale(g, Map(sp.sign(X_SYM), ((X_SYM, self.x),), note="sign")),)

    def explicit(self, env):
        return sp.Matrix([[sp.Add(*[sp.Abs(v) for v in self.x.explicit(env)])]])

    def numeric(self, env):
        return np.array([[np.sum(np.abs(self.x.numeric(env)))]])


@dataclass(frozen=True, eq=True)
class Scale(Node):
    """C = c·A for a scalar symbol expression c (1/N, λ₂, …).   ∂L/∂A = c·G."""

    c: sp.Expr
    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return self.x.shape

    def vjp(self, g, out):
        return (scale(Const(self.c), g),)

    def explicit(self, env):
        return _coef(self.c, env) * self.x.explicit(env)

    def numeric(self, env):
        return float(_coef(self.c, env)) * self.x.numeric(env)


@dataclass(frozen=True, eq=True)
class Add(Node):
    """C = A + B + …  (same shapes; a N×1 or 1×n term broadcasts).   ∂L/∂each = G."""

    terms: tuple[Node, ...]

    @property
    def children(self):
        return self.terms

    @property
    def shape(self):
        return self.terms[0].shape

    def vjp(self, g, out):
        return tuple(g for _ in self.terms)

    def explicit(self, env):
        mats = [t.explicit(env) for t in self.terms]
        out = mats[0]
        for m in mats[1:]:
            out = out + m
        return out

    def numeric(self, env):
        return sum((t.numeric(env) for t in self.terms[1:]), self.terms[0].numeric(env))


# --------------------------------------------------------------------------
# Backward-only expressions
# --------------------------------------------------------------------------


@dataclass(frozen=True, eq=True)
class Transpose(Node):
    """Aᵀ."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (self.x.shape[1], self.x.shape[0])

    def vjp(self, g, out):
        """C = Aᵀ.   ∂L/∂A = Gᵀ."""
        return (Transpose(g),)

    def explicit(self, env):
        return self.x.explicit(env).T

    def numeric(self, env):
        return self.x.numeric(env).T


@dataclass(frozen=True, eq=True)
class Hadamard(Node):
    """A ⊙ B (elementwise product)."""

    a: Node
    b: Node

    @property
    def children(self):
        return (self.a, self.b)

    @property
    def shape(self):
        return self.a.shape

    def vjp(self, g, out):
        """C = A ⊙ B.   ∂L/∂A = G ⊙ B,  ∂L/∂B = G ⊙ A."""
        return hadamard(g, self.b), hadamard(g, self.a)

    def explicit(self, env):
        return self.a.explicit(env).multiply_elementwise(self.b.explicit(env))

    def numeric(self, env):
        return self.a.numeric(env) * self.b.numeric(env)


@dataclass(frozen=True, eq=True)
class Sub(Node):
    """A − B, where B may be an N×1 column broadcast across A's columns."""

    a: Node
    b: Node

    @property
    def children(self):
        return (self.a, self.b)

    @property
    def shape(self):
        return self.a.shape

    def vjp(self, g, out):
        """C = A − B.   ∂L/∂A = G,  ∂L/∂B = −G (summed over the columns B is spread to)."""
        gb = RowSum(g) if self.b.shape != self.a.shape and self.b.shape[1] == 1 else g
        return g, Scale(sp.Integer(-1), gb)

    def explicit(self, env):
        a, b = self.a.explicit(env), self.b.explicit(env)
        if b.cols == 1 and a.cols != 1:
            b = b * sp.ones(1, a.cols)
        return a - b

    def numeric(self, env):
        return self.a.numeric(env) - self.b.numeric(env)


@dataclass(frozen=True, eq=True)
class ColSum(Node):
    """𝟏ᵀ A: the column sums, a 1×n row (∂L/∂b)."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (sp.Integer(1), self.x.shape[1])

    def vjp(self, g, out):
        """c = 𝟏ᵀ A.   ∂L/∂A = 𝟏 g (the row g repeated down the rows)."""
        return (Broadcast(g, self.x.shape),)

    def explicit(self, env):
        m = self.x.explicit(env)
        return sp.ones(1, m.rows) * m

    def numeric(self, env):
        return self.x.numeric(env).sum(axis=0, keepdims=True)


@dataclass(frozen=True, eq=True)
class RowSum(Node):
    """A 𝟏: the row sums, an N×1 column."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (self.x.shape[0], sp.Integer(1))

    def vjp(self, g, out):
        """c = A 𝟏.   ∂L/∂A = g 𝟏ᵀ (the column g repeated across the columns)."""
        return (Broadcast(g, self.x.shape),)

    def explicit(self, env):
        m = self.x.explicit(env)
        return m * sp.ones(m.cols, 1)

    def numeric(self, env):
        return self.x.numeric(env).sum(axis=1, keepdims=True)


@dataclass(frozen=True, eq=True)
class Map(Node):
    """A scalar SymPy expression applied elementwise: ``expr`` in the symbols of
    ``args`` (pairs symbol → same-shape matrix), e.g. 1 − a² with a → A1."""

    expr: sp.Expr
    args: tuple[tuple[sp.Symbol, Node], ...]
    note: str = ""

    @property
    def children(self):
        return tuple(node for _, node in self.args)

    @property
    def shape(self):
        return self.args[0][1].shape

    def vjp(self, g, out):
        """C = f(A, B, …) elementwise.   ∂L/∂A = G ⊙ ∂f/∂a(A, B, …), for each argument
        (∂f/∂a by SymPy; a constant derivative c gives c·G)."""
        grads = []
        for s, _ in self.args:
            d = sp.diff(self.expr, s)
            if d == 0:
                grads.append(None)
            elif not (d.free_symbols & {t for t, _ in self.args}):
                grads.append(scale(Const(d), g) if isinstance(g, Const) else (
                    g if d == 1 else Scale(d, g)))
            else:
                grads.append(hadamard(g, Map(d, self.args, note=f"∂/∂{s}")))
        return tuple(grads)

    def explicit(self, env):
        mats = [(s, node.explicit(env)) for s, node in self.args]
        rows, cols = mats[0][1].shape
        expr = self.expr.xreplace({s: _coef(s, env) for s in self.expr.free_symbols if s in env})
        if expr.has(sp.Derivative):  # abstract f′: subs builds the Subs(…) that diff builds
            return sp.Matrix(
                rows, cols, lambda i, j: expr.subs({s: m[i, j] for s, m in mats}, simultaneous=True)
            )
        return sp.Matrix(rows, cols, lambda i, j: expr.xreplace({s: m[i, j] for s, m in mats}))

    def numeric(self, env):
        symbols = tuple(s for s, _ in self.args)
        values = [node.numeric(env) for _, node in self.args]
        out = _lambdified(self.expr, symbols)(*values)
        return np.broadcast_to(out, values[0].shape).astype(values[0].dtype, copy=True)


# --------------------------------------------------------------------------
# Expression-mode ops: broadcasting, identity, trace, log-sum-exp
# --------------------------------------------------------------------------


def _size(d: sp.Expr, env: Env) -> int:
    return int(d.xreplace({s: env[s] for s in d.free_symbols}))


@dataclass(frozen=True, eq=True)
class Broadcast(Node):
    """A row, column or scalar repeated to a larger shape (numpy broadcasting).

    ∂L/∂A = G summed over the repeated axes (𝟏ᵀG for a row, G𝟏 for a column)."""

    x: Node
    shape: tuple

    @property
    def children(self):
        return (self.x,)

    def vjp(self, g, out):
        (r, c), (xr, xc) = self.shape, self.x.shape
        if xr == 1 and r != 1:
            g = ColSum(g)
        if xc == 1 and c != 1:
            g = RowSum(g)
        return (g,)

    def numeric(self, env):
        return np.broadcast_to(self.x.numeric(env), tuple(_size(d, env) for d in self.shape))

    def explicit(self, env):
        m = self.x.explicit(env)
        r, c = (_size(d, env) for d in self.shape)
        return sp.Matrix(r, c, lambda i, j: m[i if m.rows > 1 else 0, j if m.cols > 1 else 0])


@dataclass(frozen=True, eq=True)
class Ones(Node):
    """A matrix of ones (``ones(N)``, ``ones_like(A1)``)."""

    shape: tuple

    def vjp(self, g, out):
        return ()

    def numeric(self, env):
        return np.ones(tuple(_size(d, env) for d in self.shape))

    def explicit(self, env):
        return sp.ones(*(_size(d, env) for d in self.shape))


@dataclass(frozen=True, eq=True)
class Eye(Node):
    """The n×n identity I."""

    n: sp.Expr

    @property
    def shape(self):
        return (self.n, self.n)

    def vjp(self, g, out):
        return ()

    def numeric(self, env):
        return np.eye(_size(self.n, env))

    def explicit(self, env):
        return sp.eye(_size(self.n, env))


@dataclass(frozen=True, eq=True)
class Trace(Node):
    """t = tr(A) = Σ_i a_ii (A square).   ∂t/∂A = g·I."""

    x: Node
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    @property
    def children(self):
        return (self.x,)

    def vjp(self, g, out):
        eye = Eye(self.x.shape[0])
        return (scale(g, eye) if isinstance(g, Const) else Hadamard(Broadcast(g, eye.shape), eye),)

    def explicit(self, env):
        return sp.Matrix([[self.x.explicit(env).trace()]])

    def numeric(self, env):
        return np.array([[np.trace(self.x.numeric(env))]])


@dataclass(frozen=True, eq=True)
class SqNorm(Node):
    """s = ‖A‖²_F = Σ a_ij².   ∂s/∂A = 2g·A."""

    x: Node
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    @property
    def children(self):
        return (self.x,)

    def vjp(self, g, out):
        if isinstance(g, Const):
            return (scale(Const(2 * g.value), self.x),)
        return (Hadamard(Broadcast(Scale(sp.Integer(2), g), self.x.shape), self.x),)

    def explicit(self, env):
        return sp.Matrix([[sp.Add(*[v**2 for v in self.x.explicit(env)])]])

    def numeric(self, env):
        w = self.x.numeric(env)
        return np.array([[np.sum(w * w)]])


@dataclass(frozen=True, eq=True)
class LogSumExp(Node):
    """Row-wise (``axis=1``, an N×1 column) s_i = log Σ_j e^{a_ij}, or over all entries
    (``axis=None``, a scalar).

    ∂L/∂A = G ⊙ softmax(A) row-wise (G spread across each row); over all entries
    ∂L/∂A = g·exp(A − s)."""

    x: Node
    axis: int | None = 1

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (self.x.shape[0], sp.Integer(1)) if self.axis == 1 else SCALAR

    def vjp(self, g, out):
        shape = self.x.shape
        if self.axis == 1:
            soft: Node = Softmax(self.x)
        else:
            a, s = sp.Symbol("a", real=True), sp.Symbol("s", real=True)
            soft = Map(sp.exp(a - s), ((a, self.x), (s, Broadcast(self, shape))), note="softmax")
        if isinstance(g, Const):
            return (scale(g, soft),)
        return (Hadamard(Broadcast(g, shape), soft),)

    def explicit(self, env):
        m = self.x.explicit(env)
        if self.axis == 1:
            return sp.Matrix(m.rows, 1, lambda i, _: sp.log(sp.Add(*[Exp(v) for v in m.row(i)])))
        return sp.Matrix([[sp.log(sp.Add(*[Exp(v) for v in m]))]])

    def numeric(self, env):
        z = self.x.numeric(env)
        axis = 1 if self.axis == 1 else None
        top = z.max(axis=axis, keepdims=True)
        out = top + np.log(np.exp(z - top).sum(axis=axis, keepdims=True))
        return out.reshape(-1, 1) if self.axis == 1 else out.reshape(1, 1)


# --------------------------------------------------------------------------
# Smart constructors: keep the derivation free of ×1 and ⊙1
# --------------------------------------------------------------------------


def scale(g: Node, x: Node) -> Node:
    """g·x for a scalar cotangent g, folding constants (and dropping the seed 1)."""
    if not isinstance(g, Const):
        return Hadamard(g, x)
    if isinstance(x, Const):
        return Const(g.value * x.value)
    if isinstance(x, Scale):
        g, x = Const(g.value * x.c), x.x
    return x if g.value == 1 else Scale(g.value, x)


def filled(c: sp.Expr, like: Node) -> Node:
    """The constant ``c`` spread to the shape of ``like``: c 𝟏𝟏ᵀ (a matrix, not a scalar).

    It is the 𝟏𝟏ᵀ map scaled by c, so printers and lowerings see one form."""
    ones = Map(sp.Integer(1), ((X_SYM, like),), note="𝟏𝟏ᵀ")
    return ones if c == 1 else Scale(sp.sympify(c), ones)


def is_ones(node: Node) -> bool:
    """Whether ``node`` is the all-ones matrix 𝟏𝟏ᵀ (a constant map)."""
    return isinstance(node, Map) and node.expr == 1


def hadamard(a: Node, b: Node) -> Node:
    """A ⊙ B, with A ⊙ 𝟏𝟏ᵀ = A and A ⊙ c𝟏𝟏ᵀ = c A (same shapes)."""
    for x, y in ((a, b), (b, a)):
        if is_ones(y):
            return x
        if isinstance(y, Scale) and is_ones(y.x):
            return scale(Const(y.c), x)
    return Hadamard(a, b)


def add(terms: list[Node]) -> Node:
    return terms[0] if len(terms) == 1 else Add(tuple(terms))


# --------------------------------------------------------------------------
# Numeric evaluation of scalar SymPy expressions (our own trees, never user text)
# --------------------------------------------------------------------------


def _np_sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _np_softplus(x):
    return np.logaddexp(0.0, x)


_np_erf = np.vectorize(math.erf, otypes=[float])  # numpy has no erf; checks only


@lru_cache(maxsize=512)
def _lambdified(expr: sp.Expr, symbols: tuple[sp.Symbol, ...]):
    modules = [{"sigmoid": _np_sigmoid, "softplus": _np_softplus, "erf": _np_erf}, "numpy"]
    return sp.lambdify(symbols, expr, modules=modules)


_ = (sigmoid, softplus)  # referenced by name in the lambdify module table
