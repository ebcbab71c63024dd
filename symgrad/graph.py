"""spec → graph: the network as a list of matrix-level assignments, in the order of its
layers (a DAG when layers name their inputs).

    layer l     Z_l = its type's ops on its inputs     (LayerKind.build, symgrad.layers:
                dense Z_l = A W_l + b_l; batchnorm μ_l, σ²_l, X̂_l, Z_l = X̂_l ⊙ 𝟏γ_l + β_l;
                conv2d Z_l = im2col(A) W_l + 𝟏b_l; …)
    every type  A_l = f_l(Z_l); A_0 = X, Ŷ = A_L
    J   = (1/N) Σ ℓ(Ŷ, Y)          (MeanLoss)
    L   = J + λ₂ Σ_l ½‖W_l‖² + λ₁ Σ_l Σ|W_l|

A is the layer's input (``input =``, else the previous layer's output). A feature map of N images H×W×C (``inputs = [H, W, C]``, and the
outputs of conv2d and pooling layers) is the matrix of N·H·W rows (row-major n, h, w) and C
columns; H and W are the spec's, C a width symbol. Sizes are SymPy
symbols (N, n₀, n₁, …), so everything built on this graph is independent of the actual
widths and batch size.

The inference graph (``Graph.inference``) is the same network as ``forward``/``predict``
compute it: each type's inference form (batchnorm with its running statistics, the
buffers, in place of the batch's; dropout the identity).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from symgrad.ops import (
    L1,
    L2,
    AbsSum,
    Add,
    Elementwise,
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


class _Builder:
    """What a layer type's :meth:`~symgrad.layers.LayerKind.build` adds to the graph:
    parameters, buffers, masks, and assignments (to the training graph and, unless told
    otherwise, the same to the inference graph)."""

    def __init__(self, spec: Spec | None = None) -> None:
        self.spec = spec
        self.out: list[Assignment] = []
        self.infer: list[Assignment] = []  # the inference graph's own assignments
        self.params: list[Sym] = []
        self.buffers: list[Sym] = []
        self.masks: list[tuple[Sym, float]] = []

    def param(self, name: str, shape) -> Sym:
        self.params.append(Sym(name, shape, "param"))
        return self.params[-1]

    def buffer(self, name: str, shape) -> Sym:
        self.buffers.append(Sym(name, shape, "buffer"))
        return self.buffers[-1]

    def image(self, name: str) -> tuple[int, int, int]:
        """(H, W, C) of the feature map ``name`` (X, A1, …) that a window layer reads."""
        return self.spec.image(name)

    def mask(self, name: str, shape, p: float) -> Sym:
        self.masks.append((Sym(name, shape, "mask"), p))
        return self.masks[-1][0]

    def assign(self, target: Sym, rhs: Node, inference: Node | bool = True) -> None:
        """target = rhs; in the inference graph too (``inference`` True), not at all
        (False), or as ``target = inference``."""
        self.out.append(Assignment(target, rhs))
        if inference is not False:
            self.infer.append(Assignment(target, rhs if inference is True else inference))


def build_graph(spec: Spec) -> Graph:
    L = len(spec.layers)
    image = spec.input_shape  # a feature map: N·H·W rows of C (NHWC, row-major n, h, w)
    X = Sym("X", (N if image is None else N * image[0] * image[1], width(0)), "data")
    values: dict[str, Sym] = {"X": X}
    g = _Builder(spec)
    prev: Sym = X
    for l, layer in enumerate(spec.layers, 1):
        srcs = [values[name] for name in spec.sources(l)]
        rhs, inferred = layer.kind.build(l, layer, srcs, width(l), g)
        Z = Sym(f"Z{l}", rhs.shape, "value")
        g.assign(Z, rhs, inference=inferred)
        A = Sym("Yhat" if l == L else f"A{l}", rhs.shape, "value")
        fn = layer.fn
        g.assign(A, Softmax(Z) if fn.is_rowwise else Elementwise(fn, Z))
        values[f"A{l}"] = A
        prev = A
    out, params = g.out, g.params
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
    stochastic = bool(g.masks or g.buffers)
    return Graph(spec, tuple(out), tuple(params), (X, Y), tuple(g.masks), tuple(g.buffers),
                 tuple(g.infer) if stochastic else ())
