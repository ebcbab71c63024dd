"""Convolution and pooling on feature maps (DESIGN.md, "Layers beyond dense").

A feature map of N images H×W×C is, in the graph, the matrix of N·H·W rows (row-major
n, h, w) and C columns. On it:

* :class:`Im2col` — the patch matrix P (N·Hₒ·Wₒ rows, kh·kw·C columns ordered (i, j, c)
  row-major, zero padding), so that conv2d is Z = im2col(A) W + 𝟏b with the HWIO weight
  seen as its row-major (kh·kw·C)×F reshape (cross-correlation, as torch). Linear; its
  adjoint is :class:`Col2im` (each patch entry added back where it came from: overlapping
  windows add, padding dropped), and the adjoint of that is im2col again.
* :class:`MaxPool` — the maximum of each window, per channel (padding −∞), reading the
  window offset of the first maximum (row-major, as torch routes ties) from
  :class:`PoolArgmax`, a named value of the graph; its rule :class:`MaxPoolBack` routes
  each entry of G to that offset (windows that overlap add).
* :class:`AvgPool` — the mean of each window (padded zeros counted: torch's
  count_include_pad=True); its rule :class:`AvgPoolBack`, its adjoint, spreads G/(kh·kw)
  over each window.
* :class:`Flatten` — (N·H·W)×C → N×(H·W·C), a pure row-major reshape; its rule is its
  inverse :class:`Unflatten`.

The geometry (the input's H, W, the kernel, stride and padding, and Hₒ, Wₒ) is carried by
the op (:class:`Geometry`); the channels are the matrix's columns (a width symbol), so a
proof can take them small. The numpy forms call the generated module's kernels
``im2col, col2im, maxpool, maxpool_back, avgpool, avgpool_back`` (templates/), with
``hw`` the input map's (H, W) and kernel, stride, padding (int, int) tuples.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import sympy as sp

from symgrad.ops.base import Node, Sym, _size

__all__ = ["Geometry", "Im2col", "Col2im", "PoolArgmax", "MaxPool", "MaxPoolBack", "AvgPool",
           "AvgPoolBack", "Flatten", "Unflatten"]


@dataclass(frozen=True)
class Geometry:
    """The spatial geometry of a window op: input H×W, kernel kh×kw, stride, zero padding
    (ph rows above and below, pw columns left and right); Hₒ = ⌊(H + 2ph − kh)/sh⌋ + 1."""

    h: int
    w: int
    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    ph: int = 0
    pw: int = 0

    @property
    def ho(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.sh + 1

    @property
    def wo(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.sw + 1

    @property
    def k(self) -> int:
        """kh·kw, the positions of a window."""
        return self.kh * self.kw

    def args(self) -> str:
        """The kernels' geometry arguments: ``(H, W), (kh, kw), (sh, sw), (ph, pw)``."""
        return (f"({self.h}, {self.w}), ({self.kh}, {self.kw}), ({self.sh}, {self.sw}), "
                f"({self.ph}, {self.pw})")

    # -- index picking (the explicit forms and the definitions at tiny sizes)

    def source(self, oh: int, ow: int, k: int) -> tuple[int, int] | None:
        """The input pixel (h, w) under window offset ``k`` (row-major i·kw + j) of the
        output pixel (oh, ow), None where it is padding."""
        i, j = divmod(k, self.kw)
        y, x = oh * self.sh + i - self.ph, ow * self.sw + j - self.pw
        return (y, x) if 0 <= y < self.h and 0 <= x < self.w else None

    def windows(self, n: int):
        """(output row, input row or None, offset) of every window position, for ``n``
        images: output row n·Hₒ·Wₒ + oh·Wₒ + ow, input row n·H·W + h·W + w."""
        for b in range(n):
            for oh in range(self.ho):
                for ow in range(self.wo):
                    r = (b * self.ho + oh) * self.wo + ow
                    for k in range(self.k):
                        src = self.source(oh, ow, k)
                        yield r, None if src is None else (b * self.h + src[0]) * self.w + src[1], k

    # -- numpy (a plain reference: loops over the kh·kw offsets, none over pixels)

    def padded(self, a: np.ndarray, fill: float = 0.0) -> np.ndarray:
        """(N·H·W, C) → the padded maps (N, H + 2ph, W + 2pw, C)."""
        c = a.shape[1]
        maps = a.reshape(-1, self.h, self.w, c)
        return np.pad(maps, ((0, 0), (self.ph, self.ph), (self.pw, self.pw), (0, 0)),
                      constant_values=fill)

    def view(self, padded: np.ndarray, k: int) -> np.ndarray:
        """The (N, Hₒ, Wₒ, C) entries under window offset ``k`` of every output pixel."""
        i, j = divmod(k, self.kw)
        return padded[:, i:i + self.sh * (self.ho - 1) + 1:self.sh,
                      j:j + self.sw * (self.wo - 1) + 1:self.sw, :]

    def cropped(self, padded: np.ndarray) -> np.ndarray:
        """The padded maps' interior as (N·H·W, C)."""
        inner = padded[:, self.ph:self.ph + self.h, self.pw:self.pw + self.w, :]
        return np.ascontiguousarray(inner).reshape(-1, padded.shape[3])


