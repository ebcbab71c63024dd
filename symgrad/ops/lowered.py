"""Lowering-only ops: the forms codegen rewrites a derivation into before it writes numpy.

None of these appear in a derivation, a printout or a proof; they exist so that the stable
loss value and the fused SGD epoch's transposed layout are trees of ops like any other, each
declaring its readable (``numpy``) and in-place (``into``) forms here:

* :class:`Total` — Σ_ij A_ij, the stable loss value's sum (scalar; the step computes it
  through ``StepLowering.scalar``),
* the transposed layout of the fused SGD epoch (one column per sample: Z1T holds Z₁ᵀ), the
  batch operations whose form changes under transposition: :class:`ColumnBias`,
  :class:`Augmented`, :class:`SoftmaxT`, :class:`LogSumExpT`, :class:`SumRows`,
  :class:`SumColumns`.

* :class:`ImageRows` — the image batch X read as its feature map (N·H·W rows of C) by an
  op that is not a window op (batchnorm, dropout, add, concat on X): the module keeps X as
  its (N, H·W·C) rows.

The row-wise log-sum-exp of the stable cross-entropy is :class:`symgrad.ops.LogSumExp`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from symgrad import naming
from symgrad.ops.base import SCALAR, N, Node, Sym

__all__ = ["Total", "ColumnBias", "Augmented", "SoftmaxT", "LogSumExpT", "SumRows", "SumColumns",
           "ImageRows"]


@dataclass(frozen=True, eq=True)
class Total(Node):
    """Σ_ij A_ij: the sum of all entries (a scalar)."""

    x: Node
    shape: tuple[sp.Expr, sp.Expr] = SCALAR

    @property
    def children(self):
        return (self.x,)

    def numeric(self, env):
        return np.array([[np.sum(self.x.numeric(env))]])

    def numpy(self, lw):
        return f"np.sum({lw.expr(self.x, 0)})", lw.ATOM

    def text(self, p):  # (the printed forms only name a lowering in a message or a test)
        return f"Σ({p._print(self.x)})"

    def latex(self, p):
        return rf"\sum\left({p._print(self.x)}\right)"


@dataclass(frozen=True, eq=True)
class ColumnBias(Node):
    """Xᵀ + b with b as a column: the transpose of X + b (b added to every row of X)."""

    x: Node
    b: Node

    @property
    def children(self):
        return (self.x, self.b)

    @property
    def shape(self):
        return self.x.shape

    def into(self, st, dest):
        st.emit_into(self.x, dest)
        st.emit(f"{dest} += {st.simple(self.b)}[:, None]")

    precedence = 10  # a sum (the printers' ADD)

    def text(self, p):
        return f"{p._print(self.x)} + {p._print(self.b)} 𝟏ᵀ"

    def latex(self, p):
        return rf"{p._print(self.x)} + {p._print(self.b)} \mathbf{{1}}^{{\top}}"


@dataclass(frozen=True, eq=True)
class Augmented(Node):
    """[W; b]ᵀ [Aᵀ; 𝟏ᵀ] = (A W + b)ᵀ: a layer whose input carries a row of ones, the bias
    row of ``block`` = [W; b] riding in the product. ``a`` names [Aᵀ; 𝟏ᵀ]."""

    block: Sym
    a: Sym

    @property
    def children(self):
        return (self.block, self.a)

    @property
    def shape(self):
        return (self.block.shape[1], self.a.shape[1])

    precedence = 60  # a product (the printers' MATMUL)

    def text(self, p):
        return f"{p.paren(self.block, p.ATOM)}ᵀ {p.paren(self.a, p.MATMUL + 1)}"

    def latex(self, p):
        return rf"{p.paren(self.block, p.ATOM)}^{{\top}} {p.paren(self.a, p.MATMUL + 1)}"

    def into(self, st, dest):
        a = self.a.name
        st.buffer(a, self.a.shape, "ones", note=self.note(st, a))
        st.emit(f"np.dot({self.block.name}.T, {a}, out={dest})")

    @staticmethod
    def note(st, name: str) -> str:
        """The workspace's comment on [Aᵀ; 𝟏ᵀ] (the buffer A1Tx holds it)."""
        a = naming.text(st.base(name.removesuffix("x")))
        return f"[{a}ᵀ; 𝟏ᵀ]: a row of ones for the next bias"


