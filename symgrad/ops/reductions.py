"""Broadcasting and its dual, the reductions: sums over rows and columns, the
subtraction of a broadcast column, identity and ones, trace and norms."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from symgrad.activations import X as X_SYM
from symgrad.ops.base import (
    SCALAR,
    SUBTRACT,
    Const,
    Hadamard,
    Map,
    Node,
    Scale,
    _size,
    hadamard,
    scale,
)

__all__ = ["Sub", "ColSum", "RowSum", "Broadcast", "Ones", "Eye", "Trace", "SqNorm", "SqNormHalf",
           "AbsSum", "Norm", "Extremum", "ArgMask"]


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

    def jvp(self, t, out):
        """C = A − B.   Ċ = Ȧ − Ḃ (Ḃ spread as B is)."""
        ta, tb = t
        if tb is None:
            return ta
        if ta is None:
            spread = tb if tb.shape == self.shape else Broadcast(tb, self.shape)
            return Scale(sp.Integer(-1), spread)
        return Sub(ta, tb)

    def explicit(self, env):
        a, b = self.a.explicit(env), self.b.explicit(env)
        if b.cols == 1 and a.cols != 1:
            b = b * sp.ones(1, a.cols)
        return a - b

    def numeric(self, env):
        return self.a.numeric(env) - self.b.numeric(env)

    def numpy(self, lw):
        return f"{lw.expr(self.a, lw.ADD)} - {lw.expr(self.b, lw.ADD + 1)}", lw.ADD

    def into(self, st, dest):
        st.binary("subtract", "-", self.a, self.b, dest, self.shape, commutative=False)


SUBTRACT[:] = [Sub]  # base.tangent_sum subtracts with it


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

    def jvp(self, t, out):
        """c = 𝟏ᵀ A.   ċ = 𝟏ᵀ Ȧ."""
        return ColSum(t[0])

    def explicit(self, env):
        m = self.x.explicit(env)
        return sp.ones(1, m.rows) * m

    def numeric(self, env):
        return self.x.numeric(env).sum(axis=0, keepdims=True)

    def numpy(self, lw):
        return f"{lw.expr(self.x, lw.ATOM)}.sum(axis=0)", lw.ATOM

    def into(self, st, dest):
        """𝟏ᵀ A as a matrix product (BLAS, no reduction)."""
        ones = st.ones(self.x.shape[0])
        with st.operand(self.x) as x:
            st.emit(f"np.dot({ones}, {x}, out={dest})")


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

    def jvp(self, t, out):
        """c = A 𝟏.   ċ = Ȧ 𝟏."""
        return RowSum(t[0])

    def explicit(self, env):
        m = self.x.explicit(env)
        return m * sp.ones(m.cols, 1)

    def numeric(self, env):
        return self.x.numeric(env).sum(axis=1, keepdims=True)

    def numpy(self, lw):
        return f"{lw.expr(self.x, lw.ATOM)}.sum(axis=1, keepdims=True)", lw.ATOM

    def into(self, st, dest):
        with st.operand(self.x) as x:
            st.emit(f"np.add.reduce({x}, axis=1, keepdims=True, out={dest})")


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

    def jvp(self, t, out):
        """C = A repeated.   Ċ = Ȧ repeated."""
        return Broadcast(t[0], self.shape)

    def numeric(self, env):
        return np.broadcast_to(self.x.numeric(env), tuple(_size(d, env) for d in self.shape))

    def explicit(self, env):
        m = self.x.explicit(env)
        r, c = (_size(d, env) for d in self.shape)
        return sp.Matrix(r, c, lambda i, j: m[i if m.rows > 1 else 0, j if m.cols > 1 else 0])

    # 𝟏μ (a row spread down the rows), μ𝟏ᵀ (a column across the columns), 𝟏𝟏ᵀG (the column
    # sums spread back); numpy broadcasts, so the lowering is the operand itself
    precedence = 100

    def _sides(self) -> tuple[bool, bool]:
        (r, c), (xr, xc) = self.shape, self.x.shape
        return xr == 1 and r != 1, xc == 1 and c != 1

    def text(self, p):
        down, across = self._sides()
        if isinstance(self.x, ColSum) and down and not across:
            return f"𝟏𝟏ᵀ{p.paren(self.x.x, p.MATMUL + 1)}"
        if isinstance(self.x, RowSum) and across and not down:
            return f"{p.paren(self.x.x, p.MATMUL + 1)}𝟏𝟏ᵀ"
        body = p.paren(self.x, p.ATOM)
        return ("𝟏" if down else "") + body + ("𝟏ᵀ" if across else "")

    def latex(self, p):
        one, one_t = r"\mathbf{1}", r"\mathbf{1}^{\top}"
        down, across = self._sides()
        if isinstance(self.x, ColSum) and down and not across:
            return f"{one}{one_t}{p.paren(self.x.x, p.MATMUL + 1)}"
        if isinstance(self.x, RowSum) and across and not down:
            return f"{p.paren(self.x.x, p.MATMUL + 1)}{one}{one_t}"
        body = p.paren(self.x, p.ATOM)
        return (one if down else "") + body + (one_t if across else "")

    @property
    def unbroadcast(self) -> Node:
        """The value repeated (a lowering reads it and lets numpy broadcast it)."""
        return self.x

    def numpy(self, lw):
        return lw.expr(self.x, lw.ATOM), lw.ATOM

    def into(self, st, dest):
        with st.operand(self.x) as x:
            st.emit(f"np.copyto({dest}, {x})")


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

    def _form(self, one: str, one_t: str) -> str:
        rows, cols = self.shape
        if rows == 1 and cols == 1:
            return "1"
        return one if cols == 1 else one_t if rows == 1 else one + one_t  # 𝟏, 𝟏ᵀ, 𝟏𝟏ᵀ

    def text(self, p):
        return self._form("𝟏", "𝟏ᵀ")

    def latex(self, p):
        return self._form(r"\mathbf{1}", r"\mathbf{1}^{\top}")


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

    def text(self, p):
        return "I"

    def latex(self, p):
        return "I"


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

    def text(self, p):
        return f"tr({p._print(self.x)})"

    def latex(self, p):
        return rf"\operatorname{{tr}}\left({p._print(self.x)}\right)"


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

    def text(self, p):  # ‖A‖² (also where a plain printer orders terms: norm(w) alone)
        return f"‖{p._print(self.x)}‖²"

    def latex(self, p):
        return rf"\lVert {p._print(self.x)} \rVert_F^{{2}}"


# --------------------------------------------------------------------------
# Penalties
# --------------------------------------------------------------------------


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

    def jvp(self, t, out):
        """P = ½ ‖W‖².   Ṗ = 𝟏ᵀ (W ⊙ Ẇ) 𝟏."""
        return ColSum(RowSum(hadamard(self.x, t[0])))

    def explicit(self, env):
        w = self.x.explicit(env)
        return sp.Matrix([[sp.Add(*[v**2 for v in w]) / 2]])

    def numeric(self, env):
        w = self.x.numeric(env)
        return np.array([[np.sum(w * w) / 2]])

    def numpy(self, lw):
        x = lw.expr(self.x, lw.ATOM)
        return f"np.sum({x} * {x}) / 2", lw.MUL


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

    def jvp(self, t, out):
        """P = Σ |W|.   Ṗ = 𝟏ᵀ (sign(W) ⊙ Ẇ) 𝟏."""
        sign = Map(sp.sign(X_SYM), ((X_SYM, self.x),), note="sign")
        return ColSum(RowSum(hadamard(sign, t[0])))

    def explicit(self, env):
        return sp.Matrix([[sp.Add(*[sp.Abs(v) for v in self.x.explicit(env)])]])

    def numeric(self, env):
        return np.array([[np.sum(np.abs(self.x.numeric(env)))]])

    def numpy(self, lw):
        return f"np.sum(np.abs({lw.expr(self.x, 0)}))", lw.ATOM


# --------------------------------------------------------------------------
# Norms and order statistics (expression mode: norm(x, 1), norm(x, 2), norm(X, "fro"),
# max/min over an axis or all entries)
# --------------------------------------------------------------------------

_NORM_TEXT = {1: "₁", 2: "₂", "fro": "_F"}
_NORM_LATEX = {1: "1", 2: "2", "fro": "F"}


@dataclass(frozen=True, eq=True)
class Norm(Node):
    """s = ‖x‖₁ = Σ|x_i| (``ord=1``, a vector), s = ‖x‖₂ = √(Σ x_i²) (``ord=2``, a vector)
    or s = ‖X‖_F = √(Σ x_ij²) (``ord="fro"``, any matrix).

    ∂s/∂x = g·sign(x) (0 at 0, the left rule) for ‖·‖₁;  ∂s/∂X = g·X/s for ‖·‖₂ and ‖·‖_F,
    written in terms of the output s (undefined at X = 0, where the norm has a kink)."""

    x: Node
    ord: int | str = "fro"
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    @property
    def children(self):
        return (self.x,)

    def vjp(self, g, out):
        shape = self.x.shape
        if self.ord == 1:
            d: Node = Map(sp.sign(X_SYM), ((X_SYM, self.x),), note="sign")
        else:
            u, s = sp.Symbol("u", real=True), sp.Symbol("s", positive=True)
            d = Map(u / s, ((u, self.x), (s, Broadcast(self, shape))), note="x/‖x‖")
        if isinstance(g, Const):
            return (scale(g, d),)
        return (Hadamard(Broadcast(g, shape), d),)

    def explicit(self, env):
        v = list(self.x.explicit(env))
        if self.ord == 1:
            return sp.Matrix([[sp.Add(*[sp.Abs(e) for e in v])]])
        return sp.Matrix([[sp.sqrt(sp.Add(*[e**2 for e in v]))]])

    def numeric(self, env):
        w = self.x.numeric(env)
        if self.ord == 1:
            return np.array([[np.sum(np.abs(w))]])
        return np.array([[np.sqrt(np.sum(w * w))]])

    def text(self, p):
        return f"‖{p._print(self.x)}‖{_NORM_TEXT[self.ord]}"

    def latex(self, p):
        return rf"\lVert {p._print(self.x)} \rVert_{{{_NORM_LATEX[self.ord]}}}"

    def numpy(self, lw):
        """Σ|x| and √(Σx²) as 1×1 arrays (keepdims), in numpy the parser reads back."""
        x = lw.full(self.x, 0)
        if self.ord == 1:
            return f"np.sum(np.abs({x}), keepdims=True)", lw.ATOM
        return f"np.sqrt(np.sum({lw.full(self.x, lw.POW + 1)}**2, keepdims=True))", lw.ATOM


_AXIS_TEXT = {None: "", 0: ", axis=0", 1: ", axis=1"}


@dataclass(frozen=True, eq=True)
class Extremum(Node):
    """m = max(X) or min(X) (``kind``) over all entries (``axis=None``, 1×1), down each
    column (``axis=0``, a 1×n row) or along each row (``axis=1``, an N×1 column).

    ∂L/∂X = E ⊙ G spread back over the reduced axis, where E (:class:`ArgMask`) is 1 at
    the arg-max (arg-min) of each column, row or of X — the first one on ties, as
    ``np.argmax`` picks it — and 0 elsewhere (a subgradient; the derivative where the
    extremum is unique)."""

    x: Node
    axis: int | None = None
    kind: str = "max"

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        r, c = self.x.shape
        return {None: SCALAR, 0: (sp.Integer(1), c), 1: (r, sp.Integer(1))}[self.axis]

    def vjp(self, g, out):
        mask = ArgMask(self.x, self.axis, self.kind)
        if isinstance(g, Const):
            return (scale(g, mask),)
        return (Hadamard(Broadcast(g, self.x.shape), mask),)

    def _groups(self, m: sp.Matrix) -> list[list[sp.Expr]]:
        if self.axis == 0:
            return [list(m.col(j)) for j in range(m.cols)]
        if self.axis == 1:
            return [list(m.row(i)) for i in range(m.rows)]
        return [list(m)]

    def explicit(self, env):
        fn = sp.Max if self.kind == "max" else sp.Min
        values = [fn(*group) for group in self._groups(self.x.explicit(env))]
        r, c = (_size(d, env) for d in self.shape)
        return sp.Matrix(r, c, values)

    def numeric(self, env):
        fn = np.max if self.kind == "max" else np.min
        return fn(self.x.numeric(env), axis=self.axis, keepdims=True).reshape(
            tuple(_size(d, env) for d in self.shape))

    def text(self, p):
        return f"{self.kind}({p._print(self.x)}{_AXIS_TEXT[self.axis]})"

    def latex(self, p):
        axis = "" if self.axis is None else rf", \text{{axis}}={self.axis}"
        return rf"\{self.kind}\left({p._print(self.x)}{axis}\right)"

    def numpy(self, lw):
        axis = "" if self.axis is None else f"axis={self.axis}, "
        return f"np.{self.kind}({lw.full(self.x, 0)}, {axis}keepdims=True)", lw.ATOM


@dataclass(frozen=True, eq=True)
class ArgMask(Node):
    """E = onehot(argmax(X)) (or argmin, ``kind``): 1 at the first extremum of each column
    (``axis=0``), row (``axis=1``) or of all entries (``axis=None``), 0 elsewhere.  Piecewise
    constant: no cotangent flows through it."""

    x: Node
    axis: int | None = None
    kind: str = "max"

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return self.x.shape

    def vjp(self, g, out):
        return (None,)

    def _first(self, group: list[sp.Expr]) -> list[sp.Expr]:
        """The indicator of the first extremum of ``group``, as a case split: entry k wins
        when it beats every earlier entry strictly and every later one weakly."""
        better = sp.StrictGreaterThan if self.kind == "max" else sp.StrictLessThan
        weak = sp.GreaterThan if self.kind == "max" else sp.LessThan
        out = []
        for k, v in enumerate(group):
            conds = [better(v, u) for u in group[:k]] + [weak(v, u) for u in group[k + 1:]]
            out.append(sp.Piecewise((1, sp.And(*conds)), (0, True)) if conds else sp.Integer(1))
        return out

    def explicit(self, env):
        m = self.x.explicit(env)
        if self.axis == 0:
            cols = [self._first(list(m.col(j))) for j in range(m.cols)]
            return sp.Matrix(m.rows, m.cols, lambda i, j: cols[j][i])
        if self.axis == 1:
            rows = [self._first(list(m.row(i))) for i in range(m.rows)]
            return sp.Matrix(m.rows, m.cols, lambda i, j: rows[i][j])
        flat = self._first(list(m))
        return sp.Matrix(m.rows, m.cols, flat)

    def numeric(self, env):
        x = self.x.numeric(env)
        arg = np.argmax if self.kind == "max" else np.argmin
        if self.axis is None:
            return (np.arange(x.size).reshape(x.shape) == arg(x)).astype(float)
        if self.axis == 0:
            return (np.arange(x.shape[0])[:, None] == arg(x, axis=0)).astype(float)
        return (np.arange(x.shape[1]) == arg(x, axis=1)[:, None]).astype(float)

    def text(self, p):
        return f"onehot(arg{self.kind}({p._print(self.x)}{_AXIS_TEXT[self.axis]}))"

    def latex(self, p):
        axis = "" if self.axis is None else rf", \text{{axis}}={self.axis}"
        return rf"\operatorname{{onehot}}\left(\operatorname{{arg{self.kind}}}\left({p._print(self.x)}{axis}\right)\right)"

    def numpy(self, lw):
        """A float 0/1 array: positions compared with np.argmax's (the first on ties)."""
        (r, c), x = self.x.shape, lw.full(self.x, 0)
        arg = f"np.arg{self.kind}"
        if self.axis == 0:
            test = f"np.arange({lw.size(r)})[:, None] == {arg}({x}, axis=0)"
        elif self.axis == 1:
            test = f"np.arange({lw.size(c)}) == {arg}({x}, axis=1, keepdims=True)"
        else:
            test = f"np.arange({lw.size(r * c)}).reshape({lw.size(r)}, {lw.size(c)}) == {arg}({x})"
        return f"np.where({test}, 1.0, 0.0)", lw.ATOM
