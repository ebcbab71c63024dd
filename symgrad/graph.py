"""spec → graph: the network as a list of matrix-level assignments.

    Z_l = A_{l−1} W_l + b_l        (BiasAdd(MatMul(A_{l−1}, W_l), b_l))
    A_l = f_l(Z_l)                  (Elementwise or Softmax); A_0 = X, Ŷ = A_L
    J   = (1/N) Σ ℓ(Ŷ, Y)          (MeanLoss)
    L   = J + λ₂ Σ_l ½‖W_l‖² + λ₁ Σ_l Σ|W_l|

Sizes are SymPy symbols (N, n₀, n₁, …), so everything built on this graph is
independent of the actual widths and batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from symgrad.ops import (
    L1,
    L2,
    AbsSum,
    Add,
    BiasAdd,
    Elementwise,
    MatMul,
    MeanLoss,
    N,
    Node,
    Scale,
    Softmax,
    SqNormHalf,
    Sym,
)
from symgrad.spec import Spec

__all__ = ["Assignment", "Graph", "build_graph", "width"]


def width(l: int) -> sp.Symbol:
    """The symbolic width n_l of layer l (n_0 = inputs)."""
    return sp.Symbol(f"n_{l}", positive=True, integer=True)


@dataclass(frozen=True)
class Assignment:
    target: Sym
    rhs: Node


@dataclass(frozen=True)
class Graph:
    spec: Spec
    assignments: tuple[Assignment, ...]
    params: tuple[Sym, ...]
    data: tuple[Sym, ...]

    @classmethod
    def of(cls, assignments, params, data) -> Graph:
        """A graph without a spec (expression mode): the same reverse sweep accepts it."""
        return cls(None, tuple(assignments), tuple(params), tuple(data))  # type: ignore[arg-type]

    @property
    def loss(self) -> Sym:
        return self.assignments[-1].target

    def producer(self, name: str) -> Assignment | None:
        for a in self.assignments:
            if a.target.name == name:
                return a
        return None

    def sizes(self) -> dict[sp.Symbol, int]:
        """The spec's concrete sizes for the width symbols."""
        return {width(l): n for l, n in enumerate(self.spec.sizes)}


def build_graph(spec: Spec) -> Graph:
    L = len(spec.layers)
    X = Sym("X", (N, width(0)), "data")
    Y = Sym("Y", (N, width(L)), "data")
    prev: Sym = X
    out: list[Assignment] = []
    params: list[Sym] = []
    for l, layer in enumerate(spec.layers, 1):
        W = Sym(f"W{l}", (width(l - 1), width(l)), "param")
        b = Sym(f"b{l}", (sp.Integer(1), width(l)), "param")
        params += [W, b]
        Z = Sym(f"Z{l}", (N, width(l)), "value")
        out.append(Assignment(Z, BiasAdd(MatMul(prev, W), b)))
        A = Sym("Yhat" if l == L else f"A{l}", (N, width(l)), "value")
        fn = layer.fn
        out.append(Assignment(A, Softmax(Z) if fn.is_rowwise else Elementwise(fn, Z)))
        prev = A
    data_loss = MeanLoss(spec.loss_fn, prev, Y)
    terms: list[Node] = [data_loss]
    weights = [p for p in params if p.name.startswith("W")]
    if spec.l2:
        terms += [Scale(L2, SqNormHalf(W)) for W in weights]
    if spec.l1:
        terms += [Scale(L1, AbsSum(W)) for W in weights]
    loss = Sym("L", data_loss.shape, "value")
    if len(terms) == 1:
        out.append(Assignment(loss, data_loss))
    else:
        J = Sym("J", data_loss.shape, "value")
        out.append(Assignment(J, data_loss))
        out.append(Assignment(loss, Add((J, *terms[1:]))))
    return Graph(spec, tuple(out), tuple(params), (X, Y))