@dataclass(frozen=True, eq=True)
class SoftmaxT(Node):
    """Softmax of each column (the transpose of the row-wise softmax)."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return self.x.shape

    def text(self, p):
        return f"softmax({p._print(self.x)}, axis=0)"

    def latex(self, p):
        return rf"\operatorname{{softmax}}\left({p._print(self.x)}, \text{{axis}}=0\right)"

    def into(self, st, dest):
        """Softmax of each column of a transposed Z (one column per sample): the reductions
        run along axis 0, over whole contiguous rows, and the column sums are 𝟏ᵀ E."""
        z = st.simple(self.x)
        assert z is not None, "softmax of a named pre-activation"
        zb = st.base(z)
        layer, k = naming.layer_of(zb), self.shape[0]
        row = (sp.Integer(1), N)
        mx = st.buffer(f"max{layer}", row, note=f"the maxima of the columns of {z}")
        sm = st.buffer(f"sum{layer}", row, note=f"the column sums of exp({z} - max{layer})")
        units = st.buffer(f"ones{layer}", (k,), "ones", note=f"𝟏, for the column sums of {z}")
        st.emit(f"np.maximum.reduce({z}, axis=0, out={mx})")
        if z in st.shiftable:
            st.emit(f"{z} -= {mx}")
            st.emit(f"np.exp({z}, out={dest})")
            st.shifted.add(z)
            zt = naming.text(zb)
            st.notes.append(f"  {zt} − max in place: only the loss reads {zt} again, unchanged")
        else:
            st.emit(f"np.subtract({z}, {mx}, out={dest})")
            st.emit(f"np.exp({dest}, out={dest})")
        st.emit(f"np.dot({units}, {dest}, out={sm})")
        st.emit(f"{dest} /= {sm}")
        st.rowstats[z] = (mx, sm)


@dataclass(frozen=True, eq=True)
class LogSumExpT(Node):
    """log Σ_k exp(Z_ki) of each column, a 1×N row."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (sp.Integer(1), self.x.shape[1])

    def text(self, p):
        return f"logsumexp({p._print(self.x)}, axis=0)"

    def latex(self, p):
        return rf"\operatorname{{logsumexp}}\left({p._print(self.x)}, \text{{axis}}=0\right)"

    def into(self, st, dest):
        z = st.simple(self.x)
        assert z is not None
        if z in st.rowstats:  # the softmax already has max and Σ exp(z − max)
            mx, sm = st.rowstats[z]
            st.emit(f"np.log({sm}, out={dest})")
            st.emit(f"{dest} += {mx}")
            return
        with st.scratch(self.x.shape) as e:
            st.emit(f"np.maximum.reduce({z}, axis=0, out={dest})")
            st.emit(f"np.subtract({z}, {dest}, out={e})")
            st.emit(f"np.exp({e}, out={e})")
            with st.scratch(self.shape) as s:
                st.emit(f"np.add.reduce({e}, axis=0, out={s})")
                st.emit(f"np.log({s}, out={s})")
                st.emit(f"{dest} += {s}")


@dataclass(frozen=True, eq=True)
class SumRows(Node):
    """𝟏ᵀ A: the sum of the rows, a 1×n row (the transpose of a RowSum)."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (sp.Integer(1), self.x.shape[1])

    precedence = 60  # a product (the printers' MATMUL)

    def text(self, p):
        return f"𝟏ᵀ {p.paren(self.x, p.MATMUL + 1)}"

    def latex(self, p):
        return rf"\mathbf{{1}}^{{\top}} {p.paren(self.x, p.MATMUL + 1)}"

    def into(self, st, dest):
        with st.operand(self.x) as x:
            st.emit(f"np.add.reduce({x}, axis=0, out={dest})")


@dataclass(frozen=True, eq=True)
class SumColumns(Node):
    """A 𝟏 as a row: each row's sum over the batch (the ColSum of the transpose)."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (sp.Integer(1), self.x.shape[0])

    def text(self, p):
        return f"({p.paren(self.x, p.MATMUL)} 𝟏)ᵀ"

    def latex(self, p):
        return rf"\left({p.paren(self.x, p.MATMUL)} \mathbf{{1}}\right)^{{\top}}"

    def into(self, st, dest):
        """A 𝟏: each row's sum, as a matrix product."""
        ones = st.ones()
        with st.operand(self.x) as x:
            st.emit(f"np.dot({x}, {ones}, out={dest})")


@dataclass(frozen=True, eq=True)
class ImageRows(Node):
    """X as the feature map of the graph, (N·H·W)×C, where the module holds the image batch
    as its (N, H·W·C) rows: a row-major reshape (a view in the readable code, a copy into
    the step's buffer). The window ops and flatten read X's rows themselves."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return self.x.shape

    def numeric(self, env):
        return self.x.numeric(env)

    def text(self, p):
        return p._print(self.x)

    def latex(self, p):
        return p._print(self.x)

    def numpy(self, lw):
        return f"{lw.expr(self.x, lw.ATOM)}.reshape(-1, {lw.size(self.x.shape[1])})", lw.ATOM

    def into(self, st, dest):
        with st.operand(self.x) as a:
            st.emit(f"np.copyto({dest}, {a}.reshape({dest}.shape))")