def _images(x: Node, g: Geometry, env) -> tuple[int, int]:
    """(N, C) of the map ``x`` at the explicit sizes."""
    return _size(x.shape[0], env) // (g.h * g.w), _size(x.shape[1], env)


def _out_rows(x: Node, g: Geometry) -> sp.Expr:
    return x.shape[0] * sp.Rational(g.ho * g.wo, g.h * g.w)


def _in_rows(x: Node, g: Geometry) -> sp.Expr:
    return x.shape[0] * sp.Rational(g.h * g.w, g.ho * g.wo)


def _fn_text(p, name: str, *args: Node) -> str:
    return f"{name}({', '.join(p._print(a) for a in args)})"


def _fn_latex(p, name: str, *args: Node) -> str:
    return rf"\operatorname{{{name}}}\left({', '.join(p._print(a) for a in args)}\right)"


def _work(st, op: Node, a: str, fill) -> str:
    """``, work=pad_A`` — the padded copy of the map ``a`` that a kernel fills (its border
    set once, when the workspace is made: zeros, or −∞ for max pooling), or nothing
    without padding."""
    g = op.geom
    if not (g.ph or g.pw):
        return ""
    shape = (op.x.shape[0] / (g.h * g.w), g.h + 2 * g.ph, g.w + 2 * g.pw, op.x.shape[1])
    kind = "zeros" if fill == 0 else "neginf"
    name = st.buffer(f"pad_{a}_{kind}", shape, kind,
                     note=f"{a} in a border of {'zeros' if fill == 0 else '−∞'} (set once)")
    return f", work={name}"


def _mask(st, arg: Node, pooled) -> str:
    """The bool (2, N·Hₒ·Wₒ, C) scratch that maxpool and maxpool_back share for ``arg``."""
    return st.buffer(f"mask_{arg.name}", (2, *pooled), "bool",
                     note="maxpool's scratch")


def _map(code: str, x: Node, lw) -> str:
    """The operand ``code`` of ``x`` as the kernels take a map, (N·H·W, C): the data X is
    kept as the module's (N, H·W·C) rows, so it is read through a reshape (a view)."""
    if isinstance(x, Sym) and x.role == "data":
        return f"{code}.reshape(-1, {lw.size(x.shape[1])})"
    return code


def _call(lw, name: str, g: Geometry, *args: Node) -> str:
    return f"{name}({', '.join(_map(lw.expr(a, 0), a, lw) for a in args)}, {g.args()})"


IM2COL_LEGEND = ("im2col(A) the patch matrix of the map A (a row per output pixel, its window's "
                 "kh·kw·C entries in (i, j, c) order, zero padding), so that conv2d is "
                 "Z = im2col(A) W + 𝟏b and ∂L/∂W_l = im2col(A)ᵀ δ_l is the (kh·kw·C)×F matrix "
                 "reshaped row-major to W_l's (kh, kw, C, F); col2im(P) its adjoint (each patch "
                 "entry added back to its pixel: overlapping windows add, padding dropped)")


# --------------------------------------------------------------------------
# im2col and col2im
# --------------------------------------------------------------------------


class _LinearMap(Node):
    """A map linear in its first field (the others fixed: a geometry, a pixel count): its
    tangent is the same map of that field's tangent."""

    def jvp(self, t, out):
        return None if t[0] is None else replace(self, **{fields(self)[0].name: t[0]})


