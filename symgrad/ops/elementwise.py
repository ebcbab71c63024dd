"""Activations: elementwise functions and the row-wise softmax and log-sum-exp."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from symgrad.activations import A as A_SYM
from symgrad.activations import Activation
from symgrad.activations import X as X_SYM
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
