"""verify: check a gradient that a person derived by hand (``symgrad verify``).

A hand derivation is written in numpy syntax over the network's names (X, Y, N,
W1, b1, Z1, A1, …, Yhat and the adjoints dZ1, dA1, …, dYhat).  The layers beyond dense
add, for layer l: gamma{l}, beta{l} (batchnorm/layernorm parameters, 1-D like b),
mu{l}, var{l} (the batch mean and *biased* variance: 1×n rows for batchnorm, N×1
columns for layernorm), Xhat{l} (the standardized input), M{l} (a dropout mask, 0/1,
fixed per random instance), the adjoints dXhat{l}, dgamma{l}, dbeta{l}, and the scalars
eps, p (when every such layer has the same; eps{l}, p{l} always; or the literals) and
n{l} = n_{l} (the width of layer l's output: a layernorm averages over it).  ``--wrt``
takes any of W{l}, b{l}, gamma{l}, beta{l}, Z{l}, Xhat{l}, A{l}, Yhat.  Batch statistics
come from the forward pass of each instance (training mode).  It is parsed by the
safe parser (:func:`symgrad.expr.validate`, never ``eval``) and built, by
:class:`FormulaBuilder`, into the same matrix-level nodes the derivation uses
(:mod:`symgrad.ops`: ``MatMul``, ``Transpose``, ``Hadamard`` for ``*``, ``Add``,
``Sub``, ``Scale``, ``Map`` for elementwise functions, ``ColSum``/``RowSum`` for
``sum(…, axis=0|1)``), with numpy's shape and broadcasting rules checked on
*symbolic* sizes (N, n₀, n₁, …) while building: a product that cannot match is a
wrong formula ("shape"), not a crash.

A network on images (``inputs = [H, W, C]``; conv2d, maxpool2d, avgpool2d, flatten)
computes on feature maps: the map of N images H×W×C is the matrix of N·H·W rows
(row-major n, h, w) and C columns, so X, Z_l, A_l and their adjoints dZ_l, dA_l of a map
layer are such matrices, and W_l of a conv2d layer is its (kh·kw·C)×F matrix (the HWIO
kernel reshaped row-major; ``hwio(D, l)`` views a matrix D as that (kh, kw, C, F) kernel
and ``unhwio(T)`` back, and a gradient may be given in either form). Names beyond the
dense ones: ``P{l}`` = ``im2col(A, l)`` of conv layer l's input (its patch matrix,
N·Hₒ·Wₒ rows × kh·kw·C columns ordered (i, j, c)), and ``arg{l}`` of a maxpool layer (the
N·Hₒ·Wₒ × C matrix of window offsets i·kw + j, 0 … kh·kw − 1, of the *first* maximum of
each window and channel, row-major, as torch breaks ties); A_l of a pooling layer is the
pooled map. Functions, each taking the layer whose geometry it uses:
``im2col(A, l)`` and its adjoint ``col2im(D, l)`` (overlapping windows add), both with an
optional ``stride, padding`` (whole numbers; in the index arithmetic only: the same
Hₒ×Wₒ windows placed at oh·stride + i − padding, outside the image 0 — the slice without
its step, the crop without its offset), ``scatter(D, l)`` (col2im with = instead of +=: the
largest offset wins), ``route(D, l)`` (max pooling's adjoint: each entry to the first
maximum, by arg_l), ``ties(D, l)`` (to every tied maximum), ``spread(D, l)`` (average
pooling's adjoint, D/(kh·kw) to each window position, for a maxpool or avgpool layer),
``maxpool(A, l)``, ``avgpool(A, l)``, ``flatten(A, l)``/``unflatten(D, l)`` (NHWC: entry
p·C + c of a row) and ``flatten_nchw``/``unflatten_nchw`` (entry c·H·W + p, torch's
order), ``np.flip(T, axis)`` (axis 0 or 1) and ``np.rot90(T, k)`` of an HWIO kernel
``T``. The printed "correct:" formula uses these spellings (``im2col(X, 1).T @ dZ1``).
The random instances of such a network are smaller (N = 2, 3, 1 and 2 … 5 channels per
layer), in one of them data and kernels are whole numbers over √fan-in (windows with tied
maxima); the 50-digit evaluation is skipped (float64 and the proof decide), and the tiny
instance has N = 1 (one image already sums over its pixels).

The evidence is then

* **numeric** — the formula and the derived gradient evaluated on three random
  instances of different, non-square sizes (bounded whatever the spec's widths and
  depth), first in float64 (a screen: within :data:`RTOL` = 1e-8, used for the
  diagnoses), then **exactly**: the same data at :data:`PRECISION` = 50 digits, every
  value by SymPy arithmetic, compared within :data:`EXACT_RTOL` = 1e-40 — the rounding
  of a 50-digit evaluation with 10 digits to spare (looser only where the network holds
  a constant known to fewer digits: 1000 units in its last digit, e.g. 1e-14 for SELU's
  17-digit constants). Within :data:`EXACT_SECONDS`; without it only the screen remains;
* **symbolic** — on a tiny explicit instance (N = 2, widths 2..3, every entry a
  SymPy symbol) the entrywise difference is reduced to 0 within
  :data:`SYMBOLIC_BUDGET` seconds.

The verdict rule:

* **correct** (exit 0) — the symbolic proof succeeded (and the numbers agree); or no
  proof was asked for (``symbolic=False``) and the exact evaluation agrees on every
  instance. Numbers that agree never make "correct" on their own when a proof was
  attempted, and a relative perturbation of 1e-9 (or 1e-30) cannot pass the exact
  comparison.
* **not proved** (exit 1, ``Verdict.undecided``) — the numbers agree but the proof was
  over its budget or SymPy could not decide it: "not proved: agrees numerically to X on
  K instances; the symbolic check was over its budget".
* **WRONG** (exit 1) — the numbers differ (in float64, or only exactly: then a
  constant factor such as 1.000000001 is named).

Every formula printed as "correct:" or "fixed:" has passed this same check (parsed,
shape-checked, equal in float64 and exactly) before it is printed; when no spelling
passes, none is printed.  Hand formulas may use the numpy method spellings of
:data:`symgrad.expr.MATRIX_METHODS` (``dZ1.sum(axis=0)``, ``X.T.dot(dZ1)``,
``A.transpose()``, ``x.mean()``): each means its function (``sum(dZ1, axis=0)``); any
other attribute access is refused.  The command line reports each stage on stderr
once it has run :data:`PROGRESS_AFTER` seconds (on a terminal).

For a wrong formula, the classic mistakes of the layers beyond dense are tried first
(:func:`mistakes`, one table: batchnorm/layernorm without the mean or the variance path,
the unbiased variance, the wrong axis, dropout without 1/(1 − p) or without its mask, a
residual without the skip's gradient; on images the kernel flipped, col2im as a scatter,
the wrong stride or padding in backward, max pooling's δ spread over the window or sent
to every tied maximum, flatten in NCHW order, average pooling without 1/(kh·kw)); then a diagnosis is searched for among: transposed (as a whole, or
one name), a constant factor (N, 1/N, 2, ½ …) or sign, a missing
activation-derivative factor, a formula that is right for another layer (or with
one name from another layer), a missing term (the penalty's λW), and a shape that
cannot match.  The correct formula is printed in numpy syntax (:class:`NumpyPrinter`)
and in the textbook form.

Scalar mode (:func:`verify_scalar`) checks d/dx of a one-variable function against
``sympy.diff``, with the same rule: values at :data:`SCALAR_DIGITS` = 30 digits within
1e-20, "correct" only when proved.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import itertools
import keyword
import math
import operator
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import cached_property, lru_cache
from types import MappingProxyType

import numpy as np
import sympy as sp

from symgrad import naming
from symgrad.activations import expand_named
from symgrad.budget import EXHAUSTED, SIMPLIFY_SECONDS, deadline, within
from symgrad.budget import clock as _clock
from symgrad.commands import command
from symgrad.crosscheck import explicit_env, tiny_sizes
from symgrad.derive import Derivation, derive, transform, walk
from symgrad.errors import SymgradError
from symgrad.expr import (  # the parser's time limit, reused
    MATRIX_METHODS,
    SCALAR_FUNCTIONS,
    ScalarBuilder,
    _is_method,
    _iverson,
    _warm_up,
    parse_scalar,
    validate,
)
from symgrad.graph import width
from symgrad.layers import PARAM_FAMILIES, kinds_with
from symgrad.ops import (
    L1,
    L2,
    ONE,
    Add,
    Broadcast,
    ColSlice,
    ColSum,
    Concat,
    Const,
    Dropout,
    Elementwise,
    Exp,
    Hadamard,
    InvStd,
    Map,
    MatMul,
    MeanLoss,
    N,
    Node,
    Ones,
    RowSum,
    Scale,
    Standardize,
    Sub,
    Sym,
    Transpose,
    add,
    hadamard,
)
from symgrad.ops.conv import (
    AvgPool,
    AvgPoolBack,
    Col2im,
    Flatten,
    Geometry,
    Im2col,
    MaxPool,
    MaxPoolBack,
    PoolArgmax,
    Unflatten,
)
from symgrad.ops.normalization import exact
from symgrad.printing import TextScalarPrinter
from symgrad.printing import text as textbook
from symgrad.spec import Spec, as_spec, load_spec

__all__ = [
    "Verdict", "verify", "verify_scalar", "NumpyPrinter", "numpy_text", "FormulaBuilder",
    "DIAGNOSES",
]

RTOL = 1e-8  # float64 screening: max relative error per entry (never decides "correct")
PRECISION = 50  # decimal digits of the exact evaluation
EXACT_RTOL = 10.0 ** -(PRECISION - 10)  # its tolerance: rounding at 50 digits, 10 digits spare
EXACT_SECONDS = 5.0  # seconds SymPy may spend on the exact evaluation of the instances
SYMBOLIC_BUDGET = 2.0  # seconds SymPy may spend on the symbolic proof
INSTANCE_N = (3, 5, 4)  # batch sizes of the random instances (widths differ too)
INSTANCE_N_MAPS = (2, 3, 1)  # … of a network on images (N·H·W rows; channels 2 … 5)
EXACT_MAP_ROWS = 150  # the largest N·H·W of a map the 50-digit evaluation takes on
PROGRESS_AFTER = 1.5  # seconds: the command line reports each stage after this long

DIAGNOSES = (
    "transposed", "factor", "sign", "shape", "activation-derivative", "layer",
    "missing-term", "axis", "other-gradient",
    "mean-path", "variance-path", "unbiased-variance", "norm-axis", "dropout-scale",
    "dropout-mask", "skip", "fan-out",
    "flipped-kernel", "col2im-overwrite", "stride", "padding", "maxpool-average",
    "maxpool-ties", "avgpool-scale", "flatten-order",
)
"""Diagnosis codes a :class:`Verdict` may carry (None: no simple diagnosis fits)."""


# --------------------------------------------------------------------------
# Shapes: numpy shapes over symbolic sizes
# --------------------------------------------------------------------------

Shape = tuple  # () scalar, (n,) a 1-D vector, (r, c) a matrix; sizes are SymPy expressions
_ONE = sp.Integer(1)
_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def _internal(shape: Shape) -> tuple:
    """The 2-D shape a value of numpy ``shape`` has inside the IR (a vector is a row)."""
    if len(shape) == 0:
        return (_ONE, _ONE)
    if len(shape) == 1:
        return (_ONE, shape[0])
    return tuple(shape)


def _dim_text(d: sp.Expr) -> str:
    if isinstance(d, sp.Symbol) and d.name.startswith("n_"):
        return "n" + d.name[2:].translate(_SUB)
    return re.sub(r"n_(\d+)", lambda m: "n" + m.group(1).translate(_SUB),
                  str(d).replace("*", "·"))


def _shape_text(shape: Shape) -> str:
    if len(shape) == 0:
        return "a scalar"
    if len(shape) == 1:
        return f"({_dim_text(shape[0])},)"
    return "×".join(f"({t})" if " " in t else t for t in map(_dim_text, shape))


def _broadcast2(a: Shape, b: Shape) -> Shape | None:
    """numpy's broadcasting of two shapes (trailing dimensions aligned), or None."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else _ONE
        y = b[-i] if i <= len(b) else _ONE
        if x == y or y == _ONE:
            out.append(x)
        elif x == _ONE:
            out.append(y)
        else:
            return None
    return tuple(reversed(out))


def _size(d: sp.Expr, env: dict) -> int:
    return int(d.xreplace({s: env[s] for s in d.free_symbols}))


# --------------------------------------------------------------------------
# Nodes the hand formulas need beyond symgrad.ops
# --------------------------------------------------------------------------


# Broadcast and Ones live in symgrad.ops (expression mode differentiates through them).


def _broadcast(node: Node, shape: tuple) -> Node:
    return node if tuple(node.shape) == tuple(shape) else Broadcast(node, tuple(shape))


def _scale(c: sp.Expr, node: Node) -> Node:
    if isinstance(node, Scale):
        c, node = c * node.c, node.x
    return node if c == 1 else Scale(c, node)


def _transpose(node: Node) -> Node:
    return node.x if isinstance(node, Transpose) else Transpose(node)


# Feature-map nodes of hand formulas (and of the classic mistakes): the windows of a
# geometry written out as an index table, so that a wrong stride, a wrong padding or a
# scatter that overwrites means exactly what the buggy numpy code computes.


@dataclass(frozen=True)
class _Placed(Geometry):
    """A layer's geometry with another stride or padding in the index arithmetic only:
    the same Hₒ×Wₒ windows (``out_h``, ``out_w``), each placed at oh·sh + i − ph; a window
    position outside the image reads 0 (the slice without its step, the crop without its
    offset)."""

    out_h: int = 1
    out_w: int = 1

    @property
    def ho(self) -> int:
        return self.out_h

    @property
    def wo(self) -> int:
        return self.out_w


def _placed(g: Geometry, stride: tuple[int, int] | None, padding: tuple[int, int] | None) -> Geometry:
    sh, sw = (g.sh, g.sw) if stride is None else stride
    ph, pw = (g.ph, g.pw) if padding is None else padding
    if (sh, sw, ph, pw) == (g.sh, g.sw, g.ph, g.pw):
        return g
    return _Placed(g.h, g.w, g.kh, g.kw, sh, sw, ph, pw, g.ho, g.wo)


def _table(g: Geometry, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(output row, input row, offset) of every window position inside the image."""
    rows = [(r, s, k) for r, s, k in g.windows(n) if s is not None]
    if not rows:
        return (np.zeros(0, np.int64),) * 3
    r, s, k = (np.array(c, np.int64) for c in zip(*rows, strict=True))
    return r, s, k


@dataclass(frozen=True, eq=True)
class Windowed(Node):
    """``mode`` of a map by a geometry's index table: "im2col" (the patch matrix), "col2im"
    (its adjoint: entries added back), "scatter" (written back with =: at a pixel under
    several windows the largest offset i·kw + j wins, as ``padded[…] = cols[…, k, :]`` in
    a loop over k)."""

    x: Node
    geom: Geometry
    mode: str

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        g, (r, c) = self.geom, self.x.shape
        if self.mode == "im2col":
            return (r * sp.Rational(g.ho * g.wo, g.h * g.w), g.k * c)
        return (r * sp.Rational(g.h * g.w, g.ho * g.wo), c / g.k)

    def numeric(self, env):
        a, g = np.asarray(self.x.numeric(env), dtype=np.float64), self.geom
        if self.mode == "im2col":
            n, c = a.shape[0] // (g.h * g.w), a.shape[1]
            r, s, k = _table(g, n)
            out = np.zeros((n * g.ho * g.wo, g.k, c))
            out[r, k, :] = a[s, :]
            return out.reshape(-1, g.k * c)
        n, c = a.shape[0] // (g.ho * g.wo), a.shape[1] // g.k
        r, s, k = _table(g, n)
        cols = a.reshape(-1, g.k, c)
        out = np.zeros((n * g.h * g.w, c))
        if self.mode == "col2im":
            np.add.at(out, s, cols[r, k, :])
        else:
            for off in range(g.k):
                sel = k == off
                out[s[sel]] = cols[r[sel], off, :]
        return out

    def explicit(self, env):
        a, g = self.x.explicit(env), self.geom
        if self.mode == "im2col":
            n, c = a.rows // (g.h * g.w), a.cols
            out = sp.zeros(n * g.ho * g.wo, g.k * c)
            for r, s, k in g.windows(n):
                if s is not None:
                    for ch in range(c):
                        out[r, k * c + ch] = a[s, ch]
            return out
        n, c = a.rows // (g.ho * g.wo), a.cols // g.k
        out = sp.zeros(n * g.h * g.w, c)
        for r, s, k in sorted(g.windows(n), key=lambda t: t[2]):
            if s is not None:
                for ch in range(c):
                    v = a[r, k * c + ch]
                    out[s, ch] = out[s, ch] + v if self.mode == "col2im" else v
        return out


@dataclass(frozen=True, eq=True)
class Ties(Node):
    """G routed to *every* position of its window equal to the window's maximum (a max-pool
    rule that does not pick the first maximum). At symbolic entries (unique maxima) it is
    max pooling's own rule."""

    g: Node
    x: Node  # the pooled layer's input
    arg: Node
    geom: Geometry

    @property
    def children(self):
        return (self.g, self.x)

    @property
    def shape(self):
        return self.x.shape

    def numeric(self, env):
        gm, a, g = self.g.numeric(env), self.x.numeric(env), self.geom
        c = a.shape[1]
        padded = g.padded(a, -np.inf)
        best = np.max(np.stack([g.view(padded, k) for k in range(g.k)]), axis=0)
        grid = gm.reshape(-1, g.ho, g.wo, c)
        out = np.zeros_like(padded)
        for k in range(g.k):
            g.view(out, k)[...] += np.where(g.view(padded, k) == best, grid, 0.0)
        return g.cropped(out)

    def explicit(self, env):
        return MaxPoolBack(self.g, self.arg, self.geom).explicit(env)