@dataclass(frozen=True, eq=True)
class Im2col(_LinearMap):
    """P = im2col(A): row n·Hₒ·Wₒ + oh·Wₒ + ow holds the window of output pixel (oh, ow)
    of image n, entry (i·kw + j)·C + c = A[n, oh·sh + i − ph, ow·sw + j − pw, c] (0 in the
    padding).   ∂L/∂A = col2im(G) (its adjoint: overlapping windows add)."""

    x: Node
    geom: Geometry

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (_out_rows(self.x, self.geom), self.geom.k * self.x.shape[1])

    def vjp(self, g, out):
        return (Col2im(g, self.geom),)

    rule = "im2col"
    law = ("P = im2col(A), ∂L/∂A = col2im(∂L/∂P) (each patch entry goes back to its pixel; "
           "overlapping windows add)")
    legend = IM2COL_LEGEND

    def explicit(self, env):
        a = self.x.explicit(env)
        n, c = _images(self.x, self.geom, env)
        g = self.geom
        out = sp.zeros(n * g.ho * g.wo, g.k * c)
        for r, src, k in g.windows(n):
            if src is not None:
                for ch in range(c):
                    out[r, k * c + ch] = a[src, ch]
        return out

    def numeric(self, env):
        a, g = self.x.numeric(env), self.geom
        padded = g.padded(a)
        cols = np.stack([g.view(padded, k) for k in range(g.k)], axis=3)  # N, Ho, Wo, k, C
        return cols.reshape(-1, g.k * a.shape[1])

    def text(self, p):
        return _fn_text(p, "im2col", self.x)

    def latex(self, p):
        return _fn_latex(p, "im2col", self.x)

    def numpy(self, lw):
        return _call(lw, "im2col", self.geom, self.x), lw.ATOM

    kernels = ("im2col",)
    flat_data = True  # reads the image batch X as the module holds it (through _map)
    kept = True  # one patch matrix per step: Z's product and ∂L/∂W read the same P

    def into(self, st, dest):
        with st.operand(self.x) as a:
            st.emit(f"im2col({_map(a, self.x, st)}, {self.geom.args()}, out={dest}"
                    f"{_work(st, self, a, 0)})")


@dataclass(frozen=True, eq=True)
class Col2im(_LinearMap):
    """A = col2im(P), the adjoint of im2col: each entry of the patch matrix added to the
    pixel it was taken from (windows that overlap add; padding dropped).
    ∂L/∂P = im2col(G)."""

    x: Node
    geom: Geometry

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (_in_rows(self.x, self.geom), self.x.shape[1] / self.geom.k)

    def vjp(self, g, out):
        return (Im2col(g, self.geom),)

    rule = "col2im"
    law = "A = col2im(P), ∂L/∂P = im2col(∂L/∂A) (im2col and col2im are adjoint)"
    legend = IM2COL_LEGEND

    def explicit(self, env):
        pm = self.x.explicit(env)
        g = self.geom
        n, c = _size(self.x.shape[0], env) // (g.ho * g.wo), _size(self.x.shape[1], env) // g.k
        out = sp.zeros(n * g.h * g.w, c)
        for r, src, k in g.windows(n):
            if src is not None:
                for ch in range(c):
                    out[src, ch] += pm[r, k * c + ch]
        return out

    def numeric(self, env):
        pm, g = self.x.numeric(env), self.geom
        c = pm.shape[1] // g.k
        cols = pm.reshape(-1, g.ho, g.wo, g.k, c)
        padded = np.zeros((cols.shape[0], g.h + 2 * g.ph, g.w + 2 * g.pw, c), pm.dtype)
        for k in range(g.k):
            g.view(padded, k)[...] += cols[:, :, :, k, :]
        return g.cropped(padded)

    def text(self, p):
        return _fn_text(p, "col2im", self.x)

    def latex(self, p):
        return _fn_latex(p, "col2im", self.x)

    def numpy(self, lw):
        return _call(lw, "col2im", self.geom, self.x), lw.ATOM

    kernels = ("col2im",)

    def into(self, st, dest):
        with st.operand(self.x) as a:
            st.emit(f"col2im({a}, {self.geom.args()}, out={dest})")


# --------------------------------------------------------------------------
# Max pooling
# --------------------------------------------------------------------------


def first_argmax(values: list) -> int:
    """The index of the first maximum of ``values`` (numbers; None for padding)."""
    best = None
    for k, v in enumerate(values):
        if v is not None and (best is None or v > values[best]):
            best = k
    return best


