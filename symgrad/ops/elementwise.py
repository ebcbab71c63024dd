"""Activations: elementwise functions and the row-wise softmax and log-sum-exp."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from symgrad import naming
from symgrad.activations import A as A_SYM
from symgrad.activations import Activation
from symgrad.activations import X as X_SYM
from symgrad.errors import SymgradError
from symgrad.ops.base import (
    SCALAR,
    Const,
    Exp,
    Hadamard,
    Map,
    Node,
    _lambdified,
    filled,
    hadamard,
    scale,
)
from symgrad.ops.reductions import Broadcast, RowSum, Sub

__all__ = ["Elementwise", "Softmax", "LogSumExp"]


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

    def jvp(self, t, out):
        """A = f(Z).   Ȧ = Ż ⊙ f′(Z), or Ż ⊙ g(A) when f′ = g(f)."""
        (tz,) = t
        d = self.fn.derivative
        if d is not None and not d.has(X_SYM):
            return tz if d == 1 else hadamard(tz, filled(d, self.x))
        return hadamard(tz, self.derivative(out))

    def explicit(self, env):
        return self.x.explicit(env).applyfunc(self.fn)

    def numeric(self, env):
        x = self.x.numeric(env)
        out = _lambdified(self.fn.expr, (X_SYM,))(x)  # a constant f gives a scalar: spread it
        return np.broadcast_to(out, x.shape).astype(np.result_type(out, x), copy=True)

    def numpy(self, lw):
        if self.fn.expr == X_SYM:  # the identity: its operand
            return lw.form(self.x)
        return Map(self.fn.expr, ((X_SYM, self.x),)).numpy(lw)

    def into(self, st, dest):
        if self.fn.expr == X_SYM:
            st.emit_into(self.x, dest)
        elif st.stable(self.fn.expr) == sp.Max(X_SYM, 0) and st.simple(self.x):
            self.relu_into(st, st.simple(self.x), dest)
        else:
            st.map_into(Map(self.fn.expr, ((X_SYM, self.x),)), dest)

    def relu_into(self, st, z: str, dest: str) -> None:
        """relu(z) = z ⊙ [z > 0]: the mask is kept, it is relu′ = [A > 0] of the backward
        pass (one pass there instead of two), and multiplying by it is cheaper than
        np.maximum(z, 0)."""
        zt, at = naming.text(st.base(z)), naming.text(st.base(dest))
        layer = naming.layer_of(st.base(dest))
        name = f"mask{layer}" if layer is not None else f"mask_{dest}"
        note = f"[{zt} > 0] = [{at} > 0], kept for relu′"
        mask = st.buffer(name, self.shape, "bool", note=note)
        st.emit(f"np.greater({z}, 0.0, out={mask})")
        st.emit(f"np.multiply({z}, {mask}, out={dest})")
        st.masks[sp.StrictGreaterThan(sp.Symbol(dest), 0)] = mask
        st.notes.append(f"  as {zt} ⊙ [{zt} > 0], the mask kept for relu′")
        st.in_place_ok.add(dest)


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

    def jvp(self, t, out):
        """Ŷ = softmax(Z).   Ŷ̇ = Ŷ ⊙ (Ż − (Ż ⊙ Ŷ) 𝟏 𝟏ᵀ): the row Jacobian diag(ŷ) − ŷ ŷᵀ is
        symmetric, so the tangent has the cotangent's form."""
        out = self if out is None else out
        (tz,) = t
        return hadamard(out, Sub(tz, RowSum(hadamard(tz, out))))

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

    def numpy(self, lw):
        lw.helpers.add("softmax")
        return f"_softmax({lw.expr(self.x, 0)})", lw.ATOM

    def into(self, st, dest):
        """exp(Z − max) / Σ per row; the row maxima and sums are kept (``st.rowstats``) for
        the loss's log-sum-exp, and Z is shifted in place when only the loss reads it again."""
        z = st.simple(self.x)
        assert z is not None, "softmax of a named pre-activation"
        layer = naming.layer_of(z)
        col = (self.shape[0], sp.Integer(1))
        mx = st.buffer(f"max{layer}", col, note=f"row maxima of {z}")
        sm = st.buffer(f"sum{layer}", col, note=f"row sums of exp({z} - max{layer})")
        st.emit(f"np.maximum.reduce({z}, axis=1, keepdims=True, out={mx})")
        if z in st.shiftable:  # z − max in place: only the shift-invariant loss reads z again
            st.emit(f"{z} -= {mx}")
            st.emit(f"np.exp({z}, out={dest})")
            st.shifted.add(z)
            zt = naming.text(z)
            st.notes.append(f"  {zt} − max in place: only the loss reads {zt} again, unchanged")
        else:
            st.emit(f"np.subtract({z}, {mx}, out={dest})")
            st.emit(f"np.exp({dest}, out={dest})")
        st.emit(f"np.add.reduce({dest}, axis=1, keepdims=True, out={sm})")
        st.emit(f"{dest} /= {sm}")
        st.rowstats[z] = (mx, sm)


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

    def jvp(self, t, out):
        """s = logsumexp(A) per row.   ṡ = (Ȧ ⊙ softmax(A)) 𝟏."""
        if self.axis != 1:
            raise NotImplementedError("LogSumExp over all entries has no jvp")
        return RowSum(hadamard(t[0], Softmax(self.x)))

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

    def text(self, p):
        return f"logsumexp({p._print(self.x)}{', rows' if self.axis == 1 else ''})"

    def latex(self, p):
        return rf"\operatorname{{logsumexp}}\left({p._print(self.x)}\right)"

    def _rows(self) -> None:
        if self.axis != 1:  # over all entries: only the printers and checks know it
            raise SymgradError("generate", "cannot lower LogSumExp over all entries to numpy")

    def numpy(self, lw):
        self._rows()
        lw.helpers.add("logsumexp")
        return f"_logsumexp({lw.expr(self.x, 0)})", lw.ATOM

    def into(self, st, dest):
        """max + log Σ exp(Z − max) per row; from the softmax's row statistics when it kept
        them."""
        self._rows()
        z = st.simple(self.x)
        assert z is not None
        if z in st.rowstats:  # the softmax already has max and Σ exp(z − max)
            mx, sm = st.rowstats[z]
            st.emit(f"np.log({sm}, out={dest})")
            st.emit(f"{dest} += {mx}")
            return
        with st.scratch(self.x.shape) as e:
            st.emit(f"np.maximum.reduce({z}, axis=1, keepdims=True, out={dest})")
            st.emit(f"np.subtract({z}, {dest}, out={e})")
            st.emit(f"np.exp({e}, out={e})")
            with st.scratch(self.shape) as s:
                st.emit(f"np.add.reduce({e}, axis=1, keepdims=True, out={s})")
                st.emit(f"np.log({s}, out={s})")
                st.emit(f"{dest} += {s}")
