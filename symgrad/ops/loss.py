"""The data loss: the mean over samples of an elementwise loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from symgrad.losses import YHAT, Loss, Y
from symgrad.ops.base import (
    SCALAR,
    Map,
    N,
    Node,
    Scale,
    _coef,
    _lambdified,
    filled,
    hadamard,
    scale,
)
from symgrad.ops.reductions import ColSum, RowSum

__all__ = ["MeanLoss"]


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

    def jvp(self, t, out):
        """J̇ = (1/N) 𝟏ᵀ (ℓ′(Ŷ, Y) ⊙ Ŷ̇) 𝟏 (the targets are data: no tangent)."""
        if t[0] is None:
            return None
        d = Map(self.loss.derivative, ((YHAT, self.yhat), (Y, self.y)), note="ℓ′")
        return Scale(1 / N, ColSum(RowSum(hadamard(d, t[0]))))

    def explicit(self, env):
        yh, y = self.yhat.explicit(env), self.y.explicit(env)
        total = sp.Add(*[self.loss(yh[k], y[k]) for k in range(len(yh))])
        return sp.Matrix([[total / _coef(N, env)]])

    def numeric(self, env):
        yh, y = self.yhat.numeric(env), self.y.numeric(env)
        v = _lambdified(self.loss.expr, (YHAT, Y))(yh, y)
        return np.array([[np.sum(v) / yh.shape[0]]])