@dataclass(frozen=True, eq=True)
class PoolArgmax(Node):
    """arg = the window offset k = i·kw + j (0 … kh·kw − 1) of the first maximum of each
    window of A, per channel (padding −∞; ties go to the first in row-major order, as
    torch). Not differentiable (piecewise constant): it only routes max pooling's rule.

    At symbolic entries (the structure proof) the choice cannot be read off the values:
    it is a fixed valid offset per window and channel (the rule is proved for any fixed
    routing, i.e. where the maxima are unique), and the layer's own claim proves the
    routing against the maximum at a point with unique maxima."""

    x: Node
    geom: Geometry

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (_out_rows(self.x, self.geom), self.x.shape[1])

    def vjp(self, g, out):
        return (None,)

    def jvp(self, t, out):
        return None  # piecewise constant

    legend = ("arg_l the offset i·kw + j of the first maximum of each window of maxpool layer "
              "l (row-major, as torch breaks ties); maxpool(A) the maximum of each window "
              "(padding −∞); route(G, arg) puts each entry of G at the first maximum of its "
              "window, zero elsewhere (overlapping windows add)")

    def explicit(self, env):
        a = self.x.explicit(env)
        n, c = _images(self.x, self.geom, env)
        g = self.geom
        out = sp.zeros(n * g.ho * g.wo, c)
        windows: dict[int, list] = {}
        for r, src, _k in g.windows(n):
            windows.setdefault(r, []).append(src)
        for r, srcs in windows.items():
            for ch in range(c):
                values = [None if s is None else a[s, ch] for s in srcs]
                if all(v is None or v.is_number for v in values):
                    out[r, ch] = first_argmax(values)
                else:  # symbolic: a fixed valid offset, varying over windows and channels
                    valid = [k for k, v in enumerate(values) if v is not None]
                    out[r, ch] = valid[(r + ch) % len(valid)]
        return out

    def numeric(self, env):
        return _maxpool(self.x.numeric(env), self.geom)[1]

    def text(self, p):
        return _fn_text(p, "argmax", self.x)

    def latex(self, p):
        return _fn_latex(p, "argmax", self.x)

    def numpy(self, lw):
        call, i = self.numpy_call(lw)
        return f"{call}[{i}]", lw.ATOM

    def numpy_call(self, lw):
        """maxpool's second entry: one call gives the pooled map and this arg-max."""
        return _call(lw, "maxpool", self.geom, self.x), 1

    flat_data = True  # reads the image batch X as the module holds it (through _map)
    kernels = ("maxpool",)

    def into(self, st, dest):
        """Nothing of its own: the kernel maxpool(A, …, out=(pooled, arg)) writes the
        maximum and its offset in one pass, and the graph's only readers of arg are the
        pooled value's equation (next) and its rule, so :class:`MaxPool` computes both."""
        st.buffers[dest].kind = "int8"  # offsets 0 … kh·kw − 1
        st.notes.append("  computed with the pooled map below: maxpool writes both")


