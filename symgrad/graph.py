"""spec → graph: the network as a list of matrix-level assignments, in the order of its
layers (a DAG when layers name their inputs).

    dense       Z_l = A W_l + b_l                      (BiasAdd(MatMul(A, W_l), b_l))
    batchnorm   μ_l = (1/N) 𝟏ᵀA,  σ²_l = (1/N) 𝟏ᵀ(A − 𝟏μ_l)²,
                X̂_l = (A − 𝟏μ_l) ⊙ 𝟏(σ²_l + ε)^(−½),  Z_l = X̂_l ⊙ 𝟏γ_l + β_l
    layernorm   the same over each row (μ_l, σ²_l are N×1 columns)
    dropout     Z_l = A ⊙ M_l/(1 − p)                  (M_l a 0/1 mask, an input of the step)
    add         Z_l = A + B + …                        (residual connections)
    concat      Z_l = [A B …]
    every type  A_l = f_l(Z_l); A_0 = X, Ŷ = A_L
    J   = (1/N) Σ ℓ(Ŷ, Y)          (MeanLoss)
    L   = J + λ₂ Σ_l ½‖W_l‖² + λ₁ Σ_l Σ|W_l|

A is the layer's input (``input =``, else the previous layer's output). Sizes are SymPy
symbols (N, n₀, n₁, …), so everything built on this graph is independent of the actual
widths and batch size.

The inference graph (``Graph.inference``) is the same network as ``forward``/``predict``
compute it: batchnorm with its running statistics (buffers) in place of the batch's, and
dropout the identity.
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
    Broadcast,
    ColSum,
    Concat,
    Dropout,
    Elementwise,
    Hadamard,
    Map,
    MatMul,
    MeanLoss,
    N,
    Node,
    RowSum,
    Scale,
    Softmax,
    SqNormHalf,
    Standardize,
    Sym,
)
from symgrad.spec import Spec

__all__ = ["Assignment", "Graph", "build_graph", "width"]

_A, _M = sp.Symbol("a", real=True), sp.Symbol("m", real=True)


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
    masks: tuple[tuple[Sym, float], ...] = ()  # dropout masks M_l and their p, in layer order
    buffers: tuple[Sym, ...] = ()  # batchnorm's running statistics mean_l, var_l
    inference: tuple[Assignment, ...] = ()  # forward/predict's assignments up to Ŷ (see above)

    @classmethod
    def of(cls, assignments, params, data) -> Graph:
        """A graph without a spec (expression mode): the same reverse sweep accepts it."""
        return cls(None, tuple(assignments), tuple(params), tuple(data))  # type: ignore[arg-type]

    @property
    def loss(self) -> Sym:
        return self.assignments[-1].target

    @property
    def stochastic(self) -> bool:
        """Whether training-mode evaluation differs from inference (batchnorm, dropout)."""
        return bool(self.masks or self.buffers)

    def producer(self, name: str) -> Assignment | None:
        for a in self.assignments:
            if a.target.name == name:
                return a
        return None

    def sizes(self) -> dict[sp.Symbol, int]:
        """The spec's concrete sizes for the width symbols."""
        return {width(l): n for l, n in enumerate(self.spec.sizes)}


def _normalization(l: int, src: Sym, layer, out: list[Assignment], infer: list[Assignment],
                   params: list[Sym], buffers: list[Sym]) -> Node:
    """μ_l, σ²_l and X̂_l (batch statistics; running ones for inference), then X̂ ⊙ 𝟏γ + β."""
    shape = src.shape
    axis = 0 if layer.type == "batchnorm" else 1
    stat_shape = (sp.Integer(1), shape[1]) if axis == 0 else (shape[0], sp.Integer(1))
    total, count = (ColSum, N) if axis == 0 else (RowSum, shape[1])
    mu, var = Sym(f"mu{l}", stat_shape, "value"), Sym(f"var{l}", stat_shape, "value")
    xhat = Sym(f"Xhat{l}", shape, "value")
    gamma = Sym(f"gamma{l}", (sp.Integer(1), shape[1]), "param")
    beta = Sym(f"beta{l}", (sp.Integer(1), shape[1]), "param")
    params += [gamma, beta]
    centred = Map((_A - _M) ** 2, ((_A, src), (_M, Broadcast(mu, shape))))
    stats = [Assignment(mu, Scale(1 / count, total(src))),
             Assignment(var, Scale(1 / count, total(centred)))]
    out += [*stats, Assignment(xhat, Standardize(src, mu, var, layer.eps, axis))]
    if axis == 0:  # inference: the running statistics
        mean_r, var_r = (Sym(f"{k}{l}", stat_shape, "buffer") for k in ("mean", "var"))
        buffers += [mean_r, var_r]
        infer.append(Assignment(xhat, Standardize(src, mean_r, var_r, layer.eps, axis)))
    else:
        infer += [*stats, Assignment(xhat, Standardize(src, mu, var, layer.eps, axis))]
    return BiasAdd(Hadamard(xhat, Broadcast(gamma, shape)), beta)


def build_graph(spec: Spec) -> Graph:
    L = len(spec.layers)
    X = Sym("X", (N, width(0)), "data")
    values: dict[str, Sym] = {"X": X}
    out: list[Assignment] = []
    infer: list[Assignment] = []  # the inference graph's own assignments (others shared)
    params: list[Sym] = []
    buffers: list[Sym] = []
    masks: list[tuple[Sym, float]] = []
    prev: Sym = X
    for l, layer in enumerate(spec.layers, 1):
        srcs = [values[name] for name in spec.sources(l)]
        src = srcs[0]
        if layer.type == "dense":
            W = Sym(f"W{l}", (src.shape[1], width(l)), "param")
            b = Sym(f"b{l}", (sp.Integer(1), width(l)), "param")
            params += [W, b]
            rhs: Node = BiasAdd(MatMul(src, W), b)
        elif layer.type in ("batchnorm", "layernorm"):
            rhs = _normalization(l, src, layer, out, infer, params, buffers)
        elif layer.type == "dropout":
            mask = Sym(f"M{l}", src.shape, "mask")
            masks.append((mask, layer.p))
            rhs = Dropout(src, mask, layer.p)
        elif layer.type == "add":
            rhs = Add(tuple(srcs))
        else:  # concat
            rhs = Concat(tuple(srcs))
        Z = Sym(f"Z{l}", rhs.shape, "value")
        out.append(Assignment(Z, rhs))
        infer.append(Assignment(Z, src if layer.type == "dropout" else rhs))
        A = Sym("Yhat" if l == L else f"A{l}", rhs.shape, "value")
        fn = layer.fn
        act = Assignment(A, Softmax(Z) if fn.is_rowwise else Elementwise(fn, Z))
        out.append(act)
        infer.append(act)
        values[f"A{l}"] = A
        prev = A
    Y = Sym("Y", prev.shape, "data")
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
    stochastic = bool(masks or buffers)
    return Graph(spec, tuple(out), tuple(params), (X, Y), tuple(masks), tuple(buffers),
                 tuple(infer) if stochastic else ())
