"""The layer types: one class each, declaring everything the package knows about it.

A layer type (``type = "batchnorm"`` on a ``[[layer]]`` table) is one :class:`LayerKind`
subclass here, registered in :data:`KINDS`. Its class holds, in one place:

* the spec: its keys (besides ``type``), their defaults and validation, and what to say
  when another type's key is given to it (:meth:`LayerKind.foreign`);
* its width (from its inputs' widths), its trainable parameters (names, shapes,
  initialization) and buffers (batchnorm's running statistics and their update);
* the graph it builds (:meth:`LayerKind.build`: the assignments of its ops, and the
  inference form where that differs);
* its named intermediates (μ, σ², X̂; a dropout mask M) and scalars (ε, p), which verify,
  exercise and the notation line read;
* its proof instance (the batch and widths at which ``--prove`` proves its op, and the
  words of the claim), its picture label, its short forms in network lines, and the words
  of check's training-mode note.

Every stage after spec asks ``layer.kind`` (the class of a :class:`~symgrad.spec.Layer`)
and never branches on the type's name. Adding a layer type is one class and one entry in
:data:`KINDS`. (DESIGN.md, "Layers beyond dense".)

The value checks at the top are the spec's too (spec imports them from here).
"""

from __future__ import annotations

import difflib
import math
from typing import Any, ClassVar

import sympy as sp

from symgrad import naming
from symgrad.errors import SymgradError
from symgrad.ops import (
    Add,
    AvgPool,
    BiasAdd,
    Broadcast,
    ColSum,
    Concat,
    Dropout,
    Flatten,
    Geometry,
    Hadamard,
    Im2col,
    Map,
    MatMul,
    MaxPool,
    Node,
    PoolArgmax,
    RowSum,
    Scale,
    Standardize,
    Sym,
)
from symgrad.ops.normalization import exact

__all__ = ["KINDS", "LAYER_TYPES", "PARAM_FAMILIES", "PLANNED_TYPES", "UNSET", "LayerKind",
           "kind_of", "kinds_with"]

MAX_UNITS = 1_000_000
MAX_INPUTS = 64
PLANNED_TYPES: tuple[str, ...] = ()  # in DESIGN.md, not yet here (none left)
MAX_KERNEL = 1024  # kernel, stride and padding of the window layers (each side)


# --------------------------------------------------------------------------
# Value checks (one SymgradError each)
# --------------------------------------------------------------------------


def suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_int(value: Any, where: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SymgradError(where, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise SymgradError(where, f"must be between {lo} and {hi}, got {value}")
    return value


def check_float(value: Any, where: str, lo: float, hi: float = math.inf, *, open_lo=False,
                open_hi=False, why: str = "") -> float:
    """value as a float in [lo, hi] (open at an end where asked); ``why`` says what the
    value at an open end would do."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SymgradError(where, f"must be a number, got {value!r}")
    value = float(value)
    if (not math.isfinite(value) or value < lo or (open_lo and value == lo) or value > hi
            or (open_hi and value == hi)):
        bound = f"> {lo}" if open_lo else f">= {lo}"
        upper = (f" and {'<' if open_hi else '<='} {hi}") if math.isfinite(hi) else ""
        because = f" ({why})" if why and value in (lo, hi) else ""  # at an open end
        raise SymgradError(where, f"must be a finite number {bound}{upper}, got {value!r}{because}")
    return value


def article(kind: str) -> str:
    """The article for a layer type: "an add layer", "a dense layer"."""
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _words(names: list[str]) -> str:
    """a, b and c."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _check_inputs(names: Any, kind: str, where: str, does: str) -> tuple[str, ...]:
    """The value names of a joining layer (add, concat): a list of at least two strings."""
    if names is None:
        raise SymgradError(where, f"missing; {article(kind)} layer names the values it {does}: "
                                  "inputs = [\"A1\", \"X\", ...]")
    if isinstance(names, str):
        raise SymgradError(where, f"must be a list of value names, got {names!r}; write "
                                  f"inputs = [\"{names}\", ...] with at least two names")
    if not isinstance(names, list | tuple):
        raise SymgradError(where, f"must be a list of value names (inputs = [\"A1\", \"X\"]), "
                                  f"got {names!r}")
    for i, name in enumerate(names, 1):
        if not isinstance(name, str):
            raise SymgradError(f"{where}[{i}]", f"must be a value name in quotes (\"X\", "
                                                f"\"A1\", ...), got {name!r}")
    if len(names) < 2:
        raise SymgradError(where, f"{article(kind)} layer needs at least two values, got "
                                  f"{len(names)}; list them as inputs = [\"A1\", \"X\", ...]")
    if len(names) > MAX_INPUTS:
        raise SymgradError(where, f"at most {MAX_INPUTS} inputs, got {len(names)}")
    return tuple(names)


# The keys only some types take, in the order they are checked, with their defaults.
OPTIONAL_KEYS = ("units", "input", "inputs", "eps", "momentum", "p", "filters", "kernel",
                 "stride", "padding")
DEFAULTS = {"eps": 1e-5, "momentum": 0.1, "p": 0.5}


class _Unset:
    """The default of a key with a default (eps, momentum, p) on a Layer not yet checked:
    "not given", which None is not (torch's momentum=None is a mode of its own)."""

    def __repr__(self) -> str:
        return "<not given>"


UNSET: Any = _Unset()

#: what to say about None given for a key a type takes (the default is its leaving out)
NONE_GIVEN = {
    "eps": "eps=None is not a value; give a number in (0, 1] (torch's default 1e-05), or "
           "leave eps out",
    "momentum": "momentum=None (torch's cumulative average) is not supported; give a number "
                "in [0, 1] (torch's default 0.1)",
    "p": "p=None is not a value; give a number in [0, 1) (torch's default 0.5), or leave p out",
}


def _check_eps(value, where):
    return check_float(value, where, 0.0, 1.0, open_lo=True,
                       why="eps keeps the division by the standard deviation finite")


def _check_momentum(value, where):
    return check_float(value, where, 0.0, 1.0)


def _check_p(value, where):
    return check_float(value, where, 0.0, 1.0, open_hi=True,
                       why="p = 1 drops every value, and 1/(1 - p) is infinite")


# --------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------


class LayerKind:
    """A layer type. Subclasses set the class attributes and override the methods their
    type needs; the base class is a layer of the width of its one input, without
    parameters, that the network line names by its type."""

    name: ClassVar[str]
    keys: ClassVar[tuple[str, ...]]  # the keys it takes besides type (activation always)
    #: the first wave's layer (dense): a network of these alone prints and proves as always
    plain: ClassVar[bool] = False
    joins: ClassVar[bool] = False  # reads ``inputs`` (several values) rather than ``input``
    params: ClassVar[tuple[str, ...]] = ()  # parameter families: W, b; gamma, beta
    statistics: ClassVar[tuple[str, ...]] = ()  # named intermediates besides Z and A
    adjoints: ClassVar[tuple[str, ...]] = ()  # intermediates whose cotangent one may ask
    masks: ClassVar[tuple[str, ...]] = ()  # inputs of the step drawn at random (M)
    scalars: ClassVar[tuple[str, ...]] = ()  # its constants by name in verify (eps, p)
    buffers: ClassVar[tuple[str, ...]] = ()  # running statistics (not trained)
    batch_statistics: ClassVar[bool] = False  # its training value couples the batch's rows
    #: the intermediate whose rule ``--prove`` proves on its own ("" for none: dense)
    proof_target: ClassVar[str] = ""
    proof_batch: ClassVar[int] = 2  # N of the tiny instances (proof, verify)
    proof_row: ClassVar[int] = 0  # the features of a row its op's claim needs (0: 2 each)
    proof_note: ClassVar[str] = ""  # what the op's claim exercises
    statistics_over: ClassVar[str] = ""  # the notation line: which entries μ, σ² average
    sum_rule: ClassVar[tuple[str, str] | None] = None  # its op's rule, named for the layer
    refusals: ClassVar[dict[str, str]] = {}  # own words for another type's key

    # --- the spec

    @classmethod
    def validate(cls, layer, where: str) -> None:
        """Check and complete ``layer`` (a :class:`~symgrad.spec.Layer` of this type):
        no key of another type, the defaults filled in, each key's value checked."""
        for key in OPTIONAL_KEYS:
            value = getattr(layer, key)
            if key in cls.keys:
                if value is UNSET:
                    object.__setattr__(layer, key, DEFAULTS[key])
                elif value is None and key in NONE_GIVEN:
                    raise SymgradError(f"{where}.{key}", NONE_GIVEN[key])
            elif value is UNSET:
                object.__setattr__(layer, key, None)  # not taken: None, as not given
            elif value is not None:
                raise SymgradError(f"{where}.{key}", cls.foreign(key))
        cls.check_keys(layer, where)

    @classmethod
    def check_keys(cls, layer, where: str) -> None:
        if layer.input is not None and not isinstance(layer.input, str):
            raise SymgradError(f"{where}.input", f"must be a value name in quotes (input = \"X\", "
                                                 f"input = \"A1\", ...), got {layer.input!r}")
        for key, check in (("eps", _check_eps), ("momentum", _check_momentum), ("p", _check_p)):
            if key in cls.keys:
                object.__setattr__(layer, key, check(getattr(layer, key), f"{where}.{key}"))

    @classmethod
    def foreign(cls, key: str) -> str:
        """What to say about ``key`` on a layer of this type, which does not take it."""
        if key in cls.refusals:
            return cls.refusals[key]
        kind = cls.name
        this = f"{article(kind)} layer"
        takers = _words([k.name for k in KINDS.values() if key in k.keys])
        if key == "units":
            return f"only {takers} layers take units; {this} has the width of its input"
        if key in ("eps", "momentum"):
            return f"only {takers} layers take {key}; remove it from this {kind} layer"
        if key == "p":
            return (f"only {takers} layers take p; to drop values, add a layer with type = "
                    f"\"{takers}\" and p = ... after this {kind} layer")
        if key == "input":
            return f"{this} names its values in inputs = [\"A1\", \"X\", ...], not input"
        if key == "inputs":
            return f"only {takers} layers take inputs; use input = \"NAME\" for one value"
        if key in ("filters", "kernel", "stride", "padding"):
            return f"only {takers} layers take {key}; remove it from this {kind} layer"
        raise AssertionError(key)  # pragma: no cover - OPTIONAL_KEYS lists every key

    @classmethod
    def width(cls, layer, names: tuple[str, ...], widths: list[int], where: str) -> int:
        """The width of its output, from its inputs' ``widths`` (checked here)."""
        return widths[0]

    @classmethod
    def image(cls, layer, names: tuple[str, ...], images: list, widths: list[int],
              where: str) -> tuple[int, int, int] | None:
        """The image geometry (H, W, C) of its output, None for a flat value, from its
        inputs' ``images`` (each (H, W, C) or None; checked here): by default that of its
        one input (an elementwise type: dropout, batchnorm as torch's BatchNorm2d)."""
        return images[0]

    @classmethod
    def resized(cls, layer, n: int) -> dict:
        """The keys that give it output width ``n`` (a tiny proof instance): dense units,
        conv2d filters; none for the types whose width follows from their inputs."""
        return {"units": n if "units" in cls.keys else None}

    @classmethod
    def param_shapes(cls, l: int, fan_in: int, n: int, layer=None) -> dict[str, tuple[int, ...]]:
        """Its trainable parameters (layer ``l``; input width ``fan_in``, output ``n``)."""
        return {f"{family}{l}": (n,) for family in cls.params}

    @classmethod
    def buffer_shapes(cls, l: int, n: int) -> dict[str, tuple[int, ...]]:
        return {f"{name}{l}": (n,) for name in cls.buffers}

    @classmethod
    def init_lines(cls, l: int, layer, fan_in: int, n: int) -> list[str]:
        """The generated init_params' lines of its parameters and buffers."""
        return []

    @classmethod
    def weight_init(cls, layer) -> str | None:
        """The initialization of its weight matrix ("he", "glorot"), None without one."""
        return None

    # --- the graph

    @classmethod
    def build(cls, l: int, layer, srcs: list[Sym], n: sp.Symbol, g) -> tuple[Node, Node]:
        """Z_l's right-hand side and its inference form. ``g`` (the graph builder) takes
        parameters, buffers, masks and the assignments before Z_l (``g.assign``)."""
        raise NotImplementedError  # pragma: no cover

    @classmethod
    def proof_point(cls, op, env: dict) -> dict | None:
        """For the proof: values of the input's entry symbols at which its claim is decided
        (max pooling: a point with every window's maximum unique); None: for all values."""
        return None

    @classmethod
    def definition(cls, layer, op, env: dict) -> tuple[sp.Matrix, dict]:
        """For the proof: its forward value from its definition (DESIGN, "Layers beyond
        dense"), written here independently of its op, at the explicit ``env``: (value,
        statistics by name)."""
        raise NotImplementedError  # pragma: no cover - the types with a proof_target

    # --- the words

    @classmethod
    def head(cls, layer, sources: list[str], paren: bool) -> str:
        """Its short form in a network line: ``32``, ``batchnorm``, ``dropout(0.2)``
        (``paren``) or ``dropout 0.2``, ``add(A₅, A₁)`` (``sources`` as shown)."""
        return cls.name

    @classmethod
    def label(cls, layer) -> str:
        """The third line of its Z node in the picture ("" for none)."""
        return ""

    @classmethod
    def check_note(cls, l: int) -> str:
        """Its part of check's training-mode note on batch statistics ("" for none)."""
        return ""

    @classmethod
    def running_lines(cls, l: int, layer, fmt: str, image=None, rows=None) -> list[str]:
        """The update of its buffers once per training step, as text or LaTeX rows
        (``image``: the (H, W, C) of its input when that is a feature map; ``rows``: its row
        count as the printer writes it, N·H₁·W₁)."""
        return []


# --------------------------------------------------------------------------
# The types
# --------------------------------------------------------------------------


class DenseLayer(LayerKind):
    """Z = A W + b (``units`` outputs; W He-normal or Glorot-uniform as the activation
    suits, b zeros)."""

    name = "dense"
    keys = ("units", "activation", "input")
    plain = True
    params = ("W", "b")

    @classmethod
    def check_keys(cls, layer, where: str) -> None:
        if layer.units is None:
            raise SymgradError(f"{where}.units", "missing; give the number of units of this layer")
        check_int(layer.units, f"{where}.units", 1, MAX_UNITS)
        super().check_keys(layer, where)

    @classmethod
    def width(cls, layer, names, widths, where):
        return layer.units

    @classmethod
    def image(cls, layer, names, images, widths, where):
        if images[0] is not None:
            raise SymgradError(where, _flat_needed(cls.name, names[0], images[0]))
        return None

    @classmethod
    def param_shapes(cls, l, fan_in, n, layer=None):
        return {f"W{l}": (fan_in, n), f"b{l}": (n,)}

    @classmethod
    def weight_init(cls, layer) -> str:
        return "he" if layer.fn.init == "he" else "glorot"

    @classmethod
    def init_lines(cls, l, layer, fan_in, n):
        return [f'params["W{l}"] = _{cls.weight_init(layer)}(rng, {fan_in}, {n}, dtype)',
                f'params["b{l}"] = np.zeros({n}, dtype)']

    @classmethod
    def build(cls, l, layer, srcs, n, g):
        src = srcs[0]
        W = g.param(f"W{l}", (src.shape[1], n))
        b = g.param(f"b{l}", (sp.Integer(1), n))
        rhs = BiasAdd(MatMul(src, W), b)
        return rhs, rhs

    @classmethod
    def head(cls, layer, sources, paren):
        return str(layer.units)


_A, _M = sp.Symbol("a", real=True), sp.Symbol("m", real=True)


class _Normalization(LayerKind):
    """μ, σ² (the batch mean and biased variance along ``axis``), X̂ = Standardize, then
    Z = X̂ ⊙ 𝟏γ + β (γ ones, β zeros)."""

    params = ("gamma", "beta")
    statistics = ("mu", "var", "Xhat")
    adjoints = ("Xhat",)
    scalars = ("eps",)
    proof_target = "Xhat"
    axis: ClassVar[int]

    @classmethod
    def init_lines(cls, l, layer, fan_in, n):
        return [f'params["gamma{l}"] = np.ones({n}, dtype)',
                f'params["beta{l}"] = np.zeros({n}, dtype)']

    @classmethod
    def build(cls, l, layer, srcs, n, g):
        src = srcs[0]
        shape = src.shape
        axis = cls.axis
        stat_shape = (sp.Integer(1), shape[1]) if axis == 0 else (shape[0], sp.Integer(1))
        total, count = (ColSum, shape[0]) if axis == 0 else (RowSum, shape[1])
        mu, var = Sym(f"mu{l}", stat_shape, "value"), Sym(f"var{l}", stat_shape, "value")
        xhat = Sym(f"Xhat{l}", shape, "value")
        gamma = g.param(f"gamma{l}", (sp.Integer(1), shape[1]))
        beta = g.param(f"beta{l}", (sp.Integer(1), shape[1]))
        centred = Map((_A - _M) ** 2, ((_A, src), (_M, Broadcast(mu, shape))))
        running = [g.buffer(f"{k}{l}", stat_shape) for k in cls.buffers]
        stats_in_inference = not running  # else inference reads the running statistics
        g.assign(mu, Scale(1 / count, total(src)), inference=stats_in_inference)
        g.assign(var, Scale(1 / count, total(centred)), inference=stats_in_inference)
        inferred = Standardize(src, *(running or (mu, var)), layer.eps, axis)
        g.assign(xhat, Standardize(src, mu, var, layer.eps, axis), inference=inferred)
        rhs = BiasAdd(Hadamard(xhat, Broadcast(gamma, shape)), beta)
        return rhs, rhs

    @classmethod
    def definition(cls, layer, op, env):
        a = env[op.x.name]
        lines = a if op.axis == 0 else a.T  # statistics down each column of `lines`
        m = lines.rows
        mean = [sp.Add(*lines[:, j]) / m for j in range(lines.cols)]
        var = [sp.Add(*[(lines[i, j] - mean[j]) ** 2 for i in range(m)]) / m
               for j in range(lines.cols)]
        eps = exact(layer.eps)
        out = sp.Matrix(m, lines.cols, lambda i, j: (lines[i, j] - mean[j])
                        * (var[j] + eps) ** sp.Rational(-1, 2))
        stats = {op.mu.name: sp.Matrix([mean]), op.var.name: sp.Matrix([var])}
        if op.axis == 1:
            out, stats = out.T, {k: v.T for k, v in stats.items()}
        return out, stats

    @classmethod
    def label(cls, layer):
        return f"{cls.name}, ε = {layer.eps:g}"


class BatchNormLayer(_Normalization):
    """Standardized over the batch (each column); running mean and variance as torch
    keeps them (buffers: mean zeros, var ones; mean ← (1 − m) mean + m μ,
    var ← (1 − m) var + m σ² N/(N − 1))."""

    name = "batchnorm"
    keys = ("eps", "momentum", "activation", "input")
    axis = 0
    buffers = ("mean", "var")
    batch_statistics = True
    proof_batch = 3  # at N = 2 the standardized values are ±1: a wrong rule can agree
    proof_note = "a column of 3 couples through μ and σ²"
    statistics_over = "of each column, over the N samples"

    @classmethod
    def init_lines(cls, l, layer, fan_in, n):
        return [*super().init_lines(l, layer, fan_in, n),
                f'params["mean{l}"] = np.zeros({n}, dtype)',
                f'params["var{l}"] = np.ones({n}, dtype)']

    @classmethod
    def check_note(cls, l):
        return f"{cls.name} {l}"

    @classmethod
    def running_lines(cls, l, layer, fmt, image=None, rows=None):
        m = layer.momentum
        keep, take = f"{1 - m:g}", f"{m:g}"
        if rows is None:  # a map: its N·H·W rows (``rows``: as the printer names them)
            rows = "N" if image is None else f"{image[0] * image[1]}N"
        if fmt == "text":
            sub = str(l).translate(naming._SUB)
            mean, var = f"mean{sub}", f"var{sub}"
            return [f"{mean} ← {keep} {mean} + {take} μ{sub}",
                    f"{var} ← {keep} {var} + {take} σ{sub}² {rows}/({rows} − 1)"]
        mean, var = rf"\operatorname{{mean}}_{{{l}}}", rf"\operatorname{{var}}_{{{l}}}"
        return [rf"{mean} &\leftarrow {keep} \, {mean} + {take} \, \mu_{{{l}}}",
                rf"{var} &\leftarrow {keep} \, {var} + {take} \, \sigma_{{{l}}}^{{2}} "
                rf"\frac{{{rows}}}{{{rows} - 1}}"]


class LayerNormLayer(_Normalization):
    """Standardized over each row (the features of one sample); no running statistics."""

    name = "layernorm"
    keys = ("eps", "activation", "input")
    axis = 1
    proof_row = 3  # a row of 3 features (N = 2)
    proof_note = "a row of 3 features couples through μ and σ²"
    statistics_over = "of each row, over its n features"
    refusals = {"momentum": "only batchnorm layers take momentum (the running statistics' "
                            "rate; layernorm keeps none); remove it"}

    @classmethod
    def image(cls, layer, names, images, widths, where):
        if images[0] is not None:
            raise SymgradError(where, (
                f"layernorm of a feature map ({_shape_words(images[0])}) is not available "
                "(torch normalizes over H, W and C together); add a flatten layer before it, "
                "or use batchnorm (per channel, as torch's BatchNorm2d)"))
        return None

    @classmethod
    def check_note(cls, l):
        return f"{cls.name} {l} per row"


class DropoutLayer(LayerKind):
    """Z = A ⊙ M/(1 − p) in training (M a 0/1 mask drawn per batch), Z = A in inference."""

    name = "dropout"
    keys = ("p", "activation", "input")
    masks = ("M",)
    scalars = ("p",)
    proof_target = "Z"
    proof_note = "mask entries free symbols"

    @classmethod
    def build(cls, l, layer, srcs, n, g):
        src = srcs[0]
        return Dropout(src, g.mask(f"M{l}", src.shape, layer.p), layer.p), src

    @classmethod
    def definition(cls, layer, op, env):
        return env[op.x.name].multiply_elementwise(env[op.mask.name]) / (1 - exact(layer.p)), {}

    @classmethod
    def head(cls, layer, sources, paren):
        p = repr(float(layer.p))  # as the formulas print it: 0.9999999999 is not 1
        return f"dropout({p})" if paren else f"dropout {p}"

    @classmethod
    def label(cls, layer):
        return f"dropout, p = {float(layer.p)!r}"


class _Joining(LayerKind):
    """A layer of several values (``inputs``), drawn as a skip where a value is not the
    previous layer's output."""

    keys = ("inputs", "activation")
    joins = True
    proof_target = "Z"
    does: ClassVar[str]

    @classmethod
    def check_keys(cls, layer, where):
        object.__setattr__(layer, "inputs", _check_inputs(layer.inputs, cls.name,
                                                          f"{where}.inputs", cls.does))

    @classmethod
    def head(cls, layer, sources, paren):
        return f"{cls.name}({', '.join(sources)})"


class AddLayer(_Joining):
    """Z = A + B + … (a residual connection: the values have one width)."""

    name = "add"
    does = "sums"
    sum_rule = ("add", "Z = A + B + …, ∂L/∂A = ∂L/∂B = … = G (each input receives G "
                "unchanged)")

    @classmethod
    def width(cls, layer, names, widths, where):
        if len(set(widths)) > 1:
            listed = ", ".join(f"{n} ({w})" for n, w in zip(names, widths, strict=True))
            raise SymgradError(f"{where}.inputs", (
                f"add needs values of one width, got {listed}; put a dense layer on the "
                "narrower path, or use concat"))
        return widths[0]

    @classmethod
    def image(cls, layer, names, images, widths, where):
        if len(set(images)) > 1:
            listed = ", ".join(f"{n} ({_shape_words(i)})" for n, i in zip(names, images, strict=True))
            raise SymgradError(f"{where}.inputs", f"add needs values of one shape, got {listed}")
        return images[0]

    @classmethod
    def build(cls, l, layer, srcs, n, g):
        rhs = Add(tuple(srcs))
        return rhs, rhs

    @classmethod
    def definition(cls, layer, op, env):
        mats = [env[t.name] for t in op.terms]
        total = mats[0]
        for m in mats[1:]:
            total = total + m
        return total, {}

    @classmethod
    def label(cls, layer):
        return "add (residual)"


class ConcatLayer(_Joining):
    """Z = [A B …] (the values side by side)."""

    name = "concat"
    does = "joins side by side"
    refusals = {"units": "only dense layers take units; a concat layer's width is the sum of "
                         "its inputs' widths"}

    @classmethod
    def width(cls, layer, names, widths, where):
        width = sum(widths)
        if width > MAX_UNITS:
            raise SymgradError(f"{where}.inputs",
                               f"the concatenation is {width} wide, at most {MAX_UNITS}")
        return width

    @classmethod
    def image(cls, layer, names, images, widths, where):
        if all(i is None for i in images):
            return None
        spatial = {None if i is None else i[:2] for i in images}
        if len(spatial) > 1:
            listed = ", ".join(f"{n} ({_shape_words(i)})" for n, i in zip(names, images, strict=True))
            raise SymgradError(f"{where}.inputs", (
                f"concat joins feature maps of one height and width (their channels side by "
                f"side) or flat values, got {listed}; add a flatten layer where a flat value "
                "is meant"))
        h, w = images[0][:2]
        return (h, w, sum(i[2] for i in images))

    @classmethod
    def build(cls, l, layer, srcs, n, g):
        rhs = Concat(tuple(srcs))
        return rhs, rhs

    @classmethod
    def definition(cls, layer, op, env):
        return sp.Matrix.hstack(*[env[t.name] for t in op.terms]), {}

    @classmethod
    def label(cls, layer):
        return "concat"


# --------------------------------------------------------------------------
# Feature maps: conv2d, max/avg pooling, flatten (NHWC; the map is the matrix of N·H·W
# rows and C columns, see symgrad.ops.conv)
# --------------------------------------------------------------------------


def _shape_words(image) -> str:
    """A value's shape in a message: 8×8×1 (a feature map) or flat."""
    return "flat" if image is None else "×".join(str(v) for v in image)


def _flat_needed(kind: str, name: str, image) -> str:
    return (f"{article(kind)} layer reads a flat value, but {name} is a feature map "
            f"({_shape_words(image)}); add a flatten layer before this {kind} layer")


def _pair(value: Any, where: str, what: str, lo: int, hi: int = MAX_KERNEL) -> tuple[int, int]:
    """An int or [a, b] (a tuple once checked) as (a, b), each in [lo, hi]."""
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise SymgradError(where, f"must be one integer or a list of two ([{what}]), got "
                                      f"{list(value)!r}")
        return (check_int(value[0], f"{where}[1]", lo, hi), check_int(value[1], f"{where}[2]", lo, hi))
    value = check_int(value, where, lo, hi)
    return (value, value)


def _dims(pair: tuple[int, int]) -> str:
    """3 for (3, 3), 2×1 for (2, 1)."""
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}×{pair[1]}"


class _Window(LayerKind):
    """A layer sliding a kh×kw window over a feature map with a stride and zero padding
    (conv2d, the poolings); torch's output size ⌊(H + 2p − k)/s⌋ + 1."""

    stride_default_kernel: ClassVar[bool] = True  # pooling: stride = kernel (torch)
    proof_target = "Z"

    @classmethod
    def check_keys(cls, layer, where):
        super().check_keys(layer, where)
        if layer.kernel is None:
            raise SymgradError(f"{where}.kernel", "missing; give the window size: kernel = 3 or "
                                                  "kernel = [kh, kw]")
        kernel = _pair(layer.kernel, f"{where}.kernel", "kh, kw", 1)
        stride = (kernel if cls.stride_default_kernel else (1, 1)) if layer.stride is None else \
            _pair(layer.stride, f"{where}.stride", "sh, sw", 1)
        padding = layer.padding if layer.padding is not None else 0
        if padding == "same":
            if cls.stride_default_kernel:
                raise SymgradError(f"{where}.padding", (
                    f"{cls.name} takes no padding = \"same\" (torch's pooling has none); give "
                    f"padding = 0 … {kernel[0] // 2}"))
            if stride != (1, 1):
                raise SymgradError(f"{where}.padding", (
                    f"padding = \"same\" needs stride 1 (as torch), got stride {_dims(stride)}; "
                    "give the padding as numbers"))
            if kernel[0] % 2 == 0 or kernel[1] % 2 == 0:
                raise SymgradError(f"{where}.padding", (
                    f"padding = \"same\" with the even kernel {kernel[0]}×{kernel[1]} pads "
                    "unevenly (torch adds the extra row or column at the bottom or right), "
                    "which is not available; use an odd kernel or give the padding as numbers"))
        elif isinstance(padding, str):
            raise SymgradError(f"{where}.padding", f"must be a number, [ph, pw] or \"same\", got "
                                                   f"{padding!r}")
        else:
            padding = _pair(padding, f"{where}.padding", "ph, pw", 0)
            if cls.stride_default_kernel and (padding[0] > kernel[0] // 2
                                              or padding[1] > kernel[1] // 2):
                raise SymgradError(f"{where}.padding", (
                    f"must be at most half the kernel ({kernel[0] // 2}×{kernel[1] // 2} for "
                    f"kernel {kernel[0]}×{kernel[1]}, as torch), got {_dims(padding)}"))
        object.__setattr__(layer, "kernel", kernel)
        object.__setattr__(layer, "stride", stride)
        object.__setattr__(layer, "padding", padding)

    @staticmethod
    def padding_of(layer) -> tuple[int, int]:
        if layer.padding == "same":
            return ((layer.kernel[0] - 1) // 2, (layer.kernel[1] - 1) // 2)
        return layer.padding

    @classmethod
    def geometry(cls, layer, image) -> Geometry:
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, cls.padding_of(layer)
        return Geometry(image[0], image[1], kh, kw, sh, sw, ph, pw)

    @classmethod
    def image(cls, layer, names, images, widths, where):
        image = images[0]
        if image is None:
            later = "" if names[0] == "X" else (
                f" ({names[0]} is flat; a {cls.name} layer reads a feature map before any "
                "flatten layer)")
            raise SymgradError(where, (f"{article(cls.name)} layer reads a flat value; give "
                                       f"[network] inputs = [H, W, C]{later}"))
        geom = cls.geometry(layer, image)
        for dim, size, k, p in (("height", image[0], geom.kh, geom.ph),
                                ("width", image[1], geom.kw, geom.pw)):
            if k > size + 2 * p:
                raise SymgradError(f"{where}.kernel", (
                    f"the kernel's {dim} {k} is larger than the padded input's {size + 2 * p} "
                    f"({names[0]} is {_shape_words(image)}, padding {p}); use a smaller kernel "
                    "or more padding"))
        return (geom.ho, geom.wo, cls.channels(layer, image))

    @classmethod
    def channels(cls, layer, image) -> int:
        return image[2]

    @classmethod
    def head(cls, layer, sources, paren):
        word = f"{cls.short} {_dims(layer.kernel)}"
        if layer.stride != (layer.kernel if cls.stride_default_kernel else (1, 1)):
            word += f" stride {_dims(layer.stride)}"
        if layer.padding == "same":
            word += " pad same"
        elif layer.padding != (0, 0):
            word += f" pad {_dims(layer.padding)}"
        return word

    @classmethod
    def label(cls, layer):
        return cls.head(layer, [], False).replace(cls.short, cls.name, 1)


class Conv2dLayer(_Window):
    """Z = im2col(A) W + 𝟏b: cross-correlation (as torch), ``filters`` outputs per pixel;
    W (kh, kw, C, filters) (HWIO; the graph's (kh·kw·C)×F matrix is its row-major reshape),
    He or Glorot by fan_in = kh·kw·C; b zeros."""

    name = "conv2d"
    short = "conv"
    keys = ("filters", "kernel", "stride", "padding", "activation", "input")
    params = ("W", "b")
    stride_default_kernel = False
    proof_note = "cross-correlation with zero padding written out entry by entry"
    refusals = {"units": "only dense layers take units; a conv2d layer has filters = ... "
                         "outputs per pixel"}

    @classmethod
    def check_keys(cls, layer, where):
        if layer.filters is None:
            raise SymgradError(f"{where}.filters", "missing; give the number of filters "
                                                   "(output channels) of this layer")
        check_int(layer.filters, f"{where}.filters", 1, MAX_UNITS)
        super().check_keys(layer, where)

    @classmethod
    def channels(cls, layer, image):
        return layer.filters

    @classmethod
    def width(cls, layer, names, widths, where):
        return layer.filters

    @classmethod
    def resized(cls, layer, n):
        return {"filters": n}

    @classmethod
    def param_shapes(cls, l, fan_in, n, layer=None):
        kh, kw = layer.kernel
        return {f"W{l}": (kh, kw, fan_in, n), f"b{l}": (n,)}

    @classmethod
    def weight_init(cls, layer) -> str:
        return "he" if layer.fn.init == "he" else "glorot"

    @classmethod
    def init_lines(cls, l, layer, fan_in, n):
        kh, kw = layer.kernel
        return [f'params["W{l}"] = _{cls.weight_init(layer)}(rng, {kh * kw * fan_in}, {n}, '
                f'dtype).reshape({kh}, {kw}, {fan_in}, {n})',
                f'params["b{l}"] = np.zeros({n}, dtype)']

    @classmethod
    def build(cls, l, layer, srcs, n, g):
        src = srcs[0]
        geom = cls.geometry(layer, g.image(src.name))
        W = g.param(f"W{l}", (geom.k * src.shape[1], n))
        b = g.param(f"b{l}", (sp.Integer(1), n))
        rhs = BiasAdd(MatMul(Im2col(src, geom), W), b)
        return rhs, rhs

    @classmethod
    def head(cls, layer, sources, paren):
        word = super().head(layer, sources, paren)
        return word.replace(_dims(layer.kernel), f"{layer.kernel[0]}×{layer.kernel[1]}×"
                                                 f"{layer.filters}", 1)

    @classmethod
    def label(cls, layer):
        word = super().label(layer).replace(f"×{layer.filters}", f", {layer.filters} filters,", 1)
        return word.rstrip(",")

    @classmethod
    def definition(cls, layer, op, env):
        """Z[n, y, x, f] = b_f + Σ_{i, j, c} A[n, y·sh + i − ph, x·sw + j − pw, c] W[i, j, c, f]
        (zero outside the image), W[i, j, c, f] the graph's row (i·kw + j)·C + c."""
        im = op.a.a
        g = im.geom
        a, w, b = env[im.x.name], env[op.a.b.name], env[op.b.name]
        c_in, f_out = a.cols, w.cols
        n = a.rows // (g.h * g.w)
        out = sp.zeros(n * g.ho * g.wo, f_out)
        for img in range(n):
            for y in range(g.ho):
                for x in range(g.wo):
                    row = (img * g.ho + y) * g.wo + x
                    for f in range(f_out):
                        total = b[0, f]
                        for i in range(g.kh):
                            for j in range(g.kw):
                                yy, xx = y * g.sh + i - g.ph, x * g.sw + j - g.pw
                                if 0 <= yy < g.h and 0 <= xx < g.w:
                                    for c in range(c_in):
                                        total += (a[(img * g.h + yy) * g.w + xx, c]
                                                  * w[(i * g.kw + j) * c_in + c, f])
                        out[row, f] = total
        return out, {}


def _pooled(op, env, combine):
    """Each window's valid entries (row-major offsets; None for padding) combined, per
    channel: the poolings' definitions."""
    g, a = op.geom, env[op.x.name]
    n = a.rows // (g.h * g.w)
    out = sp.zeros(n * g.ho * g.wo, a.cols)
    for img in range(n):
        for y in range(g.ho):
            for x in range(g.wo):
                row = (img * g.ho + y) * g.wo + x
                for c in range(a.cols):
                    entries = []
                    for i in range(g.kh):
                        for j in range(g.kw):
                            yy, xx = y * g.sh + i - g.ph, x * g.sw + j - g.pw
                            inside = 0 <= yy < g.h and 0 <= xx < g.w
                            entries.append(a[(img * g.h + yy) * g.w + xx, c] if inside else None)
                    out[row, c] = combine(entries)
    return out


class MaxPool2dLayer(_Window):
    """Z = the maximum of each window per channel (padding −∞); the first maximum of each
    window (row-major, as torch on ties) is the named value arg_l, which routes δ back."""

    name = "maxpool2d"
    short = "maxpool"
    keys = ("kernel", "stride", "padding", "activation", "input")
    proof_note = ("at a point where every window's maximum is unique, the routing an explicit "
                  "0/1 selection of the maximum")

    @classmethod
    def build(cls, l, layer, srcs, n, g):
        src = srcs[0]
        geom = cls.geometry(layer, g.image(src.name))
        arg = Sym(f"arg{l}", (src.shape[0] * sp.Rational(geom.ho * geom.wo, geom.h * geom.w),
                              src.shape[1]), "value")
        g.assign(arg, PoolArgmax(src, geom))
        rhs = MaxPool(src, arg, geom)
        return rhs, rhs

    @classmethod
    def proof_point(cls, op, env) -> dict:
        """Distinct values for the input's entries (a shuffled 1/7, 2/7, …): every window's
        maximum unique."""
        import random

        entries = list(env[op.x.name])
        values = list(range(1, len(entries) + 1))
        random.Random(0).shuffle(values)
        return {s: sp.Rational(v, 7) for s, v in zip(entries, values, strict=True)}

    @classmethod
    def definition(cls, layer, op, env):
        """Z = the maximum of each window's entries, near the proof's point (``env["point"]``,
        every maximum unique): there it is the entry largest at the point (so its derivative
        is that entry's); arg = the offset of that entry."""
        point = env["point"]

        def first(entries):
            values = [None if e is None else e.xreplace(point) for e in entries]
            best = None
            for k, v in enumerate(values):
                if v is not None and (best is None or v > values[best]):
                    best = k
            return best

        value = _pooled(op, env, lambda es: es[first(es)])
        return value, {op.arg.name: _pooled(op, env, lambda es: sp.Integer(first(es)))}


class AvgPool2dLayer(_Window):
    """Z = the mean of each window per channel, padded zeros counted (torch's
    count_include_pad=True): the window's sum / (kh·kw)."""

    name = "avgpool2d"
    short = "avgpool"
    keys = ("kernel", "stride", "padding", "activation", "input")
    proof_note = "window sums / (kh·kw), padded zeros counted"

    @classmethod
    def build(cls, l, layer, srcs, n, g):
        src = srcs[0]
        rhs = AvgPool(src, cls.geometry(layer, g.image(src.name)))
        return rhs, rhs

    @classmethod
    def definition(cls, layer, op, env):
        k = op.geom.kh * op.geom.kw
        return _pooled(op, env, lambda es: sp.Add(*[e for e in es if e is not None]) / k), {}


class FlattenLayer(LayerKind):
    """Z = flatten(A): each image's H×W×C map as one row of H·W·C (row-major h, w, c)."""

    name = "flatten"
    keys = ("activation", "input")
    proof_target = "Z"
    refusals = {"units": "only dense layers take units; a flatten layer's width is H·W·C of "
                         "the feature map it reads"}
    proof_note = "each entry's place written out (row-major h, w, c)"

    @classmethod
    def image(cls, layer, names, images, widths, where):
        if images[0] is None:
            raise SymgradError(where, (f"a flatten layer reads a feature map, but {names[0]} is "
                                       "flat; remove this layer (or give [network] inputs = "
                                       "[H, W, C])"))
        return None

    @classmethod
    def build(cls, l, layer, srcs, n, g):
        src = srcs[0]
        h, w, _ = g.image(src.name)
        rhs = Flatten(src, h * w)
        return rhs, rhs

    @classmethod
    def definition(cls, layer, op, env):
        """Z[n, (h·W + w)·C + c] = A[n·H·W + h·W + w, c]."""
        a, pixels = env[op.x.name], op.pixels
        n, c = a.rows // pixels, a.cols
        out = sp.zeros(n, pixels * c)
        for img in range(n):
            for p in range(pixels):
                for ch in range(c):
                    out[img, p * c + ch] = a[img * pixels + p, ch]
        return out, {}

    @classmethod
    def label(cls, layer):
        return "flatten (NHWC)"


#: every layer type by name, in the order the docs and messages list them
KINDS: dict[str, type[LayerKind]] = {k.name: k for k in (
    DenseLayer, BatchNormLayer, LayerNormLayer, DropoutLayer, AddLayer, ConcatLayer,
    Conv2dLayer, MaxPool2dLayer, AvgPool2dLayer, FlattenLayer)}
LAYER_TYPES = tuple(KINDS)


def kind_of(name: Any, where: str) -> type[LayerKind]:
    """The layer type named ``name``, or one SymgradError."""
    use = f"use one of {', '.join(LAYER_TYPES)}"
    if not isinstance(name, str):
        raise SymgradError(where, f"must be a layer type name in quotes (type = \"dense\"), "
                                  f"got {name!r}; {use}")
    if name in PLANNED_TYPES:
        raise SymgradError(where, f"{name} layers are not available in this version; {use}")
    if name not in KINDS:
        raise SymgradError(where, f"unknown layer type {name!r}{suggest(name, LAYER_TYPES)}; {use}")
    return KINDS[name]


def kinds_with(name: str) -> str:
    """The types with a parameter, intermediate or mask of family ``name``, as words:
    "batchnorm or layernorm" (gamma, mu, Xhat), "dropout" (M)."""
    return " or ".join(k.name for k in KINDS.values()
                       if name in (*k.params, *k.statistics, *k.masks))


#: every parameter family, in the order of KINDS: W, b, gamma, beta
PARAM_FAMILIES = tuple(dict.fromkeys(f for k in KINDS.values() for f in k.params))