def _maxpool(a: np.ndarray, g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(pooled, first arg-max offset) by a pass over the kh·kw offsets (strict >: the first
    maximum is kept)."""
    padded = g.padded(a, -np.inf)
    best = g.view(padded, 0).copy()
    arg = np.zeros(best.shape, np.int64)
    for k in range(1, g.k):
        v = g.view(padded, k)
        better = v > best
        best = np.where(better, v, best)
        arg = np.where(better, k, arg)
    c = a.shape[1]
    return best.reshape(-1, c), arg.reshape(-1, c)


@dataclass(frozen=True, eq=True)
class MaxPool(Node):
    """Z = maxpool(A): the maximum of each window, per channel (padding −∞); ``arg`` is the
    graph's name of the windows' first arg-max (:class:`PoolArgmax`), read as a ref.
    ∂L/∂A = route(G, arg): G's entry to the first maximum of its window (:class:`MaxPoolBack`)."""

    x: Node
    arg: Node
    geom: Geometry
    at_arg: bool = False  # x is not the map arg was taken of (a tangent): pick at arg

    @property
    def children(self):
        return (self.x,)

    @property
    def refs(self):
        return (self.arg,)

    @property
    def shape(self):
        return (_out_rows(self.x, self.geom), self.x.shape[1])

    def vjp(self, g, out):
        return (MaxPoolBack(g, self.arg, self.geom),)

    def jvp(self, t, out):
        """At a fixed arg-max (almost everywhere): the tangent's entries at arg."""
        return None if t[0] is None else MaxPool(t[0], self.arg, self.geom, at_arg=True)

    rule = "maxpool"
    law = ("Z = maxpool(A), ∂L/∂A = route(∂L/∂Z, arg) (each entry to the first maximum of "
           "its window; overlapping windows add)")
    legend = PoolArgmax.legend

    def explicit(self, env):
        a, arg = self.x.explicit(env), env[self.arg.name]
        n, c = _images(self.x, self.geom, env)
        g = self.geom
        out = sp.zeros(n * g.ho * g.wo, c)
        for r, src, k in g.windows(n):
            for ch in range(c):
                if src is not None and int(arg[r, ch]) == k:
                    out[r, ch] = a[src, ch]
        return out

    def numeric(self, env):
        """The maximum of each window; where the graph's arg-max is known, the entries it
        selects (the same values for the forward; the selection for a tangent)."""
        a = self.x.numeric(env)
        if self.arg.name not in env:
            return _maxpool(a, self.geom)[0]
        g, arg = self.geom, np.asarray(env[self.arg.name])
        padded = g.padded(a)
        grid = arg.reshape(-1, g.ho, g.wo, a.shape[1])
        return sum(np.where(grid == k, g.view(padded, k), 0.0) for k in range(g.k)).reshape(
            -1, a.shape[1])

    def text(self, p):
        return _fn_text(p, "maxpool", self.x)

    def latex(self, p):
        return _fn_latex(p, "maxpool", self.x)

    def numpy(self, lw):
        if self.at_arg:  # each window's entry at offset arg: its patch row, column arg
            g, c = self.geom, lw.size(self.x.shape[1])
            patches = f"im2col({_map(lw.expr(self.x, 0), self.x, lw)}, {g.args()})"
            return (f"np.take_along_axis({patches}.reshape(-1, {g.k}, {c}), "
                    f"{lw.expr(self.arg, lw.ATOM)}[:, None].astype(np.intp), 1)[:, 0]"), lw.ATOM
        call, i = self.numpy_call(lw)
        return f"{call}[{i}]", lw.ATOM

    def numpy_call(self, lw):
        """maxpool's first entry (its second is the arg-max); a tangent picked at arg is
        an expression of its own."""
        return None if self.at_arg else (_call(lw, "maxpool", self.geom, self.x), 0)

    flat_data = True  # reads the image batch X as the module holds it (through _map)
    @property
    def kernels(self):
        return ("im2col",) if self.at_arg else ("maxpool",)

    def into(self, st, dest):
        with st.operand(self.x) as a, st.operand(self.arg) as arg:
            st.emit(f"maxpool({_map(a, self.x, st)}, {self.geom.args()}, out=({dest}, {arg})"
                    f"{_work(st, self, a, '-inf')}, mask={_mask(st, self.arg, self.shape)})")


@dataclass(frozen=True, eq=True)
class MaxPoolBack(Node):
    """∂L/∂A = route(G, arg): entry (r, c) of G added at the input pixel under window offset
    arg[r, c] of output pixel r, zero elsewhere (windows that overlap add). Linear in G."""

    g: Node
    arg: Node
    geom: Geometry

    @property
    def children(self):
        return (self.g,)

    @property
    def refs(self):
        return (self.arg,)

    @property
    def shape(self):
        return (_in_rows(self.g, self.geom), self.g.shape[1])

    def vjp(self, g, out):  # pragma: no cover - backward-only
        raise NotImplementedError("MaxPoolBack is backward-only")

    def jvp(self, t, out):
        """Linear in G (arg fixed)."""
        return None if t[0] is None else MaxPoolBack(t[0], self.arg, self.geom)

    def explicit(self, env):
        gm, arg = self.g.explicit(env), env[self.arg.name]
        g = self.geom
        n, c = _size(self.g.shape[0], env) // (g.ho * g.wo), _size(self.g.shape[1], env)
        out = sp.zeros(n * g.h * g.w, c)
        for r, src, k in g.windows(n):
            for ch in range(c):
                if src is not None and int(arg[r, ch]) == k:
                    out[src, ch] += gm[r, ch]
        return out

    def numeric(self, env):
        gm, arg, g = self.g.numeric(env), np.asarray(self.arg.numeric(env)), self.geom
        c = gm.shape[1]
        grid, args = gm.reshape(-1, g.ho, g.wo, c), arg.reshape(-1, g.ho, g.wo, c)
        padded = np.zeros((grid.shape[0], g.h + 2 * g.ph, g.w + 2 * g.pw, c), gm.dtype)
        for k in range(g.k):
            g.view(padded, k)[...] += np.where(args == k, grid, 0)
        return g.cropped(padded)

    def text(self, p):
        return _fn_text(p, "route", self.g, self.arg)

    def latex(self, p):
        return _fn_latex(p, "route", self.g, self.arg)

    def numpy(self, lw):
        return (f"maxpool_back({lw.expr(self.g, 0)}, {lw.expr(self.arg, 0)}, "
                f"{self.geom.args()})"), lw.ATOM

    kernels = ("maxpool_back",)

    def into(self, st, dest):
        with st.operand(self.g) as gm, st.operand(self.arg) as arg:
            st.emit(f"maxpool_back({gm}, {arg}, {self.geom.args()}, out={dest}, "
                    f"mask={_mask(st, self.arg, self.g.shape)})")


# --------------------------------------------------------------------------
# Average pooling
# --------------------------------------------------------------------------


AVG_LEGEND = ("avgpool(A) the mean of each window (padded zeros counted, as torch's "
              "count_include_pad); spread(G) its adjoint: each entry of G divided by kh·kw "
              "and added at every position of its window (overlapping windows add)")


@dataclass(frozen=True, eq=True)
class AvgPool(_LinearMap):
    """Z = avgpool(A): the sum of each window / (kh·kw), per channel (zero padding counted).
    ∂L/∂A = spread(G) (:class:`AvgPoolBack`, its adjoint)."""

    x: Node
    geom: Geometry

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (_out_rows(self.x, self.geom), self.x.shape[1])

    def vjp(self, g, out):
        return (AvgPoolBack(g, self.geom),)

    rule = "avgpool"
    law = ("Z = avgpool(A), ∂L/∂A = spread(∂L/∂Z) (each entry / (kh·kw) to every position of "
           "its window; overlapping windows add)")
    legend = AVG_LEGEND

    def explicit(self, env):
        a = self.x.explicit(env)
        n, c = _images(self.x, self.geom, env)
        g = self.geom
        out = sp.zeros(n * g.ho * g.wo, c)
        for r, src, _k in g.windows(n):
            if src is not None:
                for ch in range(c):
                    out[r, ch] += a[src, ch] / g.k
        return out

    def numeric(self, env):
        a, g = self.x.numeric(env), self.geom
        padded = g.padded(a)
        total = sum(g.view(padded, k) for k in range(g.k))
        return (total / g.k).reshape(-1, a.shape[1])

    def text(self, p):
        return _fn_text(p, "avgpool", self.x)

    def latex(self, p):
        return _fn_latex(p, "avgpool", self.x)

    def numpy(self, lw):
        return _call(lw, "avgpool", self.geom, self.x), lw.ATOM

    flat_data = True  # reads the image batch X as the module holds it (through _map)
    kernels = ("avgpool",)

    def into(self, st, dest):
        with st.operand(self.x) as a:
            st.emit(f"avgpool({_map(a, self.x, st)}, {self.geom.args()}, out={dest}"
                    f"{_work(st, self, a, 0)})")


@dataclass(frozen=True, eq=True)
class AvgPoolBack(_LinearMap):
    """∂L/∂A = spread(G): G[r, c]/(kh·kw) added at every input pixel of window r (padding
    dropped; overlapping windows add), the adjoint of avgpool. ∂L/∂G = avgpool(H)."""

    g: Node
    geom: Geometry

    @property
    def children(self):
        return (self.g,)

    @property
    def shape(self):
        return (_in_rows(self.g, self.geom), self.g.shape[1])

    def vjp(self, g, out):
        return (AvgPool(g, self.geom),)

    def explicit(self, env):
        gm = self.g.explicit(env)
        g = self.geom
        n, c = _size(self.g.shape[0], env) // (g.ho * g.wo), _size(self.g.shape[1], env)
        out = sp.zeros(n * g.h * g.w, c)
        for r, src, _k in g.windows(n):
            if src is not None:
                for ch in range(c):
                    out[src, ch] += gm[r, ch] / g.k
        return out

    def numeric(self, env):
        gm, g = self.g.numeric(env), self.geom
        c = gm.shape[1]
        grid = gm.reshape(-1, g.ho, g.wo, c) / g.k
        padded = np.zeros((grid.shape[0], g.h + 2 * g.ph, g.w + 2 * g.pw, c), gm.dtype)
        for k in range(g.k):
            g.view(padded, k)[...] += grid
        return g.cropped(padded)

    def text(self, p):
        return _fn_text(p, "spread", self.g)

    def latex(self, p):
        return _fn_latex(p, "spread", self.g)

    def numpy(self, lw):
        return _call(lw, "avgpool_back", self.geom, self.g), lw.ATOM

    kernels = ("avgpool_back",)

    def into(self, st, dest):
        with st.operand(self.g) as gm:
            st.emit(f"avgpool_back({gm}, {self.geom.args()}, out={dest})")


# --------------------------------------------------------------------------
# Flatten
# --------------------------------------------------------------------------


FLATTEN_LEGEND = ("flatten(A) each image's H·W rows of the map A side by side in one row "
                  "(row-major h, w, c: NHWC), unflatten(G) its inverse")


@dataclass(frozen=True, eq=True)
class Flatten(_LinearMap):
    """Z = flatten(A): the (N·H·W)×C map as N×(H·W·C), row n = the rows n·H·W … of A side
    by side (a row-major reshape, no copy).   ∂L/∂A = unflatten(G), the inverse reshape."""

    x: Node
    pixels: int  # H·W

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (self.x.shape[0] / self.pixels, self.pixels * self.x.shape[1])

    def vjp(self, g, out):
        return (Unflatten(g, self.pixels),)

    flat_data = True  # reads the image batch X as the module holds it (through _map)
    rule = "flatten"
    law = "Z = flatten(A), ∂L/∂A = unflatten(∂L/∂Z) (a reshape: its inverse)"
    legend = FLATTEN_LEGEND

    def explicit(self, env):
        a = self.x.explicit(env)
        return a.reshape(a.rows // self.pixels, a.cols * self.pixels)

    def numeric(self, env):
        a = self.x.numeric(env)
        return a.reshape(a.shape[0] // self.pixels, -1)

    def text(self, p):
        return _fn_text(p, "flatten", self.x)

    def latex(self, p):
        return _fn_latex(p, "flatten", self.x)

    def numpy(self, lw):
        return f"{lw.expr(self.x, lw.ATOM)}.reshape(-1, {lw.size(self.shape[1])})", lw.ATOM

    def into(self, st, dest):
        """A view of its input's buffer (a row-major reshape: no copy), else a copy."""
        if st.view_of(dest, self.x):
            st.notes.append("  a view of the same memory: nothing computed")
            return
        with st.operand(self.x) as a:
            st.emit(f"np.copyto({dest}, {a}.reshape({dest}.shape))")


@dataclass(frozen=True, eq=True)
class Unflatten(_LinearMap):
    """A = unflatten(G): N×(H·W·C) back to the (N·H·W)×C map (the inverse reshape).
    ∂L/∂G = flatten(H)."""

    x: Node
    pixels: int

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (self.x.shape[0] * self.pixels, self.x.shape[1] / self.pixels)

    def vjp(self, g, out):
        return (Flatten(g, self.pixels),)

    legend = FLATTEN_LEGEND

    def explicit(self, env):
        a = self.x.explicit(env)
        return a.reshape(a.rows * self.pixels, a.cols // self.pixels)

    def numeric(self, env):
        a = self.x.numeric(env)
        return a.reshape(a.shape[0] * self.pixels, -1)

    def text(self, p):
        return _fn_text(p, "unflatten", self.x)

    def latex(self, p):
        return _fn_latex(p, "unflatten", self.x)

    def numpy(self, lw):
        return f"{lw.expr(self.x, lw.ATOM)}.reshape(-1, {lw.size(self.shape[1])})", lw.ATOM

    def into(self, st, dest):
        """A view of its input's buffer (a row-major reshape: no copy), else a copy."""
        if st.view_of(dest, self.x):
            st.notes.append("  a view of the same memory: nothing computed")
            return
        with st.operand(self.x) as a:
            st.emit(f"np.copyto({dest}, {a}.reshape({dest}.shape))")