@dataclass(frozen=True, eq=True)
class FlattenNCHW(Node):
    """flatten (``inverse`` False) or unflatten in NCHW order: row n of the flat value holds
    entry (p, c) of image n's map at c·H·W + p (torch's flatten of an NCHW tensor)."""

    x: Node
    pixels: int
    inverse: bool

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        r, c = self.x.shape
        if self.inverse:
            return (r * self.pixels, c / self.pixels)
        return (r / self.pixels, c * self.pixels)

    def numeric(self, env):
        a, p = self.x.numeric(env), self.pixels
        if self.inverse:
            n, c = a.shape[0], a.shape[1] // p
            return a.reshape(n, c, p).transpose(0, 2, 1).reshape(n * p, c)
        n, c = a.shape[0] // p, a.shape[1]
        return a.reshape(n, p, c).transpose(0, 2, 1).reshape(n, p * c)

    def explicit(self, env):
        a, p = self.x.explicit(env), self.pixels
        if self.inverse:
            n, c = a.rows, a.cols // p
            return sp.Matrix(n * p, c, lambda i, j: a[i // p, j * p + i % p])
        n, c = a.rows // p, a.cols
        return sp.Matrix(n, p * c, lambda i, j: a[i * p + j % p, j // p])


@dataclass(frozen=True, eq=True)
class KernelPermute(Node):
    """A (kh·kw·C)×F kernel matrix (HWIO row-major) with its kh·kw window positions
    permuted: row block ``perm[k]`` moves to position k (np.flip / np.rot90 of the HWIO
    kernel over its spatial axes)."""

    x: Node
    perm: tuple[int, ...]

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return self.x.shape

    def numeric(self, env):
        a = self.x.numeric(env)
        k = len(self.perm)
        return a.reshape(k, a.shape[0] // k, -1)[list(self.perm)].reshape(a.shape)

    def explicit(self, env):
        a = self.x.explicit(env)
        k = len(self.perm)
        c = a.rows // k
        return sp.Matrix(a.rows, a.cols, lambda i, j: a[self.perm[i // c] * c + i % c, j])


def _kernel_perm(kh: int, kw: int, op: str, arg: int) -> tuple[tuple[int, ...], int, int]:
    """(perm, kh′, kw′) of np.flip(T, axis=arg) (arg 0, 1 or None: both) or np.rot90(T, arg)
    on an HWIO kernel T, as in :class:`KernelPermute`."""
    grid = np.arange(kh * kw).reshape(kh, kw)
    if op == "flip":
        out = np.flip(grid, axis=(0, 1) if arg is None else arg)
    else:
        out = np.rot90(grid, arg)
    return tuple(int(v) for v in out.reshape(-1)), out.shape[0], out.shape[1]


# --------------------------------------------------------------------------
# Printing IR as numpy syntax
# --------------------------------------------------------------------------

ATOM, POSTFIX, POW, UNARY, MUL, ADD, COMPARE = 100, 90, 80, 70, 60, 50, 40
_NUMPY_NAMES = {
    "exp", "log", "log1p", "expm1", "sqrt", "abs", "sign", "tanh", "sinh", "cosh", "sin",
    "cos", "tan", "arctan", "maximum", "minimum", "where", "sum", "mean", "ones", "transpose",
    "heaviside",
}
_FUNCTION_NAMES = {
    "Abs": "abs", "Heaviside": "heaviside", "Max": "maximum", "Min": "minimum",
    "atan": "arctan", "Exp": "exp",
}


class NumpyPrinter:
    """Matrix-level IR (and scalar SymPy) as numpy syntax, the way a person writes it:
    ``X.T @ dZ1``, ``sum(dZ1, axis=0)``, ``(dZ2 @ W2.T) * (1 - A1**2)``.

    The output is accepted by the safe parser and means in numpy what the IR means: a
    column sum is 1-D (``sum(x, axis=0)``, a row wherever it broadcasts) except where a
    1-D vector would change the meaning — transposed, or on the right of ``@`` — where it
    keeps its dimension (``keepdims=True``; always, with ``keepdims=True`` here).
    ``verify`` still checks every formula it prints (:meth:`_Check.suggestion`).
    ``prefix="np."`` writes numpy's functions as ``np.sum``, ``np.tanh``, …
    """

    def __init__(self, prefix: str = "", keepdims: bool = False,
                 maps: dict[tuple, int] | None = None) -> None:
        self.prefix = prefix
        self.keepdims = keepdims
        self.maps = maps or {}  # a feature-map op's layer (Network.map_names): im2col(X, 1)

    def doprint(self, item: Node | sp.Basic) -> str:
        return (self.node(item) if isinstance(item, Node) else self.scalar(item, {}))[0]

    def fn(self, name: str) -> str:
        return self.prefix + name if name in _NUMPY_NAMES else name

    @staticmethod
    def wrap(printed: tuple[str, int], at_least: int) -> str:
        s, p = printed
        return s if p >= at_least else f"({s})"

    # --- matrices

    def node(self, n: Node) -> tuple[str, int]:
        method = getattr(self, f"_node_{type(n).__name__}", None)
        if method is None:
            return str(n), ATOM
        return method(n)

    def _node_Sym(self, n):
        return n.name, ATOM

    def _node_Const(self, n):
        return self.scalar(n.value, {})

    def _node_Transpose(self, n):
        return self.wrap(self.two_d(n.x), POSTFIX) + ".T", POSTFIX

    def two_d(self, n: Node) -> tuple[str, int]:
        """``n`` printed so that numpy sees a 2-D array (``.T`` of a 1-D one is a no-op)."""
        if isinstance(n, ColSum):
            return f"{self.fn('sum')}({self.node(n.x)[0]}, axis=0, keepdims=True)", ATOM
        return self.node(n)

    def product(self, a: Node, op: str, b: Node) -> tuple[str, int]:
        """a @ b or a * b; a product of the other kind inside is bracketed, as people
        write (dZ2 @ W2.T) * (1 - A1**2) although Python would not need it."""
        other = Hadamard if op == "@" else MatMul
        left = self.node(a)
        right = self.two_d(b) if op == "@" else self.node(b)
        left_s = f"({left[0]})" if isinstance(a, other) else self.wrap(left, MUL)
        # ⊙ is associative: A * (B * C) is written A * B * C
        chain = op == "*" and (isinstance(b, Hadamard) or (
            isinstance(b, Map) and isinstance(b.expr, sp.Mul)))
        right_s = self.wrap(right, MUL if chain else MUL + 1)
        return f"{left_s} {op} {right_s}", MUL

    def _node_MatMul(self, n):
        return self.product(n.a, "@", n.b)

    def _node_Hadamard(self, n):
        return self.product(n.a, "*", n.b)

    def _node_Add(self, n):
        out = self.wrap(self.node(n.terms[0]), ADD)
        for t in n.terms[1:]:
            if isinstance(t, Scale) and t.c.could_extract_minus_sign():
                out += " - " + self.wrap(self.node(_scale(-t.c, t.x)), ADD + 1)
            else:
                out += " + " + self.wrap(self.node(t), ADD)
        return out, ADD

    def _node_BiasAdd(self, n):
        return self._node_Add(Add((n.a, n.b)))

    def _node_Sub(self, n):
        return f"{self.wrap(self.node(n.a), ADD)} - {self.wrap(self.node(n.b), ADD + 1)}", ADD

    def _node_Scale(self, n):
        c = n.c
        if c.could_extract_minus_sign():
            inner = self.node(_scale(-c, n.x))
            return "-" + self.wrap(inner, UNARY), UNARY
        num, den = sp.fraction(c)
        body = self.node(n.x)
        if den == 1:
            return f"{self.wrap(self.scalar(num, {}), MUL)} * {self.wrap(body, MUL + 1)}", MUL
        head = self.wrap(body, MUL) if num == 1 else (
            f"{self.wrap(self.scalar(num, {}), MUL)} * {self.wrap(body, MUL + 1)}")
        return f"{head} / {self.wrap(self.scalar(den, {}), MUL + 1)}", MUL

    def _node_ColSum(self, n):
        if self.keepdims:
            return self.two_d(n)
        return f"{self.fn('sum')}({self.node(n.x)[0]}, axis=0)", ATOM

    def _node_RowSum(self, n):
        return f"{self.fn('sum')}({self.node(n.x)[0]}, axis=1, keepdims=True)", ATOM

    def _node_Map(self, n):
        return self.scalar(n.expr, {s: self.node(child) for s, child in n.args})

    def _node_Elementwise(self, n):
        from symgrad.activations import X as X_SYM

        return self.scalar(n.fn.expr, {X_SYM: self.node(n.x)})

    def _node_Softmax(self, n):
        return f"softmax({self.node(n.x)[0]})", ATOM

    def _node_Broadcast(self, n):
        return self.node(n.x)

    def _node_InvStd(self, n):
        return f"1 / {self.fn('sqrt')}({n.var.name} + {float(n.eps)!r})", MUL

    def _node_Dropout(self, n):
        return f"{self.wrap(self.node(n.x), MUL)} * {n.mask.name} / {1.0 - float(n.p)!r}", MUL

    def _node_ColSlice(self, n):
        start = "" if n.start == 0 else self.scalar(n.start, {})[0]
        stop = "" if sp.expand(n.stop - n.x.shape[1]) == 0 else self.scalar(n.stop, {})[0]
        return f"{self.wrap(self.node(n.x), ATOM)}[:, {start}:{stop}]", POSTFIX

    # --- feature maps: the function and the layer whose geometry it is (verify reads it)

    def _map(self, fn: str, key: tuple, x: Node) -> tuple[str, int]:
        if key not in self.maps:
            return str(x), ATOM
        return f"{fn}({self.node(x)[0]}, {self.maps[key]})", ATOM

    def _node_Im2col(self, n):
        return self._map("im2col", ("im2col", n.geom), n.x)

    def _node_Col2im(self, n):
        return self._map("col2im", ("im2col", n.geom), n.x)

    def _node_MaxPoolBack(self, n):
        return f"route({self.node(n.g)[0]}, {naming.layer_of(n.arg.name)})", ATOM

    def _node_AvgPoolBack(self, n):
        return self._map("spread", ("pool", n.geom), n.g)

    def _node_MaxPool(self, n):
        return self._map("maxpool", ("pool", n.geom), n.x)

    def _node_AvgPool(self, n):
        return self._map("avgpool", ("pool", n.geom), n.x)

    def _node_Flatten(self, n):
        return self._map("flatten", ("flatten", n.pixels), n.x)

    def _node_Unflatten(self, n):
        return self._map("unflatten", ("flatten", n.pixels), n.x)

    def _node_Ones(self, n):
        r, c = n.shape
        return f"{self.fn('ones')}({self.scalar(c, {})[0]})", ATOM

    # --- scalars (bodies of elementwise maps)

    def scalar(self, e: sp.Basic, names: dict) -> tuple[str, int]:
        if e in names:
            return names[e]
        if isinstance(e, sp.Symbol):  # a width n_1 is written n1, as a formula names it
            return {N: "N", L2: "l2", L1: "l1"}.get(e, re.sub(r"^n_(\d+)$", r"n\1", e.name)), ATOM
        if e is sp.E:
            return "e", ATOM
        if e is sp.pi:
            return "pi", ATOM
        if isinstance(e, sp.Integer):
            return str(e), (UNARY if e < 0 else ATOM)
        if isinstance(e, sp.Rational):
            return f"{e.p}/{e.q}", (UNARY if e < 0 else MUL)
        if isinstance(e, sp.Float):
            return repr(float(e)), (UNARY if e < 0 else ATOM)
        if isinstance(e, sp.Add):
            return self._scalar_add(e, names)
        if isinstance(e, sp.Mul):
            return self._scalar_mul(e, names)
        if isinstance(e, sp.Pow):
            return self._scalar_pow(e, names)
        if isinstance(e, sp.Piecewise):
            return self._scalar_piecewise(list(e.args), names)
        if isinstance(e, sp.Rel):
            op = {"==": "==", "!=": "!="}.get(e.rel_op, e.rel_op)
            lhs, rhs = self.scalar(e.lhs, names), self.scalar(e.rhs, names)
            return f"{self.wrap(lhs, ADD)} {op} {self.wrap(rhs, ADD)}", COMPARE
        if isinstance(e, sp.Function):
            name = _FUNCTION_NAMES.get(type(e).__name__, type(e).__name__)
            args = e.args[:1] if name == "heaviside" else e.args
            inner = ", ".join(self.scalar(a, names)[0] for a in args)
            return f"{self.fn(name)}({inner})", ATOM
        return str(e), ATOM

    def _scalar_add(self, e, names):
        terms = sorted(e.args, key=lambda t: t.could_extract_minus_sign())
        out = self.wrap(self.scalar(terms[0], names), ADD)
        for t in terms[1:]:
            if t.could_extract_minus_sign():
                out += " - " + self.wrap(self.scalar(-t, names), ADD + 1)
            else:
                out += " + " + self.wrap(self.scalar(t, names), ADD)
        return out, ADD

    def _scalar_mul(self, e, names):
        if e.could_extract_minus_sign():
            # -y / a: Python reads (-y) / a, the same value; MUL keeps it bracketed
            # wherever a product would be
            inner = self.scalar(-e, names)
            return "-" + self.wrap(inner, MUL), MUL
        num, den = [], []
        for f in sp.Mul.make_args(e):
            if f.is_Pow and f.exp.is_number and f.exp.is_negative:
                den.append(f.base if f.exp == -1 else sp.Pow(f.base, -f.exp, evaluate=False))
            elif f.is_Rational and not f.is_Integer:
                if f.p != 1:
                    num.append(sp.Integer(f.p))
                den.append(sp.Integer(f.q))
            else:
                num.append(f)
        top = " * ".join(self.wrap(self.scalar(f, names), MUL) for f in num) if num else "1"
        for f in den:
            top += " / " + self.wrap(self.scalar(f, names), MUL + 1)
        return top, MUL

    def _scalar_pow(self, e, names):
        base, exp = e.base, e.exp
        if exp == sp.Rational(1, 2):
            return f"{self.fn('sqrt')}({self.scalar(base, names)[0]})", ATOM
        if exp.is_number and exp.is_negative:
            inner = self.scalar(base if exp == -1 else sp.Pow(base, -exp, evaluate=False), names)
            return f"1 / {self.wrap(inner, MUL + 1)}", MUL
        return f"{self.wrap(self.scalar(base, names), POW + 1)}**{self.wrap(self.scalar(exp, names), POW)}", POW

    def _scalar_piecewise(self, pieces, names):
        (value, cond), rest = pieces[0], pieces[1:]
        if cond is sp.true or not rest:
            return self.scalar(value, names)
        other = self._scalar_piecewise(rest, names)[0]
        c = self.scalar(cond, names)[0]
        v = self.scalar(value, names)[0]
        return f"{self.fn('where')}({c}, {v}, {other})", ATOM


def numpy_text(item: Node | sp.Basic, prefix: str = "", spec: Spec | None = None) -> str:
    """``item`` in numpy syntax (``X.T @ dZ1``); with ``spec``, a feature-map op of its
    derivation as verify reads it (``im2col(X, 1)``: the layer whose geometry it is)."""
    maps = _network(as_spec(spec)).map_names if spec is not None else None
    return NumpyPrinter(prefix, maps=maps).doprint(item)


# --------------------------------------------------------------------------
# The network: names, targets, random instances, the tiny explicit instance
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A quantity whose gradient can be verified: ∂L/∂``name``."""

    name: str  # canonical primal name: W1, b1, Z1, A1, Yhat
    cot: str  # its cotangent's name in the environment: dW1, dZ1, dYhat
    node: Node  # the derived formula
    shape: Shape  # numpy shape of the gradient (a bias's gradient is 1-D)
    family: str  # W, b, Z, A
    layer: int

    @property
    def display(self) -> str:
        return naming.text(self.cot) if self.family != "Z" else f"δ{str(self.layer).translate(_SUB)}"

    @property
    def partial(self) -> str:
        return f"∂L/∂{naming.text(self.name)}"


class _ShapeError(Exception):
    """A formula whose shapes cannot match (a wrong formula, not bad input)."""


@dataclass
class _Instance:
    env: dict
    sizes: dict  # display name -> int
    floor: float = 0.0  # FLOOR × the largest gradient entry of the instance (_relerr)

    def text(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.sizes.items())


class Network:
    """Everything ``verify`` needs about one spec, computed once."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.d: Derivation = derive(spec)
        self.L = L = len(spec.layers)
        g = self.d.graph
        widths = [width(l) for l in range(L + 1)]
        self.widths = widths
        steps = {e.target.name: e for e in self.d.steps}
        backward = {e.target.name: e.rhs for e in self.d.backward}
        self.steps = steps
        loss = next(a.rhs for a in g.assignments if isinstance(a.rhs, MeanLoss))
        self.dyhat_generic = loss.vjp(ONE, None)[0]
        self.dense = all(layer.kind.plain for layer in spec.layers)
        values = {a.target.name: a.target for a in g.assignments}

        # user names -> (leaf, numpy shape); a 1×n parameter is 1-D, as in numpy
        m: dict[str, tuple[Sym, Shape]] = {}
        for s in g.data:
            m[s.name] = (s, s.shape)
        params = {p.name: p for p in g.params}
        for l in range(1, L + 1):
            layer = spec.layers[l - 1]
            kind = layer.kind  # its parameters and named intermediates (symgrad.layers)
            for name in kind.params:
                p = params[f"{name}{l}"]
                m[p.name] = (p, p.shape if name == "W" else (p.shape[1],))
            for name in kind.statistics:  # mu3, var3, Xhat3 and dXhat3
                s = values[f"{name}{l}"]
                m[s.name] = (s, s.shape)
            for name in kind.adjoints:
                x = values[f"{name}{l}"]
                m[f"d{name}{l}"] = (Sym(f"d{name}{l}", x.shape, "cotangent"), x.shape)
            for name in () if kind.plain else kind.params:
                    s = params[f"{name}{l}"]
                    m[f"d{name}{l}"] = (Sym(f"d{name}{l}", s.shape, "cotangent"), (s.shape[1],))
            value = values[f"Z{l}"].shape
            m[f"Z{l}"] = (Sym(f"Z{l}", value, "value"), value)
            m[f"dZ{l}"] = (Sym(f"dZ{l}", value, "cotangent"), value)
            m[f"delta{l}"] = m[f"dZ{l}"]
            a = "Yhat" if l == L else f"A{l}"
            m[a] = (Sym(a, value, "value"), value)
            m["d" + a] = (Sym("d" + a, value, "cotangent"), value)
        for mask, _p in g.masks:
            m[mask.name] = (mask, mask.shape)
        m[f"A{L}"] = m["A_L"] = m["Yhat"]
        m[f"dA{L}"] = m["dA_L"] = m["dYhat"]
        tied = self.tied or {}
        canon = {widths[l]: widths[r] for l, r in tied.items() if l != r}
        if canon:  # an add's inputs are as wide as each other: one size for both
            m = {k: (s, tuple(d.xreplace(canon) for d in shape)) for k, (s, shape) in m.items()}
        self.canon = canon
        self.width_symbols = {w.xreplace(canon) for w in widths}
        # the spec's widths by value: each layer's width, and the column bounds of a concat
        at = {w: v for w, v in zip(widths, spec.sizes, strict=True)}
        found: dict[int, list[sp.Expr]] = {}
        exprs = [values[f"Z{l}"].shape[1] if l else widths[0] for l in range(L + 1)]
        exprs += [b for a in g.assignments if isinstance(a.rhs, Concat)
                  for bounds in a.rhs.bounds() for b in bounds]
        for e in exprs:
            e = sp.expand(e.xreplace(canon))
            if e.free_symbols and e not in found.setdefault(int(e.xreplace(at)), []):
                found[int(e.xreplace(at))].append(e)
        self.spec_widths = found
        self.matrices = m
        self.scalars: dict[str, sp.Basic] = {"N": N}
        if spec.l2:
            self.scalars.update({"l2": L2, "lambda2": L2, "lambda_2": L2})
        if spec.l1:
            self.scalars.update({"l1": L1, "lambda1": L1, "lambda_1": L1})
        if not self.dense:  # the widths (a row statistic averages over n_l), eps and p by layer
            for l in range(L + 1):
                n = values[f"Z{l}"].shape[1] if l else widths[0]
                self.scalars[f"n{l}"] = self.scalars[f"n_{l}"] = n.xreplace(canon)
            for key in ("eps", "p"):
                found = {l: exact(getattr(ly, key)) for l, ly in enumerate(spec.layers, 1)
                         if getattr(ly, key) is not None}
                self.scalars.update({f"{key}{l}": v for l, v in found.items()})
                if len(set(found.values())) == 1:
                    self.scalars[key] = next(iter(found.values()))

        # targets: every parameter, and every value whose cotangent the sweep computes
        t: dict[str, Target] = {}
        for l in range(1, L + 1):
            layer = spec.layers[l - 1]
            for fam in layer.kind.params:
                name = f"{fam}{l}"
                cot = "d" + name
                t[name] = Target(name, cot, backward.get(cot, steps[cot].rhs), m[name][1], fam, l)
            if f"dXhat{l}" in steps:
                t[f"Xhat{l}"] = Target(f"Xhat{l}", f"dXhat{l}", steps[f"dXhat{l}"].rhs,
                                       m[f"Xhat{l}"][1], "Xhat", l)
            if f"dZ{l}" in steps or f"dZ{l}" in backward:
                t[f"Z{l}"] = Target(f"Z{l}", f"dZ{l}", backward.get(f"dZ{l}", steps[f"dZ{l}"].rhs),
                                    m[f"Z{l}"][1], "Z", l)
            a = "Yhat" if l == L else f"A{l}"
            node = steps["d" + a].rhs if "d" + a in steps else self.dyhat_generic
            t[a] = Target(a, "d" + a, node, m[a][1], "A", l)
        self.targets = t
        self.suggestions: dict[tuple, str] = {}  # verified numpy spellings (_Check.suggestion)

        # feature-map layers (by their ops): conv l's patch matrix P{l}, maxpool l's arg{l}
        self.maps: dict[int, tuple] = {}  # layer -> (op kind, geometry or pixels, input, arg)
        self.derived: dict[str, tuple[Node, Shape]] = {}
        self.map_names: dict[tuple, int] = {}  # how NumpyPrinter names an op: its layer
        for l in range(1, L + 1):
            op = next((a.rhs for a in g.assignments if a.target.name == f"Z{l}"), None)
            found = [n for n in walk(op) if isinstance(n, Im2col | MaxPool | AvgPool | Flatten)] \
                if op is not None else []
            if not found:
                continue
            n = found[0]
            if isinstance(n, Im2col):
                self.maps[l] = ("conv2d", n.geom, n.x, None)
                self.derived[f"P{l}"] = (n, n.shape)
                self.map_names.setdefault(("im2col", n.geom), l)
            elif isinstance(n, MaxPool):
                self.maps[l] = ("maxpool2d", n.geom, n.x, n.arg)
                m[n.arg.name] = (n.arg, n.arg.shape)
                self.map_names.setdefault(("pool", n.geom), l)
            elif isinstance(n, AvgPool):
                self.maps[l] = ("avgpool2d", n.geom, n.x, None)
                self.map_names.setdefault(("pool", n.geom), l)
            else:
                self.maps[l] = ("flatten", n.pixels, n.x, None)
                self.map_names.setdefault(("flatten", n.pixels), l)

    # --- names

    def family(self, name: str, adjacent: bool = False) -> list[str]:
        """``name``'s kind at the other layers (for 'layer' diagnoses); ``adjacent``:
        only the layers just before and after."""
        members = self._family(name)
        if not adjacent:
            return members
        own = self._layer(name)
        return [m for m in members if abs(self._layer(m) - own) == 1]

    def _layer(self, name: str) -> int:
        if name in ("X",):
            return 0
        if name in ("Yhat", "dYhat", "A_L", "dA_L"):
            return self.L
        digits = re.sub(r"\D", "", name)
        return int(digits) if digits else -99

    def _family(self, name: str) -> list[str]:
        L = self.L
        m = re.fullmatch(r"(d|delta|)(W|b|Z|A|X|Yhat|gamma|beta|Xhat|mu|var|M|)(\d*)", name)
        if not m or name not in self.matrices or name == "Y":
            return []
        prefix, letter, idx = m.groups()
        if prefix == "delta":
            return [f"delta{l}" for l in range(1, L + 1) if f"delta{l}" != name]
        if letter not in ("A", "X", "Yhat", ""):
            return [f"{prefix}{letter}{l}" for l in range(1, L + 1)
                    if f"{prefix}{letter}{l}" != name and f"{prefix}{letter}{l}" in self.matrices]
        # the A family: X = A0, A1, …, Yhat = A_L (and its adjoints)
        if prefix == "d":
            members = [f"dA{l}" for l in range(1, L)] + ["dYhat"]
            return [x for x in members if self.matrices[x][0] != self.matrices[name][0]]
        members = ["X"] + [f"A{l}" for l in range(1, L)] + ["Yhat"]
        return [x for x in members if self.matrices[x][0] != self.matrices[name][0]]

    def unknown(self, name: str) -> str:
        """The message for a name the formula may not use."""
        L = self.L
        m = re.fullmatch(r"(d|delta)?(W|b|Z|A|gamma|beta|Xhat|mu|var|M|)(\d+)", name)
        if m and (m.group(2) or m.group(1) == "delta"):
            prefix, letter = m.group(1) or "", m.group(2)
            if prefix == "d" and letter in ("W", "b"):
                return (f"'{name}' is a parameter gradient, which is what verify checks; "
                        "write it out (e.g. X.T @ dZ1)")
            if prefix == "d" and letter in ("mu", "var", "M"):
                folds = "'s and ".join(kinds_with("mu").split(" or "))
                return (f"'{name}' is not computed by the sweep: {folds}'s "
                        "rule folds the paths through mu and var into dA (use dXhat), and a "
                        f"{kinds_with('M')} mask is not differentiated")
            if letter in ("W", "b"):
                have = [f"{x}{l}" for l in range(1, L + 1) for x in ("W", "b")
                        if f"{x}{l}" in self.matrices]
            elif letter not in ("A", "Z", ""):
                have = [n for n in self.matrices if re.fullmatch(f"{prefix}{letter}\\d+", n)]
                if not have:
                    return f"unknown name '{name}' (the network has no {kinds_with(letter)} layer)"
            elif letter == "A":
                have = [f"{prefix}A{l}" for l in range(1, L)] + [f"{prefix}Yhat (= {prefix}A{L})"]
            else:  # Z, dZ, delta
                have = [f"{prefix}{letter}{l}" for l in range(1, L + 1)]
            return f"unknown name '{name}' (the network has {', '.join(have)})"
        if name in ("L", "J", "loss"):
            return f"'{name}' (the loss) cannot appear in a gradient"
        allowed = [*self.matrices, *self.scalars]
        close = difflib.get_close_matches(name, allowed, n=1)
        if close:
            return f"unknown name '{name}' (did you mean '{close[0]}'?)"
        shown = [n for n in allowed if not n.startswith(("delta", "lambda", "A_L", "dA_L"))]
        return f"unknown name '{name}' (allowed: {', '.join(shown)})"

    def target(self, wrt: str) -> Target:
        name = wrt.strip()
        if name.startswith("delta") and name[5:].isdigit():
            name = "Z" + name[5:]
        if name not in self.targets and name.startswith("d") and len(name) > 1:
            name = name[1:]  # --wrt dW1 means W1
        name = {f"A{self.L}": "Yhat", "A_L": "Yhat", "A0": "X"}.get(name, name)
        if name in self.targets:
            return self.targets[name]
        if re.fullmatch(r"(mu|var|M)\d+", name) and name in self.matrices:
            what = "a dropout mask" if name.startswith("M") else "a batch statistic"
            raise SymgradError("--wrt", f"'{wrt}' is {what}, which the sweep does not "
                               "differentiate (the normalization rule folds its paths into dA); "
                               f"choose a parameter ({self._params()}) or an intermediate "
                               f"({self._values()})")
        if name in ("X", "Y", "N"):
            raise SymgradError("--wrt", f"'{wrt}' is data; choose a parameter ({self._params()}) "
                               f"or an intermediate ({self._values()})")
        choices = list(self.targets)
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise SymgradError("--wrt", f"unknown name '{wrt}' ({hint}the network has {self._params()}; "
                           f"intermediates {self._values()})")

    def _params(self) -> str:
        return ", ".join(t.name for t in self.targets.values() if t.family in _PARAM_FAMILIES)

    def _values(self) -> str:
        return ", ".join([t.name for t in self.targets.values() if t.family in ("Z", "Xhat")]
                         + [f"A{l}" for l in range(1, self.L)] + ["Yhat"])

    def describe(self) -> str:
        spec = self.spec
        head = str(spec.inputs) if spec.input_shape is None else "×".join(map(str, spec.input_shape))
        parts = [head] + [_layer_text(ly) for ly in spec.layers]
        loss = spec.loss_fn.name if spec.loss_expr is None else f"ℓ = {spec.loss_expr}"
        pen = "".join(f", {k} = {getattr(spec, k):g}" for k in ("l2", "l1") if getattr(spec, k))
        return f"{spec.name}: {' → '.join(parts)}; {loss}{pen}"

    # --- numeric instances

    def instance_sizes(self, k: int) -> tuple[int, list[int]]:
        """Batch size and widths of instance ``k``: pairwise distinct and none equal to N
        up to 8 layers; beyond, the same 16 sizes repeat (neighbours still differ), so the
        cost does not grow with depth faster than linearly, and never with the spec's widths."""
        if getattr(self, "maps", None):  # feature maps: N·H·W rows, small sizes
            n = INSTANCE_N_MAPS[k % len(INSTANCE_N_MAPS)]
            pool = [v for v in range(2, 6) if v != n]
        else:
            n = INSTANCE_N[k % len(INSTANCE_N)]
            pool = [v for v in range(2, min(self.L, 8) + 9) if v != n]
        rng = np.random.default_rng(1000 + k)
        rng.shuffle(pool)
        return n, [pool[i % len(pool)] for i in range(self.L + 1)]

    @cached_property
    def map_rows(self) -> int:
        """The most rows (N·H·W) of a feature map over the random instances."""
        return max(v[2].shape[0].xreplace({N: max(INSTANCE_N_MAPS)}) for v in self.maps.values())

    def tie(self, ws: list[int]) -> list[int]:
        """``ws`` with the widths that must be equal made equal (:attr:`tied`)."""
        if self.tied is None:  # widths tied in a way not simply equal: the spec's own
            return list(self.spec.sizes)
        return [ws[self.tied[l]] for l in range(self.L + 1)]

    @cached_property
    def tied(self) -> dict[int, int] | None:
        """Widths that must be equal (the inputs of an ``add``): each layer's width → the
        representative layer whose random width it takes; None when an ``add`` sums
        values whose widths are not single sizes (a concat's n₀ + n₄)."""
        rep = list(range(self.L + 1))

        def find(l: int) -> int:
            while rep[l] != l:
                l = rep[l]
            return l

        index = {w: l for l, w in enumerate(self.widths)}
        for a in self.d.graph.assignments:
            if isinstance(a.rhs, Add) and a.target.name.startswith("Z"):
                ws = [t.shape[1] for t in a.rhs.terms]
                if any(w not in index for w in ws):
                    return None
                for w in ws[1:]:
                    rep[find(index[w])] = find(index[ws[0]])
        return {l: find(l) for l in range(self.L + 1)}

    def instance(self, k: int, seed: int) -> _Instance:
        n, ws = self.instance_sizes(k)
        ws = self.tie(ws)
        rng = np.random.default_rng([seed, k])
        env: dict = {N: n, L2: float(self.spec.l2), L1: float(self.spec.l1)}
        for l, w in enumerate(ws):
            env[self.widths[l]] = w
        env["X"] = rng.normal(size=tuple(_size(d, env) for d in self.d.graph.data[0].shape))
        out = _size(self.d.graph.data[1].shape[1], env)
        kind = self.spec.loss_fn.name
        if kind == "cross_entropy":
            Y = np.zeros((n, out))
            Y[np.arange(n), rng.integers(0, out, size=n)] = 1.0
        elif kind == "binary_cross_entropy":
            Y = rng.uniform(0.05, 0.95, size=(n, out))
        else:
            Y = rng.normal(size=(n, out))
        env["Y"] = Y
        g = self.d.graph
        for p in g.params:
            r, c = (_size(d, env) for d in p.shape)
            if p.name.startswith("W"):
                env[p.name] = rng.normal(size=(r, c)) / math.sqrt(r)
            elif p.name.startswith("gamma"):  # a scale near 1, as trained ones are
                env[p.name] = 1 + rng.normal(scale=0.3, size=(r, c))
            else:
                env[p.name] = rng.normal(scale=0.3, size=(r, c))
        if k == 1 and any(v[3] is not None for v in self.maps.values()):  # a max pooling
            # whole-number data and kernels (over √fan-in): windows with tied maxima, where
            # routing δ to the first maximum differs from routing it to every one
            env["X"] = np.round(env["X"] * 2)
            for p in g.params:
                if p.name.startswith("W"):
                    r = env[p.name].shape[0]
                    env[p.name] = np.round(env[p.name] * math.sqrt(r)) / math.sqrt(r)
        for mask, p in g.masks:  # drawn once per instance, then fixed (as check holds them)
            env[mask.name] = (rng.random(tuple(_size(d, env) for d in mask.shape)) >= p
                              ).astype(np.float64)
        with np.errstate(all="ignore"):
            for eq in self.d.forward:
                env[eq.target.name] = eq.rhs.numeric(env)
            env["dYhat"] = self.dyhat_generic.numeric(env)
            self.sweep(env)
        sizes = {"N": n, **{f"n{str(l).translate(_SUB)}": w for l, w in enumerate(ws)
                            if l in self.free_widths}}
        # the problem's scale: the largest entry of any gradient the sweep computed
        scale = max([float(np.max(np.abs(env[eq.target.name]), initial=0.0))
                     for eq in self.d.steps] + [0.0])
        return _Instance(env, sizes, FLOOR * scale if math.isfinite(scale) else 0.0)

    @cached_property
    def free_widths(self) -> set[int]:
        """The layers whose width is a size of its own (n₀ and the dense layers; a
        batchnorm layer's output is as wide as its input)."""
        found: set[sp.Symbol] = set()
        for a in self.d.graph.assignments:
            for d in a.target.shape:
                found |= d.free_symbols
        for p in self.d.graph.params:
            for d in p.shape:
                found |= d.free_symbols
        return {l for l, w in enumerate(self.widths) if w in found and l == (self.tied or {}).get(l, l)}

    def exact(self, inst: _Instance) -> dict | None:
        """The instance ``inst`` again at :data:`PRECISION` digits: the same data and
        parameters (each float64 value is an exact binary fraction), every forward value
        and cotangent by its equation in SymPy arithmetic (``Node.explicit`` on numbers).
        None when a value is not a real finite number there (log of a negative, …)."""
        env: dict = {k: v for k, v in inst.env.items() if isinstance(k, sp.Symbol)}
        env[L2] = sp.Rational(repr(float(self.spec.l2)))
        env[L1] = sp.Rational(repr(float(self.spec.l1)))
        env[N] = sp.Integer(inst.env[N])
        g = self.d.graph
        for s in (*g.data, *g.params, *(mask for mask, _ in g.masks)):
            value = np.atleast_2d(inst.env[s.name])
            env[s.name] = sp.Matrix(value.shape[0], value.shape[1],
                                    lambda i, j, v=value: sp.Float(float(v[i, j]), PRECISION))
        for eq in self.d.forward:
            env[eq.target.name] = _evaluated(eq.rhs.explicit(env))
        if "dYhat" not in self.steps:
            env["dYhat"] = _evaluated(self.dyhat_generic.explicit(env))
        for eq in self.d.steps:
            env[eq.target.name] = _evaluated(eq.rhs.explicit(env))
        return env

    @cached_property
    def exact_rtol(self) -> float:
        """The exact evaluation's tolerance: :data:`EXACT_RTOL`, or looser where the
        network holds a constant known to fewer digits (SELU's 17): 1000 units in its
        last digit."""
        digits = [_digits(f) for eq in (*self.d.forward, *self.d.steps) for f in _floats(eq.rhs)]
        return max([EXACT_RTOL, *(1e3 * 10.0 ** -d for d in digits)])

    def sweep(self, env: dict, skip_derivative: int | None = None,
              factor: Callable[[dict], np.ndarray] | None = None,
              replace: dict[str, Node] | None = None) -> None:
        """Every cotangent of the derivation into ``env``; with ``skip_derivative = l``,
        δ_l is replaced by ∂L/∂A_l (the chain without layer l's activation derivative),
        or by ∂L/∂A_l ⊙ ``factor(env)`` (another derivative in its place); ``replace``:
        cotangents computed by other rules (a :class:`Mistake`'s)."""
        for eq in self.d.steps:
            name = eq.target.name
            if replace and name in replace:
                env[name] = replace[name].numeric(env)
            elif skip_derivative is not None and name == f"dZ{skip_derivative}":
                a = "dYhat" if skip_derivative == self.L else f"dA{skip_derivative}"
                env[name] = env[a] if factor is None else env[a] * factor(env)
            else:
                env[name] = eq.rhs.numeric(env)
        env.setdefault("dYhat", self.dyhat_generic.numeric(env))

    def missing_factor(self, l: int) -> str | None:
        """The activation-derivative factor of layer ``l``, in words (None: f′ = 1)."""
        eq = self.steps.get(f"dZ{l}")
        fn = self.spec.layers[l - 1].fn
        if eq is None or isinstance(eq.rhs, Sym) or (not fn.is_rowwise and fn.derivative == 1):
            return None
        if isinstance(eq.rhs, Hadamard) and isinstance(eq.rhs.b, Map):
            tb, np_ = textbook(eq.rhs.b), numpy_text(eq.rhs.b)
            if isinstance(eq.rhs.b.expr, sp.Add):
                tb, np_ = f"({tb})", f"({np_})"
            return f"the factor ⊙ {tb} (numpy: * {np_})"
        if fn.is_rowwise:
            return "the softmax Jacobian"
        return f"the factor ⊙ {fn.name}′(Z{str(l).translate(_SUB)})"

    @cached_property
    def mistakes(self) -> list[Mistake]:
        return mistakes(self)

    def instances(self, seed: int) -> tuple[_Instance, ...]:
        """The random instances of the check (cached per spec and seed)."""
        return _instances(self.spec, seed)

    def exact_instances(self, seed: int) -> tuple[dict, ...] | None:
        """Those instances at :data:`PRECISION` digits (None: not available)."""
        return _exact_instances(self.spec, seed)

    # --- the tiny explicit instance

    @property
    def tiny_n(self) -> int:
        """N of the tiny instance: the largest of its layer types' (``proof_batch``: 3 with
        a batchnorm layer, at N = 2 its standardized values are ±1, where a rule missing a
        path can agree; else 2)."""
        if self.maps:  # a feature map has N·H·W rows: one image already sums over pixels
            return 1
        return max(layer.kind.proof_batch for layer in self.spec.layers)

    def tiny_text(self, sizes: tuple[int, ...]) -> str:
        keep = self.free_widths
        return f"N={self.tiny_n} " + " ".join(
            f"n{str(l).translate(_SUB)}={s}" for l, s in enumerate(sizes) if l in keep)

    @cached_property
    def explicit(self) -> tuple[dict, list[dict], tuple[int, ...]]:
        """(env, definitions, sizes) at N = 2 and tiny widths.

        Data and parameters are matrices of symbols (``explicit_env``).  Every forward
        value and cotangent is a matrix of *fresh* symbols too, defined by its equation
        in terms of earlier ones; ``definitions`` lists those groups in the order they
        were computed.  A proof unfolds them from the last backwards, so a formula that
        agrees with the derivation at a shallow level is proved without expanding the
        whole network."""
        sizes = tiny_sizes(self.spec)
        env = explicit_env(self.d, sizes, self.tiny_n)
        for l, w in enumerate(sizes):
            env[self.widths[l]] = w
        if self.spec.loss_fn.name == "cross_entropy":  # the fused rule's assumption Σ_k y_k = 1
            y = env["Y"]
            env["Y"] = sp.Matrix(y.rows, y.cols, lambda i, j: y[i, j] if j < y.cols - 1 else
                                 1 - sum(y[i, k] for k in range(y.cols - 1)))
        env[L2] = sp.Rational(repr(float(self.spec.l2)))
        env[L1] = sp.Rational(repr(float(self.spec.l1)))
        for mask, _ in self.d.graph.masks:  # a symbol per entry: the proof holds for any mask
            r, c = (_size(d, env) for d in mask.shape)
            key = mask.name.lower()
            env[mask.name] = sp.Matrix(r, c, lambda i, j, k=key: sp.Symbol(f"{k}_{i}{j}",
                                                                            real=True))
        groups: list[dict] = []

        def define(name: str, node: Node) -> None:
            value = node.explicit(env)
            syms = sp.Matrix(value.rows, value.cols,
                             lambda i, j: sp.Symbol(f"{name}_{i}{j}", real=True))
            groups.append(dict(zip(syms, value, strict=True)))
            env[name] = syms

        for eq in self.d.forward:
            if isinstance(eq.rhs, PoolArgmax):  # offsets, not values: kept as computed
                env[eq.target.name] = eq.rhs.explicit(env)
            elif eq.target.name not in ("L", "J"):
                define(eq.target.name, eq.rhs)
        # a hand rule for a normalization layer may be written with A and μ where the
        # derivation has X̂ (the long form): the proof may unfold the forward values alone
        self.forward_groups = groups[:] if not self.dense else []
        if "dYhat" not in self.steps:
            define("dYhat", self.dyhat_generic)
        for eq in self.d.steps:
            define(eq.target.name, eq.rhs)
        return env, groups, sizes


_PARAM_FAMILIES = PARAM_FAMILIES


def _layer_text(layer) -> str:
    """A layer as the title line shows it: ``32 tanh``, ``batchnorm relu``, ``dropout 0.2``,
    ``add(A1, A3)``."""
    head = layer.kind.head(layer, list(layer.inputs or ()), paren=False)
    return head if layer.fn.name == "identity" and not layer.kind.plain else (
        f"{head} {layer.fn.name}")


# --------------------------------------------------------------------------
# The classic mistakes of the layers beyond dense: one table
# --------------------------------------------------------------------------
#
# Each entry names a mistake and builds, from the derivation, the wrong rule a student
# writes when making it (the alternative formula). verify sweeps the network again with
# that rule in place of the right one (Network.sweep(replace=…)) and, when the user's
# formula equals the resulting ∂L/∂(target) on every instance, names the mistake. The
# rules are the ops' own (Standardize.vjp, Dropout.vjp); the fan-out entries drop one
# term of a cotangent that the sweep summed (the skip of a residual add).


@dataclass(frozen=True)
class Mistake:
    """A wrong rule: ``step`` (a cotangent of the sweep) computed by ``wrong``."""

    code: str
    step: str
    wrong: Node
    words: str


def _standardize_mistakes(s: Standardize, g: Sym, xhat: Sym, layer: int, kind: str):
    """(code, wrong rule, words) for a normalization layer's backward (see
    :class:`~symgrad.ops.Standardize`; m the count, 𝟏𝟏ᵀ on the side of its axis)."""
    m = s.count
    inv = InvStd(s.var, s.eps, s.shape)
    G, Xh, gx = naming.text(g.name), naming.text(xhat.name), hadamard(g, xhat)
    c = _dim_text(m)
    mu, var = naming.text(s.mu.name), naming.text(s.var.name)
    ones = (lambda v: f"𝟏𝟏ᵀ{v}") if s.axis == 0 else (lambda v: f"{v}𝟏𝟏ᵀ")
    where = f"({kind} of layer {layer}: {mu} and {var} depend on every " + (
        "sample of the batch)" if s.axis == 0 else "feature of the sample)")

    def rule(mean: bool, divisor: sp.Expr | None, count=m, spread=s.spread_sum) -> Node:
        """(1/count) InvStd ⊙ (count G − [𝟏𝟏ᵀG] − [X̂ ⊙ 𝟏𝟏ᵀ(G ⊙ X̂) count/divisor])."""
        inner: Node = Scale(count, g)
        if mean:
            inner = Sub(inner, spread(g))
        if divisor is not None:
            inner = Sub(inner, Hadamard(xhat, _scale(count / divisor, spread(gx))))
        return Scale(1 / count, Hadamard(inv, inner))

    yield ("mean-path", rule(False, m),
           f"missing the mean path: −{ones(G)}/{c} {where}")
    yield ("variance-path", rule(True, None),
           f"missing the variance path: −{Xh} ⊙ {ones(f'({G} ⊙ {Xh})')}/{c} {where}")
    yield ("mean-path", Hadamard(inv, g),
           f"missing the mean path and the variance path: {mu} and {var} are treated as "
           f"constants, which leaves only the direct path {_inv_text(inv)} ⊙ {G} {where}")
    yield ("unbiased-variance", rule(True, m - 1),
           f"the unbiased variance: {c} − 1 in place of {c} in the variance path "
           f"−{Xh} ⊙ {ones(f'({G} ⊙ {Xh})')}/{c}; {var} is the biased variance (the mean "
           f"of the squared deviations, over {c}); torch uses the unbiased one only for the "
           "running estimate")
    other = 1 - s.axis
    other_count = s.x.shape[other]
    flipped = Standardize(s.x, s.mu, s.var, s.eps, other).spread_sum
    right, wrong = ("columns (axis=0)", "rows (axis=1)") if s.axis == 0 else (
        "rows (axis=1)", "columns (axis=0)")
    for count in (m, other_count):
        yield ("norm-axis", rule(True, count, count=count, spread=flipped),
               f"{kind} summed over the wrong axis: its statistics are over the {right} "
               f"of layer {layer}'s input, so its sums are too; yours sums over the {wrong}")


def _inv_text(inv: InvStd) -> str:
    var = naming.text(inv.var.name)
    return f"{var} + ε)^(−½)𝟏ᵀ".join(("(", "")) if inv.rowwise else f"𝟏({var} + ε)^(−½)"


def _dropout_mistakes(d: Dropout, g: Sym, layer: int):
    keep = f"1/(1 − {float(d.p)!r})"
    M, G = naming.text(d.mask.name), naming.text(g.name)
    right = f"{G} ⊙ {M}/(1 − {float(d.p)!r})"
    yield ("dropout-scale", Hadamard(g, d.mask),
           f"dropout without {keep}: the forward pass scales the kept values by {keep} = "
           f"{1 / (1 - float(d.p)):g}, so the backward pass does too ({right})")
    yield ("dropout-mask", Scale(1 / (1 - exact(d.p)), g),
           f"the dropout mask is forgotten in backward: a dropped unit (entry of {M} = 0) "
           f"passes no gradient, so the rule is {right}")
    yield ("dropout-mask", g,
           f"dropout left out of backward: the mask and {keep} both belong ({right})")


def _fan_out_mistakes(eq, net: Network):
    """A cotangent the sweep summed (a value feeding two layers): the sum without one part."""
    parts = eq.rule.split(" + ")
    if eq.target.name in {naming.cotangent(p.name) for p in net.d.graph.params}:
        return  # a parameter's sum (Aᵀδ + λW) is missing_term's
    if not isinstance(eq.rhs, Add) or len(parts) != len(eq.rhs.terms) or len(parts) < 2:
        return
    value = naming.text(naming.primal(eq.target.name))
    whole = naming.text(eq.target.name)
    for i, (term, rule) in enumerate(zip(eq.rhs.terms, parts, strict=True)):
        rest = [t for j, t in enumerate(eq.rhs.terms) if j != i]
        shown = textbook(term)
        if rule.split()[0].lower() == "add" and isinstance(term, Sym):  # "Add", "add (skip)"
            k = naming.layer_of(term.name)
            yield ("skip", add(rest),
                   f"missing the skip's gradient: {value} also feeds the add of layer {k} "
                   f"(the residual connection), so {whole} includes its {shown}; "
                   "gradients add where a value fans out")
        else:
            yield ("fan-out", add(rest),
                   f"missing a path at a fan-out: {value} feeds more than one layer, so "
                   f"{whole} is a sum, and yours lacks its term {shown}")


def _map_mistakes(eq, net: Network):
    """The classic mistakes of a network on images, in the step ``eq`` (its rule's op
    found in the formula): the kernel flipped, a scatter for col2im, the wrong stride or
    padding in the backward pass, max pooling's δ spread over the window or sent to every
    tied maximum, flatten in NCHW order, average pooling without 1/(kh·kw)."""
    seen: list[Node] = []
    for n in walk(eq.rhs):
        if n not in seen:
            seen.append(n)
    sub = lambda l: str(l).translate(_SUB)  # noqa: E731
    for n in seen:
        if isinstance(n, Im2col | Col2im):
            l = net.map_names[("im2col", n.geom)]
            g = n.geom
            adjoint = isinstance(n, Col2im)
            what = "col2im" if adjoint else "im2col"
            if not adjoint and eq.target.name == f"dW{l}":
                for perm_op, arg, how in (("rot90", 2, "rotated 180° (np.rot90(…, 2): "
                                           "convolution instead of cross-correlation)"),
                                          ("flip", 0, "flipped upside down (np.flip(…, 0))"),
                                          ("flip", 1, "flipped left to right (np.flip(…, 1))")):
                    perm = _kernel_perm(g.kh, g.kw, perm_op, arg)[0]
                    if perm != tuple(range(g.k)):
                        yield ("flipped-kernel", KernelPermute(eq.rhs, perm),
                               f"the kernel {how}: conv2d is cross-correlation, as torch "
                               f"(Z{sub(l)} = im2col(A) W{sub(l)} + 𝟏b{sub(l)}, no flip), so "
                               f"∂L/∂W{sub(l)} = im2col(A)ᵀ δ{sub(l)} is read in the kernel's "
                               "own (kh, kw) order")
            if adjoint:
                yield ("col2im-overwrite", _replace(eq.rhs, n, Windowed(n.x, g, "scatter")),
                       f"col2im without summing overlaps: a pixel under several windows of "
                       f"layer {l} (kernel {g.kh}×{g.kw}, stride {g.sh}) receives the sum of "
                       "their entries (+=, np.add.at); yours writes them with = (a scatter "
                       "that overwrites: the last window wins)")
                w = next((x for x in walk(n.x) if isinstance(x, Sym) and x.name == f"W{l}"),
                         None)
                if w is not None:
                    perm = _kernel_perm(g.kh, g.kw, "rot90", 2)[0]
                    yield ("flipped-kernel", _replace(eq.rhs, w, KernelPermute(w, perm)),
                           f"the kernel rotated 180° in ∂L/∂A: with cross-correlation forward "
                           f"(as torch) the rule is col2im(δ{sub(l)} W{sub(l)}ᵀ) with "
                           f"W{sub(l)} as it is; the flip belongs to the convolution written "
                           "as a 'full' correlation, not to the im2col form")
            variants = []
            if (g.sh, g.sw) != (1, 1):
                variants.append(("stride", _placed(g, (1, 1), None),
                                 f"stride 1 in place of layer {l}'s stride {_pair_text(g.sh, g.sw)}"))
            if (g.ph, g.pw) != (0, 0):
                variants.append(("padding", _placed(g, None, (0, 0)),
                                 f"padding 0 in place of layer {l}'s padding "
                                 f"{_pair_text(g.ph, g.pw)}"))
            else:
                variants.append(("padding", _placed(g, None, (1, 1)),
                                 f"padding 1 in place of layer {l}'s padding 0"))
            for code, placed, words in variants:
                wrong = Windowed(n.x, placed, "col2im" if adjoint else "im2col")
                yield (code, _replace(eq.rhs, n, wrong),
                       f"the wrong {code} in the backward pass: {what} with {words} (the "
                       f"windows of the forward pass are the ones δ{sub(l)} belongs to: row "
                       f"oh·{g.sh} + i − {g.ph}, column ow·{g.sw} + j − {g.pw})")
        elif isinstance(n, MaxPoolBack):
            l = naming.layer_of(n.arg.name)
            g, src = n.geom, net.maps[l][2]
            spread = AvgPoolBack(n.g, g)
            rule = f"route(δ{sub(l)}, arg{sub(l)})"
            yield ("maxpool-average", _replace(eq.rhs, n, spread),
                   f"the max-pool gradient spread over the whole window, as average pooling "
                   f"(δ/{g.k} to each of its {g.k} positions): max pooling passes each entry "
                   f"of δ{sub(l)} only to the first maximum of its window, {rule}")
            yield ("maxpool-average", _replace(eq.rhs, n, Scale(sp.Integer(g.k), spread)),
                   f"the max-pool gradient copied to every position of its window: max "
                   f"pooling passes each entry of δ{sub(l)} only to the first maximum of its "
                   f"window, {rule}")
            yield ("maxpool-ties", _replace(eq.rhs, n, Ties(n.g, src, n.arg, g)),
                   f"the max-pool gradient sent to every tied maximum: where several entries "
                   f"of a window equal its maximum, torch (and symgrad) route δ{sub(l)} to the "
                   f"first one in row-major order only ({rule}; arg{sub(l)} is that offset); "
                   "ties are common after relu and with quantized inputs")
        elif isinstance(n, AvgPoolBack):
            yield ("avgpool-scale", _replace(eq.rhs, n, Scale(sp.Integer(n.geom.k), n)),
                   f"average pooling's gradient without 1/(kh·kw) = 1/{n.geom.k}: the forward "
                   "pass divides each window's sum by it, so spread(δ) does too")
        elif isinstance(n, Unflatten):
            yield ("flatten-order", _replace(eq.rhs, n, FlattenNCHW(n.x, n.pixels, True)),
                   "flatten in NCHW order (c, h, w) instead of NHWC (h, w, c): symgrad's maps "
                   "are NHWC, so a flat row holds pixel p's C channels side by side (entry "
                   "p·C + c) and unflatten reads it back that way; yours reads it as torch's "
                   "flatten of an NCHW tensor (entry c·H·W + p)")


def _pair_text(a: int, b: int) -> str:
    return str(a) if a == b else f"({a}, {b})"


def _replace(node: Node, old: Node, new: Node) -> Node:
    return transform(node, lambda n: new if n == old else None)


def mistakes(net: Network) -> list[Mistake]:
    """Every classic mistake that applies to ``net``'s derivation, as wrong rules."""
    found: list[Mistake] = []
    if net.spec.is_chain:  # a dense chain has none of these layers
        return found
    forward = {a.target.name: a for a in net.d.graph.assignments}
    for eq in net.d.steps:
        for a in forward.values():
            op = a.rhs
            layer = naming.layer_of(a.target.name) or 0
            if isinstance(op, Standardize):
                g = Sym(naming.cotangent(a.target.name), a.target.shape, "cotangent")
                right = op.vjp(g, a.target)[0]
                kind = net.spec.layers[layer - 1].type
                cases = _standardize_mistakes(op, g, a.target, layer, kind)
            elif isinstance(op, Dropout):
                g = Sym(naming.cotangent(a.target.name), a.target.shape, "cotangent")
                right = op.vjp(g, a.target)[0]
                cases = _dropout_mistakes(op, g, layer)
            else:
                continue
            if right not in walk(eq.rhs):
                continue
            found += [Mistake(code, eq.target.name, _replace(eq.rhs, right, wrong), words)
                      for code, wrong, words in cases]
        found += [Mistake(code, eq.target.name, wrong, words)
                  for code, wrong, words in _fan_out_mistakes(eq, net)]
        if net.maps:
            found += [Mistake(code, eq.target.name, wrong, words)
                      for code, wrong, words in _map_mistakes(eq, net)]
    return found


@lru_cache(maxsize=32)
def _network(spec: Spec) -> Network:
    return Network(spec)


@lru_cache(maxsize=32)
def _instances(spec: Spec, seed: int) -> tuple[_Instance, ...]:
    net = _network(spec)
    return tuple(net.instance(k, seed) for k in range(len(INSTANCE_N)))


@lru_cache(maxsize=32)
def _exact_instances(spec: Spec, seed: int) -> tuple[dict, ...] | None:
    """The random instances at :data:`PRECISION` digits, or None when that is not
    possible (a value not real there) or takes over :data:`EXACT_SECONDS`."""
    net = _network(spec)
    if net.maps and net.map_rows > EXACT_MAP_ROWS:  # SymPy's 50-digit arithmetic on N·H·W-row
        return None  # feature maps: over its budget beyond small images
    try:
        with deadline(EXACT_SECONDS):
            envs = tuple(net.exact(inst) for inst in _instances(spec, seed))
    except (*EXHAUSTED, _NotExact, NotImplementedError, TypeError, ValueError, ArithmeticError):
        return None
    return envs


class _NotExact(Exception):
    """A value of the exact evaluation is not a real finite number."""


def _evaluated(m: sp.Matrix) -> sp.Matrix:
    """Every entry of ``m`` as a number at :data:`PRECISION` digits (or :class:`_NotExact`)."""
    out = m.evalf(PRECISION)
    for v in out:
        if not (isinstance(v, sp.Number) and v.is_finite):
            raise _NotExact(str(v)[:40])
    return out


def _floats(node: Node) -> Iterator[sp.Float]:
    """The inexact constants (SymPy Floats) in ``node``'s formulas, activations and loss."""
    seen: set[int] = set()
    stack: list[object] = [node]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, sp.Basic):
            yield from item.atoms(sp.Float)
        elif isinstance(item, Node):
            stack.extend(item.children)
            stack.extend(v for v in vars(item).values() if not isinstance(v, Node | str))
        elif isinstance(item, tuple | list):
            stack.extend(item)
        elif hasattr(item, "expr"):  # an activation or a loss
            stack.extend(getattr(item, k, None) for k in ("expr", "derivative"))


def _digits(f: sp.Float) -> float:
    return f._prec * math.log10(2)


# --------------------------------------------------------------------------
# Building a formula: safe AST -> matrix IR, shape-checked
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """A built matrix-valued subexpression: its IR node and numpy shape."""

    node: Node
    shape: Shape
    text: str = ""
    boolean: bool = False


Value = Term | sp.Basic

_MAP_KINDS = {  # the functions of feature maps: the layer types whose geometry each takes
    "im2col": ("conv2d",), "col2im": ("conv2d",), "scatter": ("conv2d",), "hwio": ("conv2d",),
    "route": ("maxpool2d",), "ties": ("maxpool2d",), "maxpool": ("maxpool2d",),
    "spread": ("maxpool2d", "avgpool2d"), "avgpool": ("maxpool2d", "avgpool2d"),
    "flatten": ("flatten",), "unflatten": ("flatten",), "flatten_nchw": ("flatten",),
    "unflatten_nchw": ("flatten",), "flip": (), "rot90": (), "unhwio": (),
}
_GEOMETRY_CALLS = ("im2col", "col2im", "scatter")  # these take stride, padding too
_MATRIX_FUNCTIONS = (
    "sum", "mean", "transpose", "dot", "matmul", "ones", "zeros", "ones_like", "zeros_like",
    "multiply", "divide", "add", "subtract", "negative", *_MAP_KINDS,
)
_ARITH = {"multiply": ast.Mult(), "divide": ast.Div(), "add": ast.Add(), "subtract": ast.Sub()}
_OPSYM = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**", ast.MatMult: "@"}


def _as_function(node: ast.Call) -> ast.Call:
    """``x.NAME(args, kw)`` as the call ``FUNCTION(x, args, kw)`` it means
    (:data:`~symgrad.expr.MATRIX_METHODS`), at the same place in the source."""
    func = node.func
    assert isinstance(func, ast.Attribute)
    name = ast.copy_location(ast.Name(MATRIX_METHODS[func.attr], ast.Load()), func)
    return ast.copy_location(ast.Call(name, [func.value, *node.args], node.keywords), node)


def _src(node: ast.AST, limit: int = 60) -> str:
    s = ast.unparse(node)
    return s if len(s) <= limit else s[: limit - 3] + "..."


class FormulaBuilder(ScalarBuilder):
    """Builds the matrix IR of a hand formula from a tree accepted by
    ``validate(..., allow_matrix=True)``.

    Scalar subexpressions (``1/N``, ``0.5``, ``l2``) stay SymPy and keep the scalar
    builder's bounds on constants; matrix ones become :class:`Term`.  Elementwise
    functions, ``/``, ``**`` and comparisons compose into one :class:`~symgrad.ops.Map`;
    ``+ - *`` between matrices are ``Add``/``Sub``/``Hadamard``; ``@`` is ``MatMul``.
    Shapes follow numpy (a 1-D vector broadcasts as a row); a mismatch raises
    :class:`_ShapeError`.
    """

    functions = MappingProxyType({**SCALAR_FUNCTIONS, "square": (1, lambda x: x**2)})
    time_limit = 1.0

    def __init__(self, net: Network, *, where: str = "formula", source: str | None = None) -> None:
        super().__init__(net.scalars, where=where)
        self.net = net
        self.source = source  # the validated text, for messages quoting the user's spelling

    def build(self, tree: ast.Expression) -> Value:  # type: ignore[override]
        _warm_up()
        self._end = _clock() + self.time_limit
        try:
            with deadline(self.time_limit):
                return self.visit(tree.body)
        except EXHAUSTED:
            raise self.error(
                f"expression is too complex (building it took over {self.time_limit:g} s); "
                "simplify it"
            ) from None

    def shape_error(self, what: str) -> _ShapeError:
        return _ShapeError(what)

    # --- dispatch

    def visit(self, node: ast.AST) -> Value:
        result = super().visit(node)
        if isinstance(result, Term) and not isinstance(node, ast.Name):
            text = ast.get_source_segment(self.source, node) if self.source else None
            result = replace(result, text=text or _src(node))
        return result

    def value(self, expr):
        if isinstance(expr, Term):
            return None
        return super().value(expr)

    def remember(self, node, result, estimate):
        if isinstance(result, Term):
            if isinstance(result.node, Map) and hasattr(self, "audit"):
                self.audit(node, result.node.expr)  # bound the numbers SymPy created
            return result
        return super().remember(node, result, estimate)

    def _matrix_free(self, node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and sub.id in self.net.matrices:
                return False
            if isinstance(sub, ast.Call):
                f = sub.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
                if name in _MATRIX_FUNCTIONS:
                    return False
            if isinstance(sub, ast.Attribute) and sub.attr == "T":
                return False
        return True

    # --- leaves

    def visit_Name(self, node: ast.Name) -> Value:
        if node.id in self.net.derived:  # P1 = im2col(X, 1): a conv layer's patch matrix
            n, shape = self.net.derived[node.id]
            return Term(n, tuple(shape), node.id)
        if node.id in self.net.matrices:
            sym, shape = self.net.matrices[node.id]
            return Term(sym, shape, node.id)
        return super().visit_Name(node)

    def lookup(self, name: str) -> sp.Basic:
        if name in self.names:
            return self.names[name]
        if name in self.constants:
            return self.constants[name]
        if name in self.functions or name in _MATRIX_FUNCTIONS:
            raise self.error(f"'{name}' is a function; call it like {name}(…)")
        raise self.error(self.net.unknown(name))

    def visit_Attribute(self, node: ast.Attribute) -> Value:
        if node.attr == "T" and not (
            isinstance(node.value, ast.Name) and node.value.id in ("np", "numpy")
        ):
            inner = self.visit(node.value)
            return self.transpose(inner) if isinstance(inner, Term) else inner
        return super().visit_Attribute(node)

    # --- operators

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Value:
        operand = self.visit(node.operand)
        if isinstance(node.op, ast.UAdd):
            return operand
        if isinstance(operand, Term):
            return Term(_scale(sp.Integer(-1), operand.node), operand.shape)
        estimate = self.estimate(node, operator.neg, [operand])
        return self.remember(node, -operand, estimate)

    def binary(self, op: ast.operator, left: Value, right: Value) -> Value:
        if not isinstance(left, Term) and not isinstance(right, Term):
            if isinstance(op, ast.MatMult):
                raise self.shape_error(f"'@' needs arrays on both sides, got {left} @ {right}")
            return super().binary(op, left, right)
        text = f"{_text(left)} {_OPSYM[type(op)]} {_text(right)}"
        if isinstance(op, ast.MatMult):
            return self.matmul(left, right, text)
        kernels = [t for t in (left, right) if isinstance(t, Term) and len(t.shape) > 2]
        if kernels and isinstance(op, ast.Add | ast.Sub) and len(kernels) == 2 and (
                left.shape == right.shape):
            return Term(Add((left.node, right.node)) if isinstance(op, ast.Add) else
                        Sub(left.node, right.node), left.shape, text)
        if kernels and not (len(kernels) == 1 and isinstance(op, ast.Mult | ast.Div) and (
                kernels[0] is left or isinstance(op, ast.Mult))):
            self.flat(kernels[0], text)
        if isinstance(left, Term) and isinstance(right, Term) and isinstance(
            op, ast.Add | ast.Sub | ast.Mult
        ):
            shape = self.broadcast_shape([left, right], text)
            a = _broadcast(left.node, _internal(shape))
            b = _broadcast(right.node, _internal(shape))
            node = {ast.Add: lambda: Add((a, b)), ast.Sub: lambda: Sub(a, b),
                    ast.Mult: lambda: Hadamard(a, b)}[type(op)]()
            return Term(node, shape, text)
        if isinstance(op, ast.Mult):
            m, c = (left, right) if isinstance(left, Term) else (right, left)
            return Term(_scale(c, m.node), m.shape, text)
        if isinstance(op, ast.Div) and isinstance(left, Term) and not isinstance(right, Term):
            if right == 0:
                raise self.error("division by zero")
            return Term(_scale(1 / right, left.node), left.shape, text)
        if isinstance(op, ast.Pow):
            if isinstance(right, Term):
                return self.elementwise(lambda a, b: a**b, [left, right], text)
            return self.elementwise(lambda a: self.power(a, right), [left], text)
        fn = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Div: operator.truediv}.get(type(op))
        if fn is None:
            return super().binary(op, left, right)
        return self.elementwise(fn, [left, right], text)

    def visit_Compare(self, node: ast.Compare) -> Value:
        """``Z1 > 0`` as a number: the elementwise Iverson bracket (1.0 where true, 0.0
        elsewhere), as numpy multiplies a boolean array; so ``dA1 * (Z1 > 0)`` is relu′."""
        if self._matrix_free(node):
            return super().visit_Compare(node)
        return self.elementwise(_iverson, [self.condition(node)], _src(node))

    def condition(self, node: ast.Compare) -> Value:
        """The comparison itself (a boolean Map): the first argument of where()."""
        if self._matrix_free(node):
            return super().condition(node)
        left, right = self.visit(node.left), self.visit(node.comparators[0])
        relation = {ast.Lt: sp.Lt, ast.LtE: sp.Le, ast.Gt: sp.Gt, ast.GtE: sp.Ge}[type(node.ops[0])]
        return self.elementwise(relation, [left, right], _src(node), boolean=True)

    # --- calls

    def visit_Call(self, node: ast.Call) -> Value:
        func = node.func
        if _is_method(func):  # x.sum(axis=0) is sum(x, axis=0): one table, MATRIX_METHODS
            return self.visit_Call(_as_function(node))
        if isinstance(func, ast.Name):
            name = label = func.id
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            name, label = func.attr, f"{func.value.id}.{func.attr}"
        elif isinstance(func, ast.Attribute):  # np.linalg.inv: expression mode's, not verify's
            raise self.error("attribute access is not allowed")
        else:
            raise self.error("only named functions can be called, e.g. exp(x)")
        if name in _MATRIX_FUNCTIONS:
            return self.matrix_call(name, label, node)
        if name not in self.functions:
            raise self.unknown_function(name, label)
        if node.keywords:
            raise self.error(
                f"keyword argument '{node.keywords[0].arg}=' is only allowed in sum() and mean()"
            )
        if self._matrix_free(node):
            return super().visit_Call(node)
        arity = self.functions[name][0]
        if len(node.args) != arity:
            plural = "" if arity == 1 else "s"
            raise self.error(f"'{label}' takes {arity} argument{plural}, got {len(node.args)}")
        if name == "where" and not isinstance(node.args[0], ast.Compare):
            raise self.error(
                f"the first argument of {label}() must be a comparison, e.g. {label}(Z1 > 0, dA1, 0)"
            )
        args = [self.condition(a) if name == "where" and i == 0 else self.visit(a)
                for i, a in enumerate(node.args)]  # type: ignore[arg-type]
        return self.elementwise(
            lambda *xs: self.call(name, label, list(xs)), args, _src(node)
        )

    def unknown_function(self, name: str, label: str) -> SymgradError:
        if name in self.net.matrices or name in self.names:
            return self.error(f"'{label}' is not a function")
        known = [*self.functions, *_MATRIX_FUNCTIONS]
        close = difflib.get_close_matches(name, known, n=1)
        if close:
            prefix = label[: len(label) - len(name)]
            return self.error(f"unknown function '{label}' (did you mean '{prefix}{close[0]}'?)")
        return super().unknown_function(name, label)

    def matrix_call(self, name: str, label: str, node: ast.Call) -> Value:
        if name in _MAP_KINDS:
            if not self.net.maps:
                raise self.error(f"'{label}' is for networks on images (conv2d, pooling, "
                                 "flatten layers); this network has none")
            return self.map_call(name, label, node)
        kw = {k.arg: k.value.value for k in node.keywords}  # validated: axis / keepdims constants
        if kw and name not in ("sum", "mean"):
            raise self.error(f"keyword argument '{node.keywords[0].arg}=' is only allowed in "
                             "sum() and mean()")
        nargs = {"sum": (1, 2), "mean": (1, 2), "dot": (2, 2), "matmul": (2, 2),
                 "multiply": (2, 2), "divide": (2, 2), "add": (2, 2), "subtract": (2, 2)}.get(
            name, (1, 1))
        if not nargs[0] <= len(node.args) <= nargs[1]:
            want = str(nargs[0]) if nargs[0] == nargs[1] else f"{nargs[0]} or {nargs[1]}"
            raise self.error(f"'{label}' takes {want} argument{'s' if nargs[1] > 1 else ''}, "
                             f"got {len(node.args)}")
        if name in ("sum", "mean"):
            axis = kw.get("axis")
            if len(node.args) == 2:
                axis = _axis_literal(node.args[1])
                if axis is ...:
                    raise self.error(f"the axis of {label}() must be 0, 1, -1, -2 or None")
                if "axis" in kw:
                    raise self.error(f"{label}() got the axis twice")
            x = self.visit(node.args[0])
            return self.reduce(x, axis, bool(kw.get("keepdims", False)), name == "mean",
                               _src(node))
        if name in ("ones", "zeros"):
            n = self.visit(node.args[0])
            widths = getattr(self.net, "width_symbols", frozenset())
            if isinstance(n, Term) or not (n == N or (n.is_Integer and 1 <= n <= 10**6) or (
                    n.free_symbols and n.free_symbols <= widths and _integral(n, widths)
                    and _nonnegative(n, widths))):
                raise self.error(f"{label}() takes a size, N, a width (n1) or a whole number; "
                                 f"for the shape of an array use {name}_like(…)")
            ones = Ones((_ONE, n))
            return Term(ones if name == "ones" else Scale(sp.Integer(0), ones), (n,), _src(node))
        args = [self.visit(a) for a in node.args]
        if name in ("ones_like", "zeros_like"):
            x = args[0]
            if not isinstance(x, Term):
                return sp.Integer(1 if name == "ones_like" else 0)
            ones = Ones(_internal(x.shape))
            return Term(ones if name == "ones_like" else Scale(sp.Integer(0), ones), x.shape)
        if name == "transpose":
            return self.transpose(args[0]) if isinstance(args[0], Term) else args[0]
        if name == "negative":
            return self.binary(ast.Mult(), sp.Integer(-1), args[0])
        if name in _ARITH:
            return self.binary(_ARITH[name], args[0], args[1])
        a, b = args
        if name == "dot" and not (isinstance(a, Term) and isinstance(b, Term) and a.shape and b.shape):
            return self.binary(ast.Mult(), a, b)
        return self.binary(ast.MatMult(), a, b)

    # --- feature maps: the functions of a network on images (layer l's geometry implied)

    def _layer_arg(self, node: ast.AST, label: str, kinds: tuple[str, ...]) -> int:
        if not (isinstance(node, ast.Constant) and type(node.value) is int):
            raise self.error(f"{label}: the second argument is a layer number (e.g. "
                             f"{label.split('(')[0]}(…, 1)), whose geometry it uses")
        l = node.value
        have = [k for k, v in self.net.maps.items() if v[0] in kinds]
        if l not in have:
            which = " or ".join(kinds)
            listed = ", ".join(map(str, have)) if have else "none"
            raise self.error(f"{label}: layer {l} is not a {which} layer (the network's: "
                             f"{listed})")
        return l

    def _pair(self, node: ast.AST, label: str, what: str, low: int) -> tuple[int, int]:
        if isinstance(node, ast.Constant) and type(node.value) is int and low <= node.value <= 16:
            return (node.value, node.value)
        raise self.error(f"{label}: the {what} is a whole number from {low} to 16")

    def map_call(self, name: str, label: str, node: ast.Call) -> Value:
        """im2col, col2im, scatter, route, ties, spread, maxpool, avgpool, flatten,
        unflatten, flatten_nchw, unflatten_nchw, hwio; np.flip and np.rot90 of a kernel."""
        args = node.args
        if name in ("flip", "rot90", "unhwio"):
            return self.kernel_op(name, label, node)
        if node.keywords:
            raise self.error(f"{label}: keyword arguments are not allowed here; write "
                             f"{name}(x, l{', stride, padding' if name in _GEOMETRY_CALLS else ''})")
        most = 4 if name in _GEOMETRY_CALLS else 2
        if not 2 <= len(args) <= most:
            extra = " (and optionally stride, padding)" if most == 4 else ""
            raise self.error(f"'{label}' takes an array and a layer number{extra}, "
                             f"got {len(args)} argument{'s' if len(args) != 1 else ''}")
        kinds = _MAP_KINDS[name]
        l = self._layer_arg(args[1], _src(node), kinds)
        x = self.visit(args[0])
        if not isinstance(x, Term) or len(x.shape) != 2:
            raise self.shape_error(f"{label}: its first argument must be a matrix (a feature "
                                   "map of N·H·W rows, or a patch matrix)")
        kind, geom, src, arg = self.net.maps[l]
        text = _src(node)
        rows, cols = x.shape

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise self.shape_error(f"{text}: {what}, yours is {_shape_text(x.shape)}")

        if name == "hwio":
            w = self.net.matrices[f"W{l}"][1]
            need((rows, cols) == tuple(w), f"hwio(D, {l}) reads layer {l}'s kernel matrix "
                                           f"{_shape_text(w)}")
            return Term(x.node, (geom.kh, geom.kw, w[0] / geom.k, w[1]), text)
        if name in ("flatten", "flatten_nchw"):
            need(rows == src.shape[0], f"layer {l} flattens maps of {_dim_text(src.shape[0])} rows")
            node_ = Flatten(x.node, geom) if name == "flatten" else FlattenNCHW(x.node, geom, False)
            return Term(node_, tuple(node_.shape), text)
        if name in ("unflatten", "unflatten_nchw"):
            flat = src.shape[0] / geom
            need(rows == flat and _integral(sp.expand(cols / geom), self.net.width_symbols),
                 f"layer {l}'s flat values have {_dim_text(flat)} rows and H·W·C columns "
                 f"(H·W = {geom})")
            node_ = Unflatten(x.node, geom) if name == "unflatten" else FlattenNCHW(
                x.node, geom, True)
            return Term(node_, tuple(node_.shape), text)
        stride = self._pair(args[2], _src(node), "stride", 1) if len(args) > 2 else None
        padding = self._pair(args[3], _src(node), "padding", 0) if len(args) > 3 else None
        placed = _placed(geom, stride, padding)
        out_rows = src.shape[0] * sp.Rational(geom.ho * geom.wo, geom.h * geom.w)
        if name in ("im2col", "maxpool", "avgpool"):
            need(rows == src.shape[0], f"layer {l} reads maps of {_dim_text(src.shape[0])} rows "
                                       f"({geom.h}×{geom.w} pixels per image)")
            if name == "maxpool":
                node_ = MaxPool(x.node, arg, geom)
            elif name == "avgpool":
                node_ = AvgPool(x.node, geom)
            else:
                node_ = Im2col(x.node, geom) if placed is geom else Windowed(x.node, placed,
                                                                              "im2col")
            return Term(node_, tuple(node_.shape), text)
        if name in ("col2im", "scatter"):
            need(rows == out_rows and sp.expand(cols - geom.k * src.shape[1]) == 0,
                 f"layer {l}'s patch matrix is {_dim_text(out_rows)}×"
                 f"{_dim_text(geom.k * src.shape[1])}")
            if name == "col2im" and placed is geom:
                node_ = Col2im(x.node, geom)
            else:
                node_ = Windowed(x.node, placed, "col2im" if name == "col2im" else "scatter")
            return Term(node_, tuple(node_.shape), text)
        # route, ties, spread: a pooled layer's adjoint
        need(rows == out_rows, f"layer {l}'s pooled map has {_dim_text(out_rows)} rows")
        if name == "spread":
            node_ = AvgPoolBack(x.node, geom)
        elif name == "route":
            node_ = MaxPoolBack(x.node, arg, geom)
        else:
            node_ = Ties(x.node, src, arg, geom)
        return Term(node_, tuple(node_.shape), text)

    def kernel_op(self, name: str, label: str, node: ast.Call) -> Value:
        """np.flip(T, axis) (0: the kernel's rows, 1: its columns) and np.rot90(T, k) of an
        HWIO kernel T = hwio(D, l): its window positions permuted."""
        args = list(node.args)
        kw = {k.arg: k.value for k in node.keywords}
        if name == "unhwio":  # the HWIO kernel back to its (kh·kw·C)×F matrix
            x = self.visit(args[0]) if len(args) == 1 and not kw else None
            if not isinstance(x, Term) or len(x.shape) != 4:
                raise self.error(f"{label}: write {label}(T), T a kernel in HWIO form")
            kh, kw_, c, f = x.shape
            return Term(x.node, (kh * kw_ * c, f), _src(node))
        if set(kw) - {"axis"} or (name == "rot90" and kw):
            raise self.error(f"{label}: write {label}(T, {'axis' if name == 'flip' else 'k'})")
        if "axis" in kw:
            args.append(kw["axis"])
        if not 1 <= len(args) <= 2:
            raise self.error(f"'{label}' takes a kernel and {'an axis' if name == 'flip' else 'k'}")
        x = self.visit(args[0])
        if not isinstance(x, Term) or len(x.shape) != 4:
            raise self.shape_error(f"{_src(node)}: {label} reads a kernel in HWIO form "
                                   "(hwio(D, l), D a conv layer's (kh·kw·C)×F matrix)")
        if len(args) == 1:
            if name == "flip":
                raise self.error(f"{label}: give the axis (0: the kernel's rows, 1: its "
                                 "columns); without it numpy flips the channels too")
            arg = 1
        else:
            a = args[1]
            arg = a.value if isinstance(a, ast.Constant) and type(a.value) is int else None
            if name == "flip" and arg not in (0, 1):
                raise self.error(f"{label}: the axis is 0 (the kernel's rows) or 1 (its columns)")
            if name == "rot90" and (arg is None or not -8 <= arg <= 8):
                raise self.error(f"{label}: k is a whole number (quarter turns)")
        kh, kw_, c, f = x.shape
        perm, kh2, kw2 = _kernel_perm(int(kh), int(kw_), name, arg)
        return Term(KernelPermute(x.node, perm), (sp.Integer(kh2), sp.Integer(kw2), c, f),
                    _src(node))

    def flat(self, x: Value, what: str) -> None:
        """A kernel in HWIO form (4-D) is only compared, scaled, flipped or rotated."""
        if isinstance(x, Term) and len(x.shape) > 2:
            raise self.shape_error(f"{what}: a kernel in HWIO form (hwio(…)) can be scaled, "
                                   "added to another, np.flip-ped or np.rot90-ed; do the rest "
                                   "on the (kh·kw·C)×F matrix")

    # --- subscripts: column slices, and a 1-D vector as a column or a row

    def visit_Subscript(self, node: ast.Subscript) -> Value:
        """``x[:, a:b]`` (the columns a … b−1 of a matrix: a concat's input's share of its
        cotangent), with bounds whole numbers or widths (``n1``, ``n1 + n2``, ``2*n0``);
        ``v[:, None]`` / ``v[None, :]`` (a 1-D vector as an n×1 column / a 1×n row)."""
        label = _src(node)
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        x = self.visit(node.value)
        if not isinstance(x, Term):
            raise self.error(f"{label}: only an array can be indexed")

        def whole(p: ast.AST) -> bool:
            return isinstance(p, ast.Slice) and p.lower is p.upper is p.step is None

        def newaxis(p: ast.AST) -> bool:
            return (isinstance(p, ast.Constant) and p.value is None) or (
                isinstance(p, ast.Attribute) and p.attr == "newaxis"
                and isinstance(p.value, ast.Name) and p.value.id in ("np", "numpy"))

        if len(x.shape) == 1 and len(parts) == 2 and whole(parts[0]) and newaxis(parts[1]):
            return Term(_transpose(x.node), (x.shape[0], _ONE), label)
        if len(x.shape) == 1 and len(parts) == 2 and newaxis(parts[0]) and whole(parts[1]):
            return Term(x.node, (_ONE, x.shape[0]), label)
        if len(x.shape) == 2 and len(parts) == 2 and whole(parts[0]) and isinstance(
                parts[1], ast.Slice):
            cols = parts[1]
            if cols.step is not None:
                raise self.error(f"{label}: a slice with a step is not allowed; write the "
                                 "columns as x[:, a:b]")
            if whole(cols):
                return replace(x, text=label)
            width = x.shape[1]
            start = sp.Integer(0) if cols.lower is None else self.bound(cols.lower, label)
            stop = width if cols.upper is None else self.bound(cols.upper, label)
            for small, big, what in ((start, stop, "its start can exceed its stop"),
                                     (stop, width, f"it can end past the {_dim_text(width)} "
                                      "columns")):
                if not _nonnegative(big - small, getattr(self.net, "width_symbols", frozenset())):
                    raise self.shape_error(
                        f"{label}: the columns {_dim_text(start)}:{_dim_text(stop)} of an "
                        f"{_shape_text(x.shape)} array are not a range at every width ({what})")
            if sp.expand(stop - start) == 0:
                raise self.shape_error(f"{label}: no columns ({_dim_text(start)}:"
                                       f"{_dim_text(stop)} is empty)")
            return Term(ColSlice(x.node, start, stop), (x.shape[0], sp.expand(stop - start)),
                        label)
        raise self.error(f"{label}: verify reads column slices x[:, a:b] (every row, the "
                         "columns a … b−1; a and b whole numbers or widths such as n1, "
                         "n1 + n2) and v[:, None]; not this subscript")

    def bound(self, node: ast.AST, label: str) -> sp.Expr:
        """A slice bound: a whole number ≥ 0 or a width expression (n1 + n2, 2*n0)."""
        value = self.visit(node)
        if isinstance(value, Term):
            raise self.error(f"{label}: a slice bound is a whole number or a width, not an array")
        value = sp.expand(sp.sympify(value))
        widths = getattr(self.net, "width_symbols", frozenset())
        if not value.free_symbols <= widths or not _integral(value, widths):
            raise self.error(f"{label}: a slice bound is a whole number or a width (n0, n1, "
                             f"n1 + n2, 2*n0), not {ast.unparse(node)}")
        if not _nonnegative(value, widths):
            raise self.error(f"{label}: negative slice bounds (counting from the end) are not "
                             "allowed; write the columns as x[:, a:b] with widths, e.g. "
                             "x[:, n1:n1 + n2]")
        return value

    # --- matrix operations

    def transpose(self, x: Term) -> Term:
        self.flat(x, f"{x.text}.T")
        if len(x.shape) < 2:
            return x
        return Term(_transpose(x.node), (x.shape[1], x.shape[0]), f"{x.text}.T")

    def matmul(self, left: Value, right: Value, text: str) -> Term:
        if not isinstance(left, Term) or not isinstance(right, Term) or not left.shape or not right.shape:
            raise self.shape_error(f"{text}: '@' cannot take a scalar (use * for scaling)")
        self.flat(left, text)
        self.flat(right, text)
        la, ra = left.shape, right.shape
        inner_a = la[-1]
        inner_b = ra[0] if len(ra) == 1 else ra[-2]
        if inner_a != inner_b:
            raise self.shape_error(
                f"{text}: cannot multiply {_shape_text(la)} by {_shape_text(ra)} "
                f"(inner sizes {_dim_text(inner_a)} and {_dim_text(inner_b)} differ)"
            )
        a, b = left.node, right.node
        if len(la) == 2 and len(ra) == 2:
            return Term(MatMul(a, b), (la[0], ra[1]), text)
        if len(la) == 1 and len(ra) == 2:
            return Term(MatMul(a, b), (ra[1],), text)
        if len(la) == 2:
            return Term(_transpose(MatMul(a, _transpose(b))), (la[0],), text)
        return Term(MatMul(a, _transpose(b)), (), text)

    def reduce(self, x: Value, axis, keepdims: bool, mean: bool, text: str) -> Value:
        self.flat(x, text)
        if not isinstance(x, Term):
            if axis not in (None, 0) or keepdims:
                raise self.shape_error(f"{text}: a scalar has no axis {axis}")
            return x
        shape, node = x.shape, x.node
        if axis is not None and axis < 0:  # numpy counts from the last axis
            if axis + max(len(shape), 1) < 0:
                raise self.shape_error(f"{text}: axis {axis} is out of bounds for "
                                       f"{'a 1-D vector' if len(shape) == 1 else 'a scalar'}")
            axis += max(len(shape), 1)
        if len(shape) == 0:
            if axis is not None:
                raise self.shape_error(f"{text}: axis {axis} is out of bounds for a scalar")
            return x
        if len(shape) == 1:
            if axis not in (None, 0):
                raise self.shape_error(f"{text}: axis 1 is out of bounds for a 1-D vector "
                                       f"{_shape_text(shape)}")
            node, count = RowSum(node), shape[0]
            out: Shape = (_ONE,) if keepdims else ()
        elif axis == 0:
            node, count = ColSum(node), shape[0]
            out = (_ONE, shape[1]) if keepdims else (shape[1],)
        elif axis == 1:
            node, count = RowSum(node), shape[1]
            out = (shape[0], _ONE) if keepdims else (shape[0],)
            if not keepdims:
                node = Transpose(node)  # a 1-D result is a row inside the IR
        else:
            node, count = ColSum(RowSum(node)), shape[0] * shape[1]
            out = (_ONE, _ONE) if keepdims else ()
        if mean:
            node = _scale(1 / count, node)
        return Term(node, out, text)

    def broadcast_shape(self, terms: Sequence[Term], text: str) -> Shape:
        shape: Shape = ()
        for t in terms:
            new = _broadcast2(shape, t.shape)
            if new is None:
                shapes = " and ".join(_shape_text(t.shape) for t in terms)
                raise self.shape_error(f"{text}: shapes {shapes} cannot be broadcast together")
            shape = new
        return shape

    def elementwise(self, fn: Callable[..., sp.Basic], operands: list[Value], text: str,
                    boolean: bool = False) -> Value:
        """One Map over the matrix operands (Maps among them are inlined)."""
        terms = [o for o in operands if isinstance(o, Term)]
        if not terms:
            return fn(*operands)
        for t in terms:
            self.flat(t, text)
        shape = self.broadcast_shape(terms, text)
        target = _internal(shape)
        args: dict[Node, sp.Symbol] = {}

        def arg(n: Node) -> sp.Symbol:
            n = _broadcast(n, target)
            if n not in args:
                args[n] = sp.Symbol(f"_e{len(args)}", real=True)
            return args[n]

        exprs = []
        for o in operands:
            if isinstance(o, Term) and isinstance(o.node, Map):
                exprs.append(o.node.expr.xreplace({s: arg(n) for s, n in o.node.args}))
            elif isinstance(o, Term):
                exprs.append(arg(o.node))
            elif isinstance(o, sp.Expr) and o.free_symbols:  # N, λ: kept out of the Map's body
                exprs.append(arg(Const(o)))
            elif o.free_symbols:
                raise self.error(f"{text}: a condition must compare arrays, e.g. Z1 > 0")
            else:
                exprs.append(o)
        expr = fn(*exprs)
        if isinstance(expr, sp.Basic) and expr.has(*_NON_FINITE):
            raise self.error(f"{text} is undefined (division by zero?)")
        return Term(Map(expr, tuple((s, n) for n, s in args.items())), shape, text, boolean)


_NON_FINITE = (sp.zoo, sp.nan, sp.oo, -sp.oo)


def _axis_literal(node: ast.AST):
    """The axis a positional argument names (0, 1, -1, -2, None), or ``...``."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(
            node.operand, ast.Constant) and type(node.operand.value) is int:
        return -node.operand.value if node.operand.value in (1, 2) else ...
    if isinstance(node, ast.Constant) and (node.value is None or (
            type(node.value) is int and node.value in (0, 1))):
        return node.value
    return ...


def _coefficients(e: sp.Expr, widths: set) -> list[sp.Expr]:
    if not e.free_symbols:
        return [e]
    return sp.Poly(e, *sorted(e.free_symbols, key=str)).coeffs()


def _integral(e: sp.Expr, widths: set) -> bool:
    """``e`` is a polynomial in the widths with whole coefficients (a whole number at every
    width)."""
    try:
        return all(c.is_Integer for c in _coefficients(sp.expand(e), widths))
    except sp.PolynomialError:
        return False


def _nonnegative(e: sp.Expr, widths: set) -> bool:
    """``e`` (a polynomial in the widths, each ≥ 1) is ≥ 0 at every width: its coefficients
    are ≥ 0 (a sufficient test, which the bounds people write pass: n1 + n2 − n1)."""
    e = sp.expand(e)
    if not e.free_symbols <= widths:
        return False
    try:
        return all(c.is_number and c >= 0 for c in _coefficients(e, widths))
    except sp.PolynomialError:
        return False


def _text(v: Value) -> str:
    """An operand as quoted in a message (bracketed when compound)."""
    s = v.text if isinstance(v, Term) else str(v)
    return f"({s})" if " " in s and not (s.startswith("(") and s.endswith(")")) else s


# --------------------------------------------------------------------------
# The verdict
# --------------------------------------------------------------------------


@dataclass
class Verdict:
    """The outcome of a verification: ``ok``, the ``diagnosis`` (one of
    :data:`DIAGNOSES` or None), the evidence and the correct formula."""

    ok: bool
    wrt: str
    formula: str
    title: str
    undecided: bool = False  # agrees on every instance, but not proved: not "correct"
    message: str = ""
    diagnosis: str | None = None
    factor: str | None = None  # for "factor"/"sign": the constant (N, 1/N, 2, 1/2, -1)
    numeric: str = ""
    symbolic: str = ""
    counterexample: str | None = None
    fix: str | None = None  # the user's formula, repaired, when a diagnosis gives one
    correct: str = ""  # numpy syntax
    textbook: str = ""
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [self.title, f"  yours:     {self.formula.strip()}"]
        verdict = "correct" if self.ok else "not proved" if self.undecided else "WRONG"
        if not self.ok and self.diagnosis:
            verdict += f" ({self.diagnosis})"
        lines.append(f"  verdict:   {verdict}")
        if self.message:
            lines.append(f"  diagnosis: {self.message}")
        if self.fix:
            lines.append(f"  fixed:     {self.fix}")
        if self.numeric:
            lines.append(f"  numeric:   {self.numeric}")
        if self.symbolic:
            lines.append(f"  symbolic:  {self.symbolic}")
        if self.counterexample:
            lines.append(f"  differs:   {self.counterexample}")
        if self.correct:
            lines.append(f"  correct:   {self.correct}")
        if self.textbook:
            lines.append(f"  textbook:  {self.textbook}")
        for note in self.notes:
            lines.append(f"  note:      {note}")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.text()

    # -- display (symgrad.display): Jupyter, and a one-line repr --------------------------

    @property
    def verdict_text(self) -> str:
        """``correct``, ``not proved`` or ``WRONG (<diagnosis>)``, as ``text()`` says it."""
        verdict = "correct" if self.ok else "not proved" if self.undecided else "WRONG"
        return verdict + (f" ({self.diagnosis})" if not self.ok and self.diagnosis else "")

    @property
    def kind(self) -> str:
        """The display class: pass, fail or undecided."""
        return "pass" if self.ok else "undecided" if self.undecided else "fail"

    def _evidence(self) -> list[tuple[str, str]]:
        """(label, text) of the evidence, in the order ``text()`` prints it."""
        items = [("diagnosis", self.message), ("fixed", self.fix or ""),
                 ("differs", self.counterexample or ""), ("numeric", self.numeric),
                 ("symbolic", self.symbolic), ("textbook", self.textbook)]
        return [(k, v) for k, v in items if v] + [("note", n) for n in self.notes]

    def _repr_html_(self) -> str:
        from symgrad import display as h

        sides = [("yours", self.formula.strip()), ("correct", self.correct or self.textbook)]
        head = [label for label, _ in sides]
        math = [f"$${h.formula_latex(f) if label == 'yours' or self.correct else ''}$$"
                if f else "" for label, f in sides]
        if not self.correct and self.textbook:
            math[1] = f"<code>{h.escape(self.textbook)}</code>"
        side_by_side = ('<table class="symgrad-table symgrad-sides"><thead><tr>'
                        + "".join(f"<th>{label}</th>" for label in head) + "</tr></thead><tbody><tr>"
                        + "".join(f"<td>{m}</td>" for m in math) + "</tr><tr>"
                        + "".join(f"<td><code>{h.escape(f)}</code></td>" for _, f in sides)
                        + "</tr></tbody></table>")
        evidence = h.definitions((k, h.escape(v)) for k, v in self._evidence())
        title = f"{h.badge(self.kind, self.verdict_text)} {h.escape(self.title)}"
        return h.panel(self.kind, title, side_by_side, evidence, what="verdict")

    def _repr_markdown_(self) -> str:
        from symgrad import display as h

        yours = f"$${h.formula_latex(self.formula)}$$"
        correct = f"$${h.formula_latex(self.correct)}$$" if self.correct else ""
        lines = [f"**{h.md_escape(self.verdict_text)}** — {h.md_escape(self.title)}", "",
                 "| yours | correct |", "|---|---|", f"| {yours} | {correct} |",
                 f"| `{self.formula.strip()}` | `{self.correct}` |" if self.correct
                 else f"| `{self.formula.strip()}` | |", ""]
        lines += [f"- **{k}**: {h.md_escape(v)}" for k, v in self._evidence()]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        from symgrad.display import short_repr

        return short_repr("Verdict", f"{self.wrt}:", self.verdict_text,
                          f"yours = {self.formula.strip()}")


# --------------------------------------------------------------------------
# Numeric comparison
# --------------------------------------------------------------------------


FLOOR = 1e-6  # an entry is judged against this fraction of its matrix's (or problem's) scale


def _relerr(u: np.ndarray, c: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """|u − c| / max(|u|, |c|) per entry, with a floor at :data:`FLOOR` of the largest
    entry (entries that cancel to ~0 are judged against the matrix's scale) and at
    ``floor``, the problem's (:attr:`_Instance.floor`): a gradient that is exactly 0, as
    ∂L/∂b₁ before a batchnorm, is computed as rounding noise (6e-17), which is 0 next to
    the gradients of the network, not a relative error of 1."""
    au, ac = np.abs(u), np.abs(c)
    scale = max(float(np.max(ac, initial=0.0)), float(np.max(au, initial=0.0)))
    den = np.maximum(np.maximum(au, ac), max(FLOOR * scale, floor, 1e-12))
    err = np.abs(u - c) / den
    return np.where(np.isfinite(err), err, np.inf)


def _close(u: np.ndarray | None, c: np.ndarray, floor: float = 0.0) -> bool:
    if u is None or u.shape != c.shape:
        return False
    return bool(np.max(_relerr(u, c, floor), initial=0.0) <= RTOL)


def _ratio(u: np.ndarray, c: np.ndarray, floor: float = 0.0) -> float | None:
    """r with u ≈ r·c, or None."""
    if u.shape != c.shape or not np.all(np.isfinite(u)):
        return None
    if float(np.max(np.abs(c), initial=0.0)) <= floor:  # c is 0 at the problem's scale
        return None
    cc = float(np.sum(c * c))
    if cc == 0:
        return None
    r = float(np.sum(u * c)) / cc
    if r == 0 or not math.isfinite(r):
        return None
    return r if _close(u, r * c, floor) else None


def _exact_relerr(u: sp.Matrix | None, c: sp.Matrix, floor: float = 0.0) -> float:
    """:func:`_relerr`'s largest entry, in exact arithmetic (inf: no value or shapes differ)."""
    if u is None:
        return math.inf
    if u.shape != c.shape:
        if u.shape == (1, 1):
            u = sp.ones(*c.shape) * u[0, 0]
        elif u.rows * u.cols == c.rows * c.cols:
            u = u.reshape(*c.shape)
        else:
            return math.inf
    scale = max([abs(x) for x in (*u, *c)] + [sp.Integer(0)])
    floor = max(scale * sp.Rational(1, 10**6), sp.Float(floor, PRECISION), sp.Float(1e-300))
    worst = 0.0
    for a, b in zip(u, c, strict=True):
        den = max(abs(a), abs(b), floor)
        worst = max(worst, float(abs(a - b) / den))
    return worst


def _exact_ratio(u: sp.Matrix | None, c: sp.Matrix) -> sp.Float | None:
    """r with u = r·c (least squares, exact arithmetic), or None."""
    if u is None or u.shape != c.shape:
        return None
    cc = sum(x * x for x in c)
    if cc == 0:
        return None
    return sp.Float(sum(a * b for a, b in zip(u, c, strict=True)) / cc, PRECISION)


def _name_constant(r: float) -> str | None:
    """2, 1/2, -1, 3/2 …: a small rational close to r, as text."""
    f = Fraction(r).limit_denominator(12)
    if abs(float(f) - r) > 1e-8 * max(1.0, abs(r)):
        return None
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def _factor_of(ratios: list[float], ns: list[int]) -> str | None:
    """Name the factor yours/correct: a constant, or ±N, ±1/N, N² …"""
    r0 = ratios[0]
    if all(abs(r - r0) <= 1e-7 * abs(r0) for r in ratios):
        return _name_constant(r0)
    for label, fn in (("N", lambda n: n), ("1/N", lambda n: 1 / n), ("-N", lambda n: -n),
                      ("-1/N", lambda n: -1 / n), ("N²", lambda n: n * n),
                      ("1/N²", lambda n: 1 / n / n)):
        if all(abs(r - fn(n)) <= 1e-7 * abs(fn(n)) for r, n in zip(ratios, ns, strict=True)):
            return label
    return None


_FACTOR_WORDS = {
    "N": "yours is N times the gradient (a 1/N is missing)",
    "1/N": "yours is the gradient divided by N once more (the 1/N of the mean is already in δ)",
    "2": "yours is twice the gradient",
    "1/2": "yours is half the gradient",
}


# --------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Second-order questions: verify --hvp / --gnvp --wrt W1 "…"
# --------------------------------------------------------------------------


def _tangent_name(name: str) -> str:
    """The user's name of a forward tangent: Z1_dot → Zdot1, Yhat_dot → Yhatdot."""
    m = re.fullmatch(r"([A-Za-z]+?)(\d*)_dot", name)
    return f"{m.group(1)}dot{m.group(2)}" if m else name


class SecondNetwork(Network):
    """A network whose questions are the components of its Hessian-vector (``kind`` "hvp")
    or Gauss–Newton ("gnvp") product along a direction V (:mod:`symgrad.second`).

    The formula may read, besides verify's names, the direction's components V_W1, V_b1, …
    (the shapes of W1, b1, …) and the forward tangents along V, Zdot1, Adot1, …, Yhatdot
    (also spelled Z1_dot, Yhat_dot; batchnorm's mudot2, vardot2, Xhatdot2) and the
    second-order adjoints R{δ_l} (Rdelta2 or dZ2_dot; 𝒢{δ_l} of gnvp: Gdelta2, dZ2_gn), each
    instance drawing V at random; ``--wrt W1`` asks for (H V)_W1 or (G V)_W1. Evidence and diagnoses
    are verify's (the instances at float64 and at 50 digits, the proof, the mistakes)."""

    def __init__(self, spec: Spec, kind: str) -> None:
        from symgrad import second

        super().__init__(spec)
        self.kind = kind
        self.so = so = second.hvp(self.d) if kind == "hvp" else second.gnvp(self.d)
        shapes = {p.name: p.shape for p in self.d.graph.params}
        for p, v in zip(self.d.graph.params, so.directions, strict=True):
            self.matrices[v.name] = (v, self.matrices[p.name][1])
        for eq in so.tangents:
            shape = tuple(eq.target.shape)
            self.matrices[eq.target.name] = self.matrices[_tangent_name(eq.target.name)] = (
                eq.target, shape)
        for eq in so.adjoints:  # R{δ_l} (hvp) or 𝒢{δ_l} (gnvp): dZ2_dot or Rdelta2, dZ2_gn or Gdelta2
            m = re.fullmatch(r"dZ(\d+)_(dot|gn)", eq.target.name)
            if m:
                alias = f"{'R' if m.group(2) == 'dot' else 'G'}delta{m.group(1)}"
                self.matrices[eq.target.name] = self.matrices[alias] = (
                    eq.target, tuple(eq.target.shape))
        lines = {e.target.name: e.rhs for e in so.adjoints}

        def inline(node: Node) -> Node:
            return transform(node, lambda n: inline(lines[n.name])
                             if isinstance(n, Sym) and n.name in lines else None)

        self.targets = {}
        for t in (Target(p, so.results[p] or "", inline(lines[so.results[p]]) if so.results[p]
                         else Const(sp.Integer(0)), self.matrices[p][1], re.sub(r"\d+$", "", p),
                         int(re.sub(r"^\D+", "", p)))
                  for p in shapes):
            self.targets[t.name] = _ProductTarget(**vars(t), kind=kind)
        self._cache: dict = {}

    def target(self, wrt: str) -> Target:
        name = wrt.strip()
        name = name[1:] if name not in self.targets and name.startswith("d") else name
        if name not in self.targets:
            raise SymgradError("--wrt", f"'{wrt}': --{self.kind} asks for a parameter's "
                               f"component of the product ({self._params()})")
        if not self.targets[name].cot:
            raise SymgradError("--wrt", f"the product's {name} component is 0 for this network "
                               "(nothing to verify)")
        return self.targets[name]

    def _product_env(self, env: dict, rng) -> None:
        so = self.so
        for p, v in zip(self.d.graph.params, so.directions, strict=True):
            env[v.name] = rng.normal(size=np.shape(env[p.name]))
        with np.errstate(all="ignore"):
            for eq in [*so.tangents, *so.adjoints]:
                env[eq.target.name] = eq.rhs.numeric(env)

    def instances(self, seed: int) -> tuple[_Instance, ...]:
        key = ("instances", seed)
        if key not in self._cache:
            out = []
            for k, inst in enumerate(_instances(self.spec, seed)):
                env = dict(inst.env)
                self._product_env(env, np.random.default_rng([seed, k, 2]))
                scale = max([float(np.max(np.abs(env[r]), initial=0.0))
                             for r in self.so.results.values() if r] + [0.0])
                out.append(_Instance(env, inst.sizes, FLOOR * scale if math.isfinite(scale)
                                     else 0.0))
            self._cache[key] = tuple(out)
        return self._cache[key]

    def exact_instances(self, seed: int) -> tuple[dict, ...] | None:
        key = ("exact", seed)
        if key not in self._cache:
            base = _exact_instances(self.spec, seed)
            if base is None:
                self._cache[key] = None
            else:
                out = []
                try:
                    with deadline(EXACT_SECONDS):
                        for env, inst in zip(base, self.instances(seed), strict=True):
                            env = dict(env)
                            for v in self.so.directions:
                                value = np.atleast_2d(inst.env[v.name])
                                env[v.name] = sp.Matrix(
                                    *value.shape, lambda i, j, x=value: sp.Float(float(x[i, j]),
                                                                                PRECISION))
                            for eq in [*self.so.tangents, *self.so.adjoints]:
                                env[eq.target.name] = _evaluated(eq.rhs.explicit(env))
                            out.append(env)
                    self._cache[key] = tuple(out)
                except (*EXHAUSTED, _NotExact, NotImplementedError, TypeError, ValueError,
                        ArithmeticError):
                    self._cache[key] = None
        return self._cache[key]

    @cached_property
    def mistakes(self) -> list[Mistake]:
        return []  # the first-order rules' mistakes do not apply; the generic diagnoses do

    @cached_property
    def explicit(self) -> tuple[dict, list[dict], tuple[int, ...]]:
        """verify's tiny instance, with V a symbol per entry and the tangents and the
        product's adjoints as fresh symbols defined by their equations."""
        env, groups, sizes = Network.explicit.func(self)
        for p, v in zip(self.d.graph.params, self.so.directions, strict=True):
            rows, cols = env[p.name].shape
            env[v.name] = sp.Matrix(rows, cols, lambda i, j, n=v.name: sp.Symbol(
                f"{n.lower()}_{i}{j}", real=True))
        for eq in [*self.so.tangents, *self.so.adjoints]:
            value = eq.rhs.explicit(env)
            syms = sp.Matrix(value.rows, value.cols, lambda i, j, n=eq.target.name: sp.Symbol(
                f"{n}_{i}{j}", real=True))
            groups.append(dict(zip(syms, value, strict=True)))
            env[eq.target.name] = syms
        return env, groups, sizes

    def describe(self) -> str:
        what = "H V" if self.kind == "hvp" else "G V = Jᵀ H_ℓ J V"
        v = ", ".join(naming.text(d.name) for d in self.so.directions)
        return f"{super().describe()}; {what} along V = ({v})"


@dataclass(frozen=True)
class _ProductTarget(Target):
    """A component of H V or G V: (H V)_W1, printed R{∂L/∂W1} or 𝒢{∂L/∂W1}."""

    kind: str = "hvp"

    @property
    def display(self) -> str:
        return naming.text(self.cot)

    @property
    def partial(self) -> str:
        return f"({'H' if self.kind == 'hvp' else 'G'} V)_{naming.text(self.name)}"


def verify(spec: Spec, wrt: str, formula: str, seed: int = 0, *,
           symbolic: bool = True, budget: float | None = None,
           progress: Callable[[str], None] | None = None,
           product: str | None = None) -> Verdict:
    """Check the hand-derived ∂L/∂``wrt`` written as ``formula`` (numpy syntax).

    Raises :class:`SymgradError` for bad input (unknown names, syntax, constructs the
    safe parser refuses); a wrong formula — including one whose shapes cannot
    match — is a :class:`Verdict` with ``ok == False``; so is one that agrees on every
    instance but could not be proved (``undecided``).  ``symbolic=False`` skips the
    proof: the exact evaluation then decides alone.  ``progress(stage)`` is called as
    each stage starts. ``product`` "hvp" or "gnvp": ``formula`` is the component for
    ``wrt`` of the Hessian-vector or Gauss–Newton product instead (see :class:`SecondNetwork`).
    """
    budget = SYMBOLIC_BUDGET if budget is None else budget
    if progress:
        progress("deriving the network's gradients")
    net = _network(as_spec(spec)) if product is None else SecondNetwork(as_spec(spec), product)
    target = net.target(wrt)
    tree = validate(formula, where="formula", allow_matrix=True, indexing=True)
    return _Check(net, target, formula, tree, seed, symbolic, budget, progress).run()


class _Check:
    def __init__(self, net: Network, target: Target, formula: str, tree: ast.Expression,
                 seed: int, symbolic: bool, budget: float,
                 progress: Callable[[str], None] | None = None) -> None:
        self.net, self.target, self.formula, self.tree = net, target, formula, tree
        self.seed = seed
        self.progress = progress or (lambda stage: None)
        self.progress("evaluating the network on random instances")
        self.instances = net.instances(seed)
        self.correct_values = [i.env[target.cot] for i in self.instances]
        self.floors = [i.floor for i in self.instances]
        self.progress(f"evaluating them again at {PRECISION} digits")
        exact = net.exact_instances(seed)
        self.exact_envs = exact
        self.exact_values = None if exact is None else [e[target.cot] for e in exact]
        self.symbolic, self.budget = symbolic, budget
        self.differs: tuple[int, str, str] | None = None  # prove(): an exact difference
        prefix = "np." if any(isinstance(n, ast.Name) and n.id == "np" for n in ast.walk(tree)) \
            else "numpy." if any(isinstance(n, ast.Name) and n.id == "numpy"
                                 for n in ast.walk(tree)) else ""
        self.prefix = prefix
        # the text the parser saw (ast offsets refer to it)
        self.source = formula.replace("\r", " ").replace("\n", " ").lstrip(" \t\f")
        t = target
        self.verdict = Verdict(
            ok=False, wrt=t.name, formula=formula,
            title=f"verify {t.partial} — {net.describe()}",
            textbook=f"{t.display} = {textbook(t.node)}" if t.family != "Z"
            else f"{t.display} = {t.partial} = {textbook(t.node)}",
        )
        if net.d.assumptions and t.family in ("Z", "W", "b", "A") and t.name != "Yhat":
            self.verdict.notes += [f"the derivation assumes {a}" for a in net.d.assumptions]
        self.verdict.correct = self.suggestion()
        if not self.verdict.correct:
            self.verdict.notes.append("no numpy spelling of the correct formula passed this "
                                      "check; the textbook form is the reference")

    def suggestion(self) -> str:
        """The correct formula in numpy syntax — only a spelling that this same check
        accepts (parsed, shape-checked and :meth:`agrees`), so "correct:" never shows a
        formula that verify would reject; "" when no spelling passes."""
        key = (self.target.name, self.prefix, self.seed)
        cache = self.net.suggestions
        if key not in cache:
            cache[key] = ""
            maps = self.net.map_names
            for printer in (NumpyPrinter(self.prefix, maps=maps),
                            NumpyPrinter(self.prefix, keepdims=True, maps=maps)):
                text = printer.doprint(self.target.node)
                try:
                    term = self.build(validate(text, where="correct formula",
                                               allow_matrix=True, indexing=True), text)
                except (_ShapeError, SymgradError):
                    continue
                if self.agrees(term):
                    cache[key] = text
                    break
        return cache[key]

    # --- helpers

    def build(self, tree: ast.Expression, source: str | None = None) -> Term:
        value = FormulaBuilder(self.net, source=source).build(tree)
        if not isinstance(value, Term):
            value = Term(Const(value), (), _src(tree.body))
        return value

    def fits(self, shape: Shape, target_shape: Shape) -> bool:
        if tuple(shape) == tuple(target_shape):
            return True
        t = self.target
        if len(shape) == 4 and t.family == "W" and t.layer in self.net.maps:
            g = self.net.maps[t.layer][1]  # the kernel in HWIO form: the same entries
            return tuple(shape) == (g.kh, g.kw, target_shape[0] / g.k, target_shape[1])
        return len(target_shape) == 1 and tuple(shape) == (_ONE, target_shape[0])

    def values(self, term: Term) -> list[np.ndarray | None]:
        out = []
        for inst in self.instances:
            try:
                with np.errstate(all="ignore"):
                    v = np.asarray(term.node.numeric(inst.env), dtype=np.float64)
            except (ValueError, TypeError, ZeroDivisionError, OverflowError):
                v = None
            out.append(v)
        return out

    def exact(self, term: Term) -> list[sp.Matrix | None] | None:
        """``term`` on each instance at :data:`PRECISION` digits (None: no exact
        evaluation for this network; an entry None: not a real number for this term)."""
        if self.exact_envs is None:
            return None
        out: list[sp.Matrix | None] = []
        try:
            with deadline(EXACT_SECONDS):
                for env in self.exact_envs:
                    try:
                        out.append(_evaluated(term.node.explicit(env)))
                    except (_NotExact, TypeError, ValueError, ArithmeticError):
                        out.append(None)
        except (*EXHAUSTED, NotImplementedError):
            return None
        return out

    def exact_errors(self, term: Term, values=None) -> list[float] | None:
        """Max relative error per instance at :data:`PRECISION` digits, as
        :func:`_relerr` (inf where the term is not a number or the shapes differ)."""
        values = self.exact(term) if values is None else values
        if values is None or self.exact_values is None:
            return None
        return [_exact_relerr(u, c, f)
                for u, c, f in zip(values, self.exact_values, self.floors, strict=True)]

    def agrees(self, term: Term) -> bool:
        """The one test of equality, for the user's formula, a repaired one ("fixed:")
        and the suggested one ("correct:"): float64 within :data:`RTOL` on every
        instance, and at :data:`PRECISION` digits within the network's exact tolerance
        where the exact evaluation is available."""
        if not self.fits(term.shape, self.target.shape) or not self.matches(self.values(term)):
            return False
        errs = self.exact_errors(term)
        return errs is None or max(errs) <= self.net.exact_rtol

    def matches(self, values, correct=None) -> bool:
        correct = self.correct_values if correct is None else correct
        return all(_close(u, c, f) for u, c, f in zip(values, correct, self.floors, strict=True))

    def shape_note(self, shape: Shape) -> str:
        t = self.target
        owner = f"the shape of {t.name}" if t.family in ("W", "b") else f"the shape of {t.name}"
        return (f"yours is {_shape_text(shape)}, {t.partial} is {_shape_text(t.shape)} ({owner})")

    # --- the check

    def run(self) -> Verdict:
        v = self.verdict
        try:
            term = self.build(self.tree, self.source)
        except _ShapeError as e:
            read = self.read_widths()
            if read is not None:
                return self.agreeing(read)
            v.numeric = f"not evaluated: {e}"
            return self.diagnose(None, None, shape_message=str(e))
        if term.shape == () and isinstance(term.node, Const) and term.node.value == 0:
            # "0": the zero gradient, as a textbook writes ∂L/∂b₁ = 0 (any shape)
            shape = _internal(self.target.shape)
            term = Term(Scale(sp.Integer(0), Ones(shape)), self.target.shape, term.text)
        if not self.fits(term.shape, self.target.shape):
            read = self.read_widths()
            if read is not None:
                return self.agreeing(read)
            v.numeric = f"not evaluated: {self.shape_note(term.shape)}"
            return self.diagnose(term, None, shape_message=self.shape_note(term.shape))
        values = self.values(term)
        errs = [float(np.max(_relerr(u, c, f), initial=0.0)) if u is not None else math.inf
                for u, c, f in zip(values, self.correct_values, self.floors, strict=True)]
        worst = max(errs)
        if worst <= RTOL:
            return self.agreeing(term, values, worst)
        read = self.read_widths()
        if read is not None:
            return self.agreeing(read)
        sizes = "; ".join(i.text() for i in self.instances)
        bad = sum(e > RTOL for e in errs)
        v.numeric = (f"differs on {bad} of {len(values)} random instances ({sizes}), "
                     f"max relative error {worst:.2g}")
        v.symbolic = "not needed (the numbers differ)"
        v.counterexample = self.counterexample(values)
        return self.diagnose(term, values)

    def agreeing(self, term: Term, values=None, worst: float | None = None) -> Verdict:
        """The verdict on a formula equal to the gradient in float64 (within :data:`RTOL`):
        exact evaluation, then the proof."""
        v = self.verdict
        if values is None:
            values = self.values(term)
            worst = max(float(np.max(_relerr(u, c, f), initial=0.0))
                        for u, c, f in zip(values, self.correct_values, self.floors, strict=True))
        sizes = "; ".join(i.text() for i in self.instances)
        exact = self.exact(term)
        exact_errs = self.exact_errors(term, exact)
        tol = self.net.exact_rtol
        if exact_errs is not None and max(exact_errs) > tol:
            return self.near_miss(values, exact, exact_errs, worst, sizes)
        if exact_errs is None:
            evidence = (f"agrees on {len(values)} random instances ({sizes}) to {worst:.1e} "
                        f"(float64 only: no exact evaluation here)")
        else:
            evidence = (f"equal on {len(values)} random instances ({sizes}): max relative "
                        f"error {worst:.1e} in float64, {max(exact_errs):.1e} at "
                        f"{PRECISION} digits (tolerance {tol:.0e})")
        v.numeric = evidence
        if self.symbolic:
            self.progress("proving it on a tiny instance")
            proved, v.symbolic = self.prove(term)
        else:
            proved, v.symbolic = False, "not attempted"
        if self.differs is not None:  # an exact, nonzero difference: decided
            k, constant, at = self.differs
            v.ok = False
            v.message = (f"yours − {self.target.partial} is the constant {constant} "
                         f"(entry by entry on a tiny instance, {at}): a stray term; the "
                         f"numbers agree to {max(exact_errs or [worst]):.1e} only because "
                         "it is tiny")
            return v
        # the rule (module docstring): proved, or no proof asked for and exact agreement
        v.ok = proved or (not self.symbolic and exact_errs is not None)
        if v.ok and self.zero():
            v.notes.insert(0, self.zero_note())
        if not v.ok:
            v.undecided = True
            agreement = max(exact_errs) if exact_errs is not None else worst
            why = ("the symbolic check was over its budget" if "budget" in v.symbolic
                   else "the symbolic check was not attempted" if not self.symbolic
                   else "SymPy could not decide the symbolic check")
            v.message = (f"not proved: agrees numerically to {agreement:.1e} on "
                         f"{len(values)} instances; {why}")
        return v

    def read_widths(self) -> Term | None:
        """The formula with its whole-number literals read as the spec's widths they equal
        (``32 * … / 32`` with n₁ = 32; ``dZ3[:, 0:2]`` with n₁ = 2), when that spelling
        :meth:`agrees` — so it is right at the spec's own widths, and verify goes on to
        prove its general form; a note says how it was read. None when no reading agrees
        (at most :data:`WIDTH_READINGS` are tried)."""
        spec_values = self.net.spec_widths
        spots: dict[int, list[tuple[int, int]]] = {}  # literal value -> its source spans
        slices = {id(b) for n in ast.walk(self.tree) if isinstance(n, ast.Slice)
                  for b in (n.lower, n.upper) if b is not None}
        for n in ast.walk(self.tree):
            if not (isinstance(n, ast.Constant) and type(n.value) in (int, float)):
                continue
            value = n.value
            if not (math.isfinite(value) and float(value).is_integer()):
                continue
            if int(value) >= (1 if id(n) in slices else 2) and int(value) in spec_values:
                spots.setdefault(int(value), []).append((n.col_offset, n.end_col_offset,
                                                         id(n) in slices))
        if not spots:
            return None
        choices = [[(value, e) for e in spec_values[value]] for value in spots]
        for k, reading in enumerate(itertools.product(*choices)):
            if k >= WIDTH_READINGS:
                break
            edits = [(a, b, _width_source(e, bare)) for value, e in reading
                     for a, b, bare in spots[value]]
            text = _apply(self.source, edits)
            try:
                term = self.build(validate(text, where="formula", allow_matrix=True,
                                           indexing=True), text)
            except (_ShapeError, SymgradError):
                continue
            if not self.agrees(term):
                continue
            read = " and ".join(f"{value} as {_dim_text(e)}" for value, e in reading)
            self.verdict.notes.insert(0, (
                f"read {read} (this spec's width{'s' if len(reading) > 1 else ''}): verify "
                "checks the formula at other widths too, so write a width by its name, n1 or "
                f"n_1: {text}"))
            return term
        return None

    def zero(self) -> bool:
        """The gradient is 0 on every instance: to 50 digits (where evaluated), else to
        float64 rounding at the problem's scale."""
        if self.exact_values is not None:
            return all(max((abs(x) for x in c), default=0) <= f * EXACT_RTOL
                       for c, f in zip(self.exact_values, self.floors, strict=True))
        return all(float(np.max(np.abs(c), initial=0.0)) <= f * RTOL
                   for c, f in zip(self.correct_values, self.floors, strict=True))

    def zero_note(self) -> str:
        """Why the gradient is 0: a bias (or shift) whose row reaches a standardization over
        the batch unchanged (an activation f(z) = z between), which subtracts the batch mean
        of each column, so a constant added to every row cancels; else only that it is."""
        t, net = self.target, self.net
        head = f"{t.partial} = 0 exactly: the loss does not depend on {naming.text(t.name)}"
        if t.family not in ("b", "beta"):
            return head
        values = {a.target.name: a.rhs for a in net.d.graph.assignments}
        carried = {f"Z{t.layer}"}  # Z_l and the values equal to it (identity activations)
        for name, rhs in values.items():
            if (isinstance(rhs, Elementwise) and isinstance(rhs.x, Sym) and rhs.x.name in carried
                    and rhs.fn.derivative == 1):
                carried.add(name)
        for name, rhs in values.items():
            if isinstance(rhs, Standardize) and rhs.axis == 0 and isinstance(rhs.x, Sym) \
                    and rhs.x.name in carried:
                layer = naming.layer_of(name) or 0
                kind = net.spec.layers[layer - 1].type
                return (f"{head} (layer {layer}'s {kind} subtracts the batch mean of each "
                        f"column, so {naming.text(t.name)}, added to every row, cancels)")
        return head

    def near_miss(self, values, exact, exact_errs, worst, sizes) -> Verdict:
        """Equal in float64 (within :data:`RTOL`), different at :data:`PRECISION` digits:
        a formula off by a tiny factor or term, e.g. ``X.T @ dZ1 * 1.000000001``."""
        v, t = self.verdict, self.target
        bad = sum(e > self.net.exact_rtol for e in exact_errs)
        v.numeric = (f"differs on {bad} of {len(values)} random instances ({sizes}) at "
                     f"{PRECISION} digits, max relative error {max(exact_errs):.2g} (float64 "
                     f"agrees to {worst:.1e}, which its screening tolerance {RTOL:g} cannot "
                     "tell apart)")
        v.symbolic = "not needed (the numbers differ)"
        ratios = [_exact_ratio(u, c) for u, c in zip(exact, self.exact_values, strict=True)]
        if None not in ratios and all(abs(r - ratios[0]) <= self.net.exact_rtol * abs(ratios[0])
                                      for r in ratios):
            r = f"{float(ratios[0]):.15g}"
            return self.found("factor", f"off by a constant factor {r}: yours = {r} × "
                              f"{t.partial}, a relative error of {float(ratios[0] - 1):.1e}",
                              factor=r)
        v.message = (f"close but not equal: yours differs from {t.partial} by up to "
                     f"{max(exact_errs):.1e} (relative)")
        return v

    def counterexample(self, values) -> str:
        for inst, u, c in zip(self.instances, values, self.correct_values, strict=True):
            if u is None or u.shape != c.shape:
                continue
            err = _relerr(u, c, inst.floor)
            if np.max(err) <= RTOL:
                continue
            i, j = np.unravel_index(int(np.argmax(err)), err.shape)
            index = f"[{j}]" if len(self.target.shape) == 1 else f"[{i}, {j}]"
            return (f"at {inst.text()}: entry {index} is {u[i, j]:.6g} in yours, "
                    f"{c[i, j]:.6g} in {self.target.partial}")
        return ""

    # --- diagnoses

    def diagnose(self, term: Term | None, values, shape_message: str | None = None) -> Verdict:
        v = self.verdict
        t = self.target
        ns = [inst.env[N] for inst in self.instances]
        if term is not None and values is None and len(term.shape) == 2 and self.fits(
            (term.shape[1], term.shape[0]), t.shape
        ):
            tv = [u.T if u is not None else None for u in self.values(term)]
            if self.matches(tv):
                return self.found("transposed", f"yoursᵀ equals {t.partial}: "
                                  f"{self.shape_note(term.shape)}")
            ratios = [_ratio(u, c, f) if u is not None else None
                      for u, c, f in zip(tv, self.correct_values, self.floors, strict=True)]
            if None not in ratios and (f := _factor_of(ratios, ns)):
                return self.found("transposed", f"yoursᵀ equals {f} × {t.partial}: "
                                  f"transposed and off by a factor {f}", factor=f)
        if values is not None:
            found = self.layer_mistake(values)
            if found:
                return found
            ratios = [_ratio(u, c, f) if u is not None else None
                      for u, c, f in zip(values, self.correct_values, self.floors, strict=True)]
            if None not in ratios and (f := _factor_of(ratios, ns)):
                if f == "-1":
                    return self.found("sign", f"the sign is wrong: yours = −{t.partial}",
                                      factor="-1")
                words = _FACTOR_WORDS.get(f, f"yours = {f} × {t.partial}")
                return self.found("factor", f"off by a constant factor {f}: {words}", factor=f)
            found = self.missing_derivative(values)
            if found:
                return found
        if term is not None:
            found = self.other_gradient(term)
            if found:
                return found
        if values is not None:
            found = self.missing_term(values)
            if found:
                return found
        found = self.variants()
        if found:
            return found
        if shape_message is not None:
            return self.found("shape", f"the shapes cannot match: {shape_message}")
        v.message = "no simple diagnosis fits; compare with the correct formula below"
        return v

    def found(self, code: str, message: str, factor: str | None = None,
              fix: str | None = None) -> Verdict:
        v = self.verdict
        v.diagnosis, v.message, v.factor = code, message, factor
        if fix:
            v.fix = fix
        return v

    def missing_derivative(self, values) -> Verdict | None:
        t = self.target
        net = self.net
        for l in range(net.L, 0, -1):
            factor = net.missing_factor(l)
            if factor is None:
                continue
            alt = []
            for inst in self.instances:
                env = dict(inst.env)
                with np.errstate(all="ignore"):
                    net.sweep(env, skip_derivative=l)
                alt.append(env[t.cot])
            if self.matches(alt):  # layer l's derivative does not reach this gradient
                continue
            if self.matches(values, alt):
                fn = net.spec.layers[l - 1].fn
                sub = str(l).translate(_SUB)
                a = "∂L/∂Ŷ" if l == net.L else f"∂L/∂A{sub}"
                return self.found(
                    "activation-derivative",
                    f"missing activation-derivative factor: yours is {t.partial} without "
                    f"{factor} of layer {l} ({fn.name}′), i.e. with {a} where δ{sub} = "
                    f"{a} ⊙ {fn.name}′(Z{sub}) belongs",
                )
            found = self.relu_mask(l, values, factor)
            if found:
                return found
        return None

    def layer_mistake(self, values) -> Verdict | None:
        """A classic mistake of the table (:func:`mistakes`) that yours equals: the
        network swept again with the wrong rule gives your values on every instance."""
        for mistake in self.net.mistakes:
            alt = []
            for inst in self.instances:
                env = dict(inst.env)
                with np.errstate(all="ignore"):
                    self.net.sweep(env, replace={mistake.step: mistake.wrong})
                alt.append(env[self.target.cot])
            if self.matches(alt):  # the mistake does not reach this gradient
                continue
            if self.matches(values, alt):
                return self.found(mistake.code, mistake.words)
        return None

    def relu_mask(self, l: int, values, factor: str) -> Verdict | None:
        """Layer ``l`` is not relu, but yours uses relu′, the mask [Z_l > 0] (numpy:
        ``(Z1 > 0)``), as its activation derivative."""
        fn = self.net.spec.layers[l - 1].fn
        if fn.name == "relu" or fn.is_rowwise or f"Z{l}" not in self.instances[0].env:
            return None
        alt = []
        for inst in self.instances:
            env = dict(inst.env)
            with np.errstate(all="ignore"):
                self.net.sweep(env, skip_derivative=l,
                               factor=lambda e: (np.asarray(e[f"Z{l}"]) > 0).astype(float))
            alt.append(env[self.target.cot])
        if not self.matches(values, alt):
            return None
        sub = str(l).translate(_SUB)
        return self.found(
            "activation-derivative",
            f"wrong activation derivative: yours uses relu′ (the 0/1 mask [Z{sub} > 0]) for "
            f"layer {l}, but layer {l} is {fn.name}: use {factor}",
        )

    def other_gradient(self, term: Term) -> Verdict | None:
        t = self.target
        values = None
        for other in self.net.targets.values():
            if other.name == t.name or not self.fits(term.shape, other.shape):
                continue
            values = values if values is not None else self.values(term)
            correct = [inst.env[other.cot] for inst in self.instances]
            if all(float(np.max(np.abs(c), initial=0.0)) <= f for c, f in zip(
                    correct, self.floors, strict=True)):
                continue  # a gradient that is 0 (a bias before a batchnorm) names no mix-up
            if self.matches(values, correct):
                if other.family == t.family:
                    return self.found(
                        "layer", f"correct up to one layer: yours is {other.partial} "
                        f"(layer {other.layer}), not {t.partial} (layer {t.layer})")
                return self.found("other-gradient",
                                  f"yours is {other.partial}, not {t.partial}")
        return None

    def variants(self) -> Verdict | None:
        """One small edit — a sum over the other axis, one name transposed, one name taken
        from another layer — after which the formula matches."""
        source = self.source
        used: list[str] = []
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Name) and n.id in self.net.matrices and n.id not in used:
                used.append(n.id)
        candidates: list[tuple[str, str, list[tuple[int, int, str]]]] = []
        candidates += [("axis", what, edits) for what, edits in _axis_edits(self.tree)]
        for name in used:
            if len(self.net.matrices[name][1]) == 2:
                edits, had_t = _name_edits(self.tree, name, None)
                what = f"{name}.T should be {name}" if had_t else f"{name} needs a transpose"
                candidates.append(("transposed", what, edits))
        for name in used:
            for alt in self.net.family(name, adjacent=True):
                candidates.append(("layer", f"{name} should be {alt}",
                                   _name_edits(self.tree, name, alt)[0]))
        for code, what, edits in candidates:
            fixed = _apply(source, edits)
            try:
                term = self.build(validate(fixed, where="formula", allow_matrix=True,
                                           indexing=True))
            except (_ShapeError, SymgradError):
                continue
            if not self.agrees(term):  # the same test as for the user's formula
                continue
            if code == "layer":
                what = f"correct up to one layer: {what}"
            return self.found(code, f"{what}: {fixed} is right", fix=fixed)
        return None

    def missing_term(self, values) -> Verdict | None:
        """The correct formula is a sum of terms (Xᵀδ₁ + λ₂W₁): is yours the same sum with
        one term missing, of the wrong sign or off by a factor?"""
        t = self.target
        if not isinstance(t.node, Add):
            return None
        terms = t.node.terms
        coefs = []
        for inst, u in zip(self.instances, values, strict=True):
            if u is None:
                return None
            with np.errstate(all="ignore"):
                parts = [np.broadcast_to(p.numeric(inst.env), u.shape).ravel() for p in terms]
            A, b = np.stack(parts, axis=1), u.ravel()
            if not (np.all(np.isfinite(A)) and np.all(np.isfinite(b))):
                return None
            k, *_ = np.linalg.lstsq(A, b, rcond=None)
            if not _close(A @ k, b, inst.floor):
                return None
            coefs.append(k)
        ns = [inst.env[N] for inst in self.instances]
        for i in range(len(terms)):
            ki = [float(k[i]) for k in coefs]
            rest_ok = all(abs(k[j] - 1) <= 1e-7 for k in coefs for j in range(len(terms)) if j != i)
            if not rest_ok or all(abs(x - 1) <= 1e-7 for x in ki):
                continue
            part = f"{numpy_text(terms[i], self.prefix)} ({textbook(terms[i])})"
            if all(abs(x) <= 1e-9 for x in ki):
                return self.found("missing-term", f"missing term: yours + {part} = {t.partial}")
            name = _factor_of(ki, ns)
            if name == "-1":
                return self.found("sign", f"the term {part} has the wrong sign", factor="-1")
            if name is not None:
                return self.found("factor", f"the term {part} is off by a factor {name}",
                                  factor=name)
        return None

    # --- symbolic proof

    def prove(self, term: Term) -> tuple[bool, str]:
        """(proved, the evidence line): each entry's difference is 0 on the tiny
        explicit instance, within ``budget`` seconds (building the instance included)."""
        t0 = time.perf_counter()
        try:
            with deadline(self.budget):
                env, groups, sizes = self.net.explicit
                mine = term.node.explicit(env)
                ref = env[self.target.cot]
                if mine.shape != ref.shape:
                    mine = mine.reshape(*ref.shape)
                count = 0
                for k, (a, b) in enumerate(zip(mine, ref, strict=True)):
                    if not _prove_entry(a - b, groups, self.net.forward_groups):
                        constant = _constant_difference(a - b, groups)
                        if constant is not None and self.net.exact_rtol <= EXACT_RTOL:
                            self.differs = (k, constant, self.net.tiny_text(sizes))
                            return False, (f"DIFFERS at {self.net.tiny_text(sizes)}: entry "
                                           f"{_flat_index(k, ref.shape)}'s difference is "
                                           f"exactly {constant}, not 0")
                        return False, (f"not decided (SymPy could not reduce an entry's "
                                       f"difference to 0 at {self.net.tiny_text(sizes)})")
                    count += 1
        except EXHAUSTED:
            return False, (f"not decided (over the {self.budget:g} s budget at "
                           f"{self.net.tiny_text(sizes)})")
        return True, (f"proved at {self.net.tiny_text(sizes)}: every entry's difference is 0 "
                      f"({count} entries, {time.perf_counter() - t0:.2f} s)")


WIDTH_READINGS = 16  # readings of a formula's literals as widths that verify tries


def _width_source(e: sp.Expr, bare: bool = False) -> str:
    """A width expression as a formula writes it: n1, (n1 + n2), 2 * n0; ``bare`` (a slice
    bound): without brackets."""
    text = NumpyPrinter().doprint(e)
    return text if bare or isinstance(e, sp.Symbol | sp.Integer) else f"({text})"


def _flat_index(k: int, shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, np.unravel_index(k, shape))) + "]"


def _constant_difference(e: sp.Expr, groups: list[dict]) -> str | None:
    """The nonzero number an entry's difference reduces to, with every definition unfolded
    and expanded (``X.T @ dZ1 + 1e-45``: 1e-45, which no tolerance of an evaluation at
    fixed precision can tell from 0, but which is decidably not 0); None otherwise."""
    for defs in reversed(groups):
        e = e.xreplace(defs)
    if not e.is_number:
        e = sp.expand(e)
    if e.is_number and e.is_zero is False:
        value = complex(sp.N(e, 17))
        return (f"{value.real:g}" if value.imag == 0 and value.real != 0 and
                math.isfinite(value.real) else str(sp.N(e, 3)))
    return None


Edit = tuple[int, int, str]  # (start, end, replacement) in UTF-8 bytes of the source


def _name_edits(tree: ast.Expression, name: str, new: str | None) -> tuple[list[Edit], bool]:
    """Replace every ``name`` by ``new`` (None: transpose it, and untranspose ``name.T``);
    also whether a ``.T`` is removed."""
    edits: list[Edit] = []
    inside: set[int] = set()
    for node in ast.walk(tree):
        if (new is None and isinstance(node, ast.Attribute) and node.attr == "T"
                and isinstance(node.value, ast.Name) and node.value.id == name):
            edits.append((node.col_offset, node.end_col_offset, name))
            inside.add(id(node.value))
    had_t = bool(edits)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id == name and id(node) not in inside:
            edits.append((node.col_offset, node.end_col_offset, new or f"{name}.T"))
    return edits, had_t


def _axis_edits(tree: ast.Expression) -> Iterator[tuple[str, list[Edit]]]:
    """For each sum/mean: the other axis (0 ↔ 1), or an axis where there was none."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
        args = [f.value, *node.args] if _is_method(f) else node.args  # x.sum(…) is sum(x, …)
        if name not in ("sum", "mean") or not args:
            continue
        axis = next((k.value for k in node.keywords if k.arg == "axis"), None)
        if axis is None and len(args) == 2:
            axis = args[1]
        label = _src(node)
        sep = ", " if node.args or node.keywords else ""
        if isinstance(axis, ast.UnaryOp) and _axis_literal(axis) in (-1, -2):
            axis = ast.copy_location(ast.Constant(_axis_literal(axis)), axis)
        if isinstance(axis, ast.Constant) and type(axis.value) is int and axis.value in (
                0, 1, -1, -2):
            other = str(1 - axis.value % 2)  # of a matrix: -1 is axis 1, -2 axis 0
            yield (f"{label} sums over the wrong axis (use axis={other})",
                   [(axis.col_offset, axis.end_col_offset, other)])
        elif axis is None:
            for other in ("0", "1"):
                yield (f"{label} sums over everything (use axis={other})",
                       [(node.end_col_offset - 1, node.end_col_offset - 1, f"{sep}axis={other}")])


def _apply(source: str, edits: list[Edit]) -> str:
    raw = source.encode()  # ast offsets count UTF-8 bytes
    for start, end, text in sorted(edits, reverse=True):
        raw = raw[:start] + text.encode() + raw[end:]
    return raw.decode()


# --------------------------------------------------------------------------
# Deciding that a SymPy difference is 0
# --------------------------------------------------------------------------


def _normal(e: sp.Expr) -> sp.Expr:
    """σ, softplus and the opaque softmax exponential in their exp/log forms."""
    if e.has(Exp):
        e = e.replace(Exp, sp.exp)
    return expand_named(e)


def _prove_entry(e: sp.Expr, groups: list[dict], forward: Sequence[dict] = ()) -> bool:
    """e == 0 for an entry's difference written with defined values.

    Search: at each stage, unfolding any *one* group of definitions present (latest
    first) is tried with the cheap checks; if none closes the proof, the latest group is
    unfolded for good and the search goes on.  So (δ₂ W₂ᵀ) ⊙ [Z₁ > 0] meets
    ∂L/∂A₁ ⊙ [A₁ > 0] after unfolding δ₁, ∂L/∂A₁ and then A₁ alone, without expanding
    the network above.  ``simplify`` runs only once everything is unfolded.

    ``forward`` (the forward values' groups): the latest unfolding is also tried with those
    unfolded alone (:func:`_forward_zero`), the cotangents kept as symbols —
    batchnorm's long form, in A and μ, meets the rule in X̂ once X̂ and μ are unfolded."""
    if e == 0:
        return True
    order = list(reversed(groups))
    while True:
        present = [g for g in order if any(s in g for s in e.free_symbols)]
        if not present:
            return _zero(e)
        for defs in present:
            candidate = e.xreplace(defs)
            if _maybe_zero(candidate) and _zero(candidate, simplify=False):
                return True
            if forward and defs is present[0] and _forward_zero(candidate, forward):
                return True
        e = e.xreplace(present[0])


def _forward_zero(e: sp.Expr, forward: Sequence[dict]) -> bool:
    """e == 0 after unfolding the forward values, latest first, one group at a time (each
    step checked): X̂ into A, μ and σ², then σ² and μ into A, and so on down."""
    for defs in reversed(forward):
        if not any(s in defs for s in e.free_symbols):
            continue
        e = e.xreplace(defs)
        if _maybe_zero(e) and _zero(e, simplify=False):
            return True
    return False


def _maybe_zero(e: sp.Expr) -> bool:
    """False when ``e`` is certainly not identically 0: its value at a random point
    (30 digits) is not ~0.  Cheap, so the search tries the costly forms only where
    they can succeed."""
    symbols = sorted(e.free_symbols, key=lambda s: s.name)
    rng = np.random.default_rng(len(symbols))
    point = {s: sp.Float(float(v), 30) for s, v in zip(symbols, rng.uniform(-0.9, 0.9, len(symbols)),
                                                       strict=True)}
    try:
        value = complex(_normal(e).xreplace(point).evalf(30))
    except (TypeError, ValueError, ArithmeticError):
        return True
    return not math.isfinite(abs(value)) or abs(value) < 1e-15


def _zero(e: sp.Expr, simplify: bool = True) -> bool:
    """e == 0, trying cheap forms first; the caller's deadline cuts it off.

    First as a rational function of the atoms as they are (σ(z), tanh(z), the softmax
    exponentials, [a > 0]); then with σ and softplus written out with exp (a hand
    formula may spell them so); then with tanh/sinh/cosh as exponentials; last
    ``simplify``."""
    if e == 0:
        return True
    forms = [e]
    normal = _normal(e)
    if normal != e:
        forms.append(normal)
    if normal.has(sp.tanh, sp.sinh, sp.cosh):
        forms.append(normal.rewrite(sp.exp))
    for form in forms:
        if _rational_zero(form):
            return True
    return simplify and sp.simplify(normal) == 0


def _rational_zero(e: sp.Expr, fold: bool = True) -> bool:
    """The numerator of ``e`` over a common denominator expands to 0; failing that, each
    piece of ``e`` with its piecewise parts pulled out (relu's [z > 0]) does."""
    if e == 0:
        return True
    num, _ = sp.fraction(sp.together(e))
    if sp.expand(num) == 0:
        return True
    if fold and e.has(sp.Piecewise):
        folded = sp.piecewise_fold(e)
        if isinstance(folded, sp.Piecewise):
            return all(_rational_zero(v, False) for v, c in folded.args if c is not sp.false)
        return _rational_zero(folded, False)
    return False


# --------------------------------------------------------------------------
# Scalar mode
# --------------------------------------------------------------------------


def verify_scalar(expr: str, wrt: str, formula: str, seed: int = 0, *,
                  budget: float | None = None) -> Verdict:
    """Check that ``formula`` is d(``expr``)/d(``wrt``) for scalar expressions."""
    budget = SYMBOLIC_BUDGET if budget is None else budget
    name = (wrt or "").strip()
    if (not name.isidentifier() or keyword.iskeyword(name) or name in ("pi", "e")
            or name in SCALAR_FUNCTIONS):
        raise SymgradError("--wrt", f"'{wrt}' is not a variable name; use a name such as x")
    x = sp.Symbol(name, real=True)
    f = parse_scalar(expr, {name: x}, where="--expr")
    g = parse_scalar(formula, {name: x}, where="formula")
    correct = within(SIMPLIFY_SECONDS, "--expr", expr, sp.diff, f, x, verb="differentiate")
    pretty = _simplest(correct, budget / 2)
    d = f"d/d{name} ({' '.join(expr.split())})"
    v = Verdict(
        ok=False, wrt=name, formula=formula, title=f"verify {d}",
        correct=numpy_text(pretty),
        textbook=f"{d} = {TextScalarPrinter({x: name}, elementwise=False).doprint(pretty)}",
    )
    try:
        with deadline(EXACT_SECONDS):
            points = _sample(x, [f, g, correct], seed)
    except EXHAUSTED:
        raise SymgradError("formula", f"too complex to evaluate in {EXACT_SECONDS:g} s: "
                           f"{' '.join(formula.split())[:60]}") from None
    shown = ", ".join(f"{p:g}" for p, _ in points)
    digits = [_digits(c) for e in (f, g) for c in e.atoms(sp.Float)]
    tol = max([SCALAR_RTOL, *(1e3 * 10.0 ** -d for d in digits)])
    v.correct = _checked_scalar([pretty, correct], x, points, tol)
    errors = [_scalar_relerr(gv, cv) for _, (_, gv, cv) in points]
    bad = [(p, float(gv), float(cv)) for (p, (_, gv, cv)), err in zip(points, errors, strict=True)
           if err > tol]
    if bad:
        p, gv, cv = bad[0]
        v.numeric = f"differs at {len(bad)} of {len(points)} points ({name} = {shown})"
        v.symbolic = "not needed (the values differ)"
        v.counterexample = f"at {name} = {p:g}: yours {gv:.10g}, correct {cv:.10g}"
        ratios = [gv / cv for _, (_, gv, cv) in points if abs(cv) > 1e-12]
        c = None
        if len(ratios) >= 3 and all(abs(r - ratios[0]) <= tol * abs(ratios[0]) for r in ratios):
            c = _name_constant(float(ratios[0]))
            if c is not None and abs(sp.Rational(c) - ratios[0]) > tol * abs(ratios[0]):
                c = f"{float(ratios[0]):.15g}"  # 1.000000001, not "1"
        if c == "-1":
            v.diagnosis, v.factor = "sign", "-1"
            v.message = f"the sign is wrong: yours = −{d}"
        elif c is not None:
            v.diagnosis, v.factor = "factor", c
            v.message = f"off by a constant factor {c}: yours = {c} × {d}"
        else:
            v.message = "no simple diagnosis fits; compare with the correct derivative below"
        return v
    worst = max(errors, default=0.0)
    v.numeric = (f"equal at {len(points)} points ({name} = {shown}): max relative error "
                 f"{worst:.1e} at {SCALAR_DIGITS} digits (tolerance {tol:.0e})" if points
                 else "no sample point where both sides are real and finite")
    proved, v.symbolic = _prove_scalar(g - correct, x, budget)
    v.ok = proved  # the rule of the module docstring: numbers alone never make "correct"
    if not v.ok:
        v.undecided = True
        v.message = (f"not proved: agrees numerically to {worst:.1e} on {len(points)} points; "
                     + ("the symbolic check was over its budget" if "budget" in v.symbolic
                        else "SymPy could not decide the symbolic check"))
    return v


def _checked_scalar(forms: list[sp.Expr], x: sp.Symbol, points, tol: float) -> str:
    """The first form whose numpy spelling, parsed back, equals the derivative at every
    sample point (the same test as the user's formula); "" when none does."""
    for form in forms:
        text = numpy_text(form)
        try:
            back = parse_scalar(text, {x.name: x}, where="correct formula")
            with deadline(EXACT_SECONDS):
                values = [back.xreplace({x: sp.Float(repr(p), SCALAR_DIGITS)}).evalf(SCALAR_DIGITS)
                          for p, _ in points]
        except (SymgradError, *EXHAUSTED, TypeError, ValueError, ArithmeticError):
            continue
        if all(isinstance(b, sp.Number) and _scalar_relerr(b, cv) <= tol
               for b, (_, (_, _, cv)) in zip(values, points, strict=True)):
            return text
    return ""


SCALAR_DIGITS = 30  # scalar mode evaluates at this many digits
SCALAR_RTOL = 10.0 ** -(SCALAR_DIGITS - 10)


def _scalar_relerr(a: sp.Expr, b: sp.Expr) -> float:
    den = max(abs(a), abs(b), sp.Float(1e-30))
    return float(abs(a - b) / den)


def _simplest(e: sp.Expr, budget: float) -> sp.Expr:
    try:
        with deadline(budget):
            s = sp.simplify(e)
    except EXHAUSTED:
        return e
    return s if sp.count_ops(s) < sp.count_ops(e) else e


def _prove_scalar(d: sp.Expr, x: sp.Symbol, budget: float) -> tuple[bool, str]:
    """(True, …) when the difference is proved 0, else (False, why not)."""
    t0 = time.perf_counter()
    note = ""
    try:
        with deadline(budget):
            if d.has(sp.Heaviside):
                d = d.rewrite(sp.Piecewise)
            if d.has(sp.Piecewise):
                ok, note = _piecewise_zero(sp.piecewise_fold(d), x)
            else:
                ok = _zero(d)
    except EXHAUSTED:
        return False, f"not decided (over the {budget:g} s budget)"
    if ok:
        return True, f"proved: simplify(yours − diff) = 0{note} ({time.perf_counter() - t0:.2f} s)"
    return False, "not decided (SymPy could not reduce the difference to 0)"


def _piecewise_zero(pw: sp.Expr, x: sp.Symbol) -> tuple[bool, str]:
    """Every piece that applies on an interval is 0 (pieces on isolated points, where a
    kink's derivative does not exist, are set aside and noted)."""
    pieces = pw.args if isinstance(pw, sp.Piecewise) else [(pw, sp.true)]
    remaining = sp.S.Reals
    note = ""
    for value, cond in pieces:
        try:
            where = remaining if cond is sp.true else cond.as_set().intersect(remaining)
        except (NotImplementedError, TypeError, ValueError):
            return False, ""
        remaining = remaining - where
        if where.is_empty:
            continue
        if isinstance(where, sp.FiniteSet):
            if not all(_zero(value.subs(x, p)) for p in where):
                note = " (except at isolated points, where the derivative does not exist)"
            continue
        if not _zero(value):
            return False, ""
    return True, note


def _sample(x: sp.Symbol, exprs: list[sp.Expr], seed: int):
    """Points where every expression is real and finite: [(x, (values…))]."""
    rng = np.random.default_rng(seed)
    grid = [-2.7, -1.3, -0.6, -0.15, 0.35, 0.8, 1.7, 3.1]
    grid += [float(v) for v in np.round(rng.uniform(-4, 4, size=4), 3)]
    positive = [0.2, 0.55, 1.1, 2.3, 4.7, 7.9]
    out = []
    for p in grid + positive:
        if any(q == p for q, _ in out):
            continue
        vals = []
        for e in exprs:
            try:
                z = e.xreplace({x: sp.Float(repr(p), SCALAR_DIGITS)}).evalf(SCALAR_DIGITS)
            except (TypeError, ValueError, ZeroDivisionError, OverflowError):
                break
            if not (isinstance(z, sp.Number) and z.is_finite):  # complex, nan, zoo, symbolic
                break
            vals.append(z)
        else:
            out.append((p, tuple(vals)))
        if len(out) >= 10:
            break
    return out


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


class _Progress:
    """Reports each stage on stderr once the command has run :data:`PROGRESS_AFTER` s
    (on a terminal: a log or a pipe gets the verdict alone)."""

    def __init__(self, always: bool = False) -> None:
        self.start = time.perf_counter()
        self.on = always or sys.stderr.isatty()

    def __call__(self, stage: str) -> None:
        elapsed = time.perf_counter() - self.start
        if self.on and elapsed >= PROGRESS_AFTER:
            sys.stderr.write(f"symgrad verify: {stage} … ({elapsed:.1f} s so far)\n")
            sys.stderr.flush()


@command("verify")
def cmd_verify(args: argparse.Namespace) -> int:
    wrt = args.wrt if isinstance(args.wrt, str) else ",".join(args.wrt or [])
    if "," in wrt:
        raise SymgradError("--wrt", "verify checks one gradient at a time")
    args.wrt = wrt
    if args.expr is not None:
        if getattr(args, "hvp", False) or getattr(args, "gnvp", False):
            raise SymgradError("verify", "--hvp/--gnvp ask about a network SPEC's product, not "
                               "--expr (for an expression's Hessian: derive --expr … --hessian)")
        if args.spec is not None:
            raise SymgradError("verify", "give a network SPEC or --expr \"…\", not both")
        verdict = verify_scalar(args.expr, args.wrt, args.formula, seed=args.seed)
    else:
        if args.spec is None:
            raise SymgradError(
                "verify", "missing SPEC (a network spec), or use --expr \"…\" for a scalar function"
            )
        product = ("hvp" if getattr(args, "hvp", False) else
                   "gnvp" if getattr(args, "gnvp", False) else None)
        if getattr(args, "hvp", False) and getattr(args, "gnvp", False):
            raise SymgradError("verify", "give --hvp or --gnvp, not both")
        verdict = verify(load_spec(args.spec), args.wrt, args.formula, seed=args.seed,
                         progress=_Progress(), product=product)
    sys.stdout.write(verdict.text())
    return 0 if verdict.ok else 1


