"""Network specs: TOML files and the equivalent Python API, validated once, here.

Everything downstream receives a valid :class:`Spec` and does not re-check.
Every error is a :class:`~symgrad.errors.SymgradError` whose ``where`` names the
file and the table/field (``digits.toml: layer[2].activation``) and whose
``what`` says what is wrong and how to fix it.

Python API::

    spec = Spec(name="digits_mlp", inputs=64,
                layers=(Layer(32, "tanh"), Layer(10, "softmax")),
                loss="cross_entropy", l2=1e-4)
"""

from __future__ import annotations

import dataclasses
import keyword
import math
import re
import sys
import tomllib
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

from symgrad.activations import ACTIVATIONS, Activation, custom_activation, get_activation
from symgrad.activations import X as X_SYM
from symgrad.backends import check_backend
from symgrad.errors import SymgradError
from symgrad.layers import KINDS, MAX_UNITS, UNSET, LayerKind, kind_of
from symgrad.layers import check_float as _check_float
from symgrad.layers import check_int as _check_int
from symgrad.layers import suggest as _suggest
from symgrad.losses import LOSSES, YHAT, Loss, Y, custom_loss, get_loss

__all__ = ["Layer", "Spec", "Training", "OPTIMIZERS", "as_spec", "check_module_path", "load_spec",
           "spec_from_dict"]

NAME_RE = re.compile(r"[a-z_][a-z0-9_]*\Z")
MAX_LAYERS = 200
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop")
# PyTorch's default learning rates (torch.optim.SGD / Adam / RMSprop)
DEFAULT_LR = {"sgd": 1e-3, "momentum": 1e-3, "nesterov": 1e-3, "adam": 1e-3, "rmsprop": 1e-2}
# The second-order optimizers (issue 15): in a module that has hvp and gnvp. Their "learning
# rate" scales the step (Newton-CG) or is the line search's first step (L-BFGS): 1.
SECOND_ORDER = ("newton_cg", "lbfgs")
SECOND_ORDER_LR = {"newton_cg": 1.0, "lbfgs": 1.0}
CURVATURES = ("gauss_newton", "hessian")  # newton_cg's products: gnvp (G + λI) or hvp (H + λI)
FIRST_ORDER_BATCH = 32  # batch_size when not given, but for the second-order ones (full batch)


# Names a network may not take: its module would shadow one that the generated file imports
# (numpy; argparse and sys are in the standard library) or any standard-library module.
IMPORTED_MODULES = ("numpy", "argparse", "os", "sys", "tempfile")
RESERVED_NAMES = frozenset(sys.stdlib_module_names) | {"numpy", "symgrad"}


def _check_image(value: Any, src: str) -> tuple[int, int, int]:
    """``inputs = [H, W, C]``: three positive integers (an image input, NHWC)."""
    where = f"{src}: network.inputs"
    if len(value) != 3:
        raise SymgradError(where, f"an image input is [H, W, C] (three integers), got "
                                  f"{list(value)!r}; a flat input is one integer")
    names = ("H", "W", "C")
    shape = tuple(_check_int(v, f"{where}[{i}] ({names[i - 1]})", 1, MAX_UNITS)
                  for i, v in enumerate(value, 1))
    if math.prod(shape) > MAX_UNITS:
        raise SymgradError(where, f"H·W·C = {math.prod(shape)} is more than {MAX_UNITS}")
    return shape  # type: ignore[return-value]


def _check_name(name: Any, where: str) -> None:
    """A network name that makes an importable module that shadows nothing."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SymgradError(
            where,
            f"{name!r} is not a module name; use lower-case letters, digits and _ "
            "(not starting with a digit)",
        )
    suggestion = f"choose another name, e.g. '{name}_net'"
    if keyword.iskeyword(name):
        raise SymgradError(where, f"'{name}' is a Python keyword, so `import {name}` cannot "
                                  f"load the generated module; {suggestion}")
    why = _shadowed(name)
    if why:
        raise SymgradError(where, f"{why}; {suggestion}")


def _shadowed(name: str) -> str:
    """Why a module file ``<name>.py`` would shadow a module it or its neighbours import
    (numpy, symgrad, the standard library), or "" when it shadows nothing."""
    if name not in RESERVED_NAMES:
        return ""
    if name in IMPORTED_MODULES:
        return f"the generated {name}.py imports {name}, so it would import itself instead"
    if name == "symgrad":
        return "a symgrad.py would shadow symgrad itself for scripts beside it"
    return (f"'{name}' is a standard-library module, and a {name}.py would shadow it for "
            "every script in its directory")


def check_module_path(path: str | Path) -> None:
    """Refuse (one :class:`SymgradError`) a file to write a generated module to whose name
    shadows a module: ``-o numpy.py`` would import itself, ``-o random.py`` would hide the
    standard library's random. The rule of ``[network].name``, applied to the file's stem
    (what Python imports); other names (``my-net.py``) can still be run as scripts."""
    target = Path(path)
    why = _shadowed(target.stem) if target.suffix == ".py" else ""
    if why:
        raise SymgradError(str(path), f"{why}; choose another file name, e.g. "
                                      f"{target.with_name(target.stem + '_net.py')}")


def _parse(text: str, names: dict, where: str):
    from symgrad.expr import parse_scalar  # the safe parser (never eval)

    return parse_scalar(text, names, where=where)


# --------------------------------------------------------------------------
# The dataclasses (validated in __post_init__, so the Python API is as safe)
# --------------------------------------------------------------------------


# The layer types and the keys each takes (besides type); each type is its class in
# symgrad.layers (DESIGN.md "Layers beyond dense").
LAYER_KEYS: dict[str, tuple[str, ...]] = {name: kind.keys for name, kind in KINDS.items()}


def _bad_reference(name: str, l: int, earlier: list[str], count: int) -> str:
    """Why layer ``l`` of ``count`` cannot read the value ``name`` (not one of ``earlier``)."""
    reads = ("the first layer can only read X" if l == 1
             else f"a layer reads X or an earlier output ({', '.join(earlier)})")
    own = re.fullmatch(r"A([1-9][0-9]*)", name)
    k = int(own.group(1)) if own else 0
    if k == l:
        return f"{name!r} is this layer's own output; {reads}"
    if l < k <= count:
        return f"{name!r} is layer {k}'s output, which is computed later; {reads}"
    hint = (f" (did you mean '{name.upper()}'?)" if name.upper() in earlier
            else _suggest(name, earlier) if l > 1 else "")
    return f"no value named {name!r}{hint}; {reads}"


@dataclass(frozen=True)
class Layer:
    """One layer: by default dense (``units`` outputs); ``type`` names another kind with
    its keys (each type is a class in :mod:`symgrad.layers`; ``layer.kind`` is it). Every
    type takes an ``activation`` (a built-in name or an expression in ``x``; default
    identity) and, except the types that name their ``inputs``, an ``input``: the name of
    the value it reads (X or an earlier A_l; default the previous layer's output). ``eps``,
    ``momentum`` and ``p`` are None on the types that do not take them (the others get
    their defaults when left out); giving one there is an error, and so is None on a type
    that takes it (torch's ``momentum=None``, a cumulative average, is not supported)."""

    units: int | None = None
    activation: str = "identity"
    where: str = field(default="layer", compare=False, repr=False)
    type: str = "dense"
    input: str | None = None
    inputs: tuple[str, ...] | None = None
    eps: float | None = UNSET  # UNSET: left out (the type's default, or None)
    momentum: float | None = UNSET
    p: float | None = UNSET
    filters: int | None = None  # conv2d
    kernel: Any = None  # conv2d, pooling: an int or [kh, kw]; (kh, kw) once checked
    stride: Any = None  # (1, 1) for conv2d, the kernel for pooling when left out
    padding: Any = None  # 0, [ph, pw] or "same" (conv2d); (ph, pw) or "same" once checked

    def __post_init__(self) -> None:
        kind_of(self.type, f"{self.where}.type").validate(self, self.where)
        if not isinstance(self.activation, str) or not self.activation.strip():
            raise SymgradError(
                f"{self.where}.activation",
                f"must be a built-in name ({', '.join(ACTIVATIONS)}) or an expression in x",
            )
        _ = self.fn  # resolve now: errors belong at the edge

    @property
    def kind(self) -> type[LayerKind]:
        """The class of this layer's type (symgrad.layers): what every stage asks."""
        return KINDS[self.type]

    @cached_property
    def fn(self) -> Activation:
        text = self.activation.strip()
        if text.isidentifier() and text != "x":
            try:
                return get_activation(text)
            except KeyError as e:
                raise SymgradError(
                    f"{self.where}.activation",
                    f"{e.args[0]}; use a built-in ({', '.join(ACTIVATIONS)}) or an expression in x",
                ) from None
        expr = _parse(text, {"x": X_SYM}, f"{self.where}.activation")
        return custom_activation(expr, text)


@dataclass(frozen=True)
class Training:
    """Defaults for the generated ``train()`` (PyTorch's defaults where not given)."""

    optimizer: str = "sgd"
    learning_rate: float | None = None
    batch_size: int | None = None  # FIRST_ORDER_BATCH; None (all rows) for SECOND_ORDER
    epochs: int = 20
    seed: int = 0
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    alpha: float = 0.99
    curvature: str = "gauss_newton"  # newton_cg: one of CURVATURES
    cg_steps: int = 10  # newton_cg: CG iterations per update (at most)
    damping: float = 0.1  # newton_cg: the first λ (benchmarks/newton_cg_damping.py)
    memory: int = 10  # lbfgs: the number of (s, y) pairs kept
    backend: str = "numpy"  # the generated module's array library (symgrad.backends)
    where: str = field(default="training", compare=False, repr=False)

    def __post_init__(self) -> None:
        w = self.where
        check_backend(self.backend, f"{w}.backend")
        every = (*OPTIMIZERS, *SECOND_ORDER)
        if self.optimizer not in every:
            raise SymgradError(
                f"{w}.optimizer",
                f"unknown optimizer {self.optimizer!r}{_suggest(str(self.optimizer), every)}; "
                f"use one of {', '.join(every)}",
            )
        if self.learning_rate is None:
            rates = {**DEFAULT_LR, **SECOND_ORDER_LR}
            object.__setattr__(self, "learning_rate", rates[self.optimizer])
        _check_float(self.learning_rate, f"{w}.learning_rate", 0.0, 1e6, open_lo=True)
        if self.batch_size is None and self.optimizer not in SECOND_ORDER:
            object.__setattr__(self, "batch_size", FIRST_ORDER_BATCH)
        if self.batch_size is not None:
            _check_int(self.batch_size, f"{w}.batch_size", 1, 10**9)
            if self.optimizer == "lbfgs":
                raise SymgradError(
                    f"{w}.batch_size",
                    "lbfgs trains on all rows at once (its pairs (s, y) compare gradients of "
                    "one loss); leave batch_size out, or use newton_cg for large batches",
                )
        _check_int(self.epochs, f"{w}.epochs", 1, 10**7)
        _check_int(self.seed, f"{w}.seed", 0, 2**32 - 1)
        _check_float(self.momentum, f"{w}.momentum", 0.0, 1.0, open_hi=True,
                     why="with momentum 1 the velocity never decays")
        for beta in ("beta1", "beta2"):
            _check_float(getattr(self, beta), f"{w}.{beta}", 0.0, 1.0, open_hi=True,
                         why=f"{beta} = 1 makes Adam's bias correction 1 - {beta}**t zero")
        _check_float(self.eps, f"{w}.eps", 0.0, 1.0, open_lo=True,
                     why="eps keeps the update's denominator away from zero")
        _check_float(self.alpha, f"{w}.alpha", 0.0, 1.0, open_hi=True,
                     why="with alpha 1 RMSprop's average of squared gradients stays 0")
        if self.curvature not in CURVATURES:
            raise SymgradError(
                f"{w}.curvature",
                f"unknown curvature {self.curvature!r}{_suggest(str(self.curvature), CURVATURES)}"
                "; use gauss_newton (gnvp, positive semi-definite) or hessian (hvp)",
            )
        _check_int(self.cg_steps, f"{w}.cg_steps", 1, 10**4)
        _check_float(self.damping, f"{w}.damping", 0.0, 1e6, open_lo=True,
                     why="the damping λ keeps CG's matrix G + λI positive definite")
        _check_int(self.memory, f"{w}.memory", 1, 10**3)


@dataclass(frozen=True)
class Spec:
    """A dense network: ``inputs`` features, ``layers`` in order, a loss and penalties.

    ``loss`` is a built-in name; alternatively ``loss_expr`` is an elementwise
    expression in ``yhat`` and ``y`` (then ``loss`` must be left None).
    """

    name: str
    inputs: int
    layers: tuple[Layer, ...]
    loss: str | None = None
    loss_expr: str | None = None
    l1: float = 0.0
    l2: float = 0.0
    training: Training = field(default_factory=Training)
    source: str = field(default="<spec>", compare=False, repr=False)
    #: (H, W, C) of an image input (``inputs = [H, W, C]``; ``inputs`` is then H·W·C, the
    #: flat width), None for a flat one
    input_shape: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        src = self.source
        _check_name(self.name, f"{src}: network.name")
        if isinstance(self.inputs, list | tuple):
            object.__setattr__(self, "input_shape", _check_image(self.inputs, src))
            object.__setattr__(self, "inputs", math.prod(self.input_shape))
        elif self.input_shape is not None:
            shape = _check_image(self.input_shape, src)
            if not isinstance(self.inputs, int) or math.prod(shape) != self.inputs:
                raise SymgradError(f"{src}: network.inputs", (
                    f"the flat width {self.inputs!r} is not H·W·C of the image "
                    f"{'×'.join(map(str, shape))}; give inputs = [H, W, C] alone"))
            object.__setattr__(self, "input_shape", shape)
        _check_int(self.inputs, f"{src}: network.inputs", 1, MAX_UNITS)
        object.__setattr__(self, "layers", tuple(self.layers))
        if not self.layers:
            raise SymgradError(f"{src}: layer", "a network needs at least one [[layer]] table")
        if len(self.layers) > MAX_LAYERS:
            raise SymgradError(f"{src}: layer", f"at most {MAX_LAYERS} layers, got {len(self.layers)}")
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise SymgradError(f"{src}: layer", f"expected Layer objects, got {layer!r}")
        object.__setattr__(self, "l1", _check_float(self.l1, f"{src}: regularization.l1", 0.0))
        object.__setattr__(self, "l2", _check_float(self.l2, f"{src}: regularization.l2", 0.0))
        if (self.loss is None) == (self.loss_expr is None):
            raise SymgradError(
                f"{src}: loss",
                "give exactly one of kind = \"<built-in>\" or expr = \"<expression in yhat, y>\"",
            )
        _ = self.loss_fn
        _ = self.graph_shape  # every reference and width, checked here
        if self.training.optimizer in SECOND_ORDER:
            for l, layer in enumerate(self.layers, 1):
                if layer.kind.batch_statistics or layer.kind.masks:
                    raise SymgradError(
                        f"{self._where(l)}.type",
                        f"{self.training.optimizer} needs a loss that stays the same from one "
                        f"evaluation to the next, and {layer.type}'s is not (batch statistics, "
                        "random masks); use a first-order optimizer such as adam")
        if self.training.batch_size is not None and self.training.batch_size < 2:
            for l, layer in enumerate(self.layers, 1):
                if layer.kind.batch_statistics:
                    raise SymgradError(
                        f"{self._where(l)}.type",
                        f"{layer.type} needs at least 2 samples per batch in training, but "
                        f"training.batch_size is {self.training.batch_size} (the batch variance "
                        "of one sample is 0); raise batch_size")
        out = self.layers[-1].fn
        allowed = self.loss_fn.outputs
        if allowed is not None and out.name not in allowed:
            raise SymgradError(
                f"{src}: loss.kind",
                f"{self.loss_fn.name} needs a {' or '.join(allowed)} output layer, "
                f"but the last layer's activation is {self.layers[-1].activation!r}",
            )

    @cached_property
    def loss_fn(self) -> Loss:
        src = self.source
        if self.loss_expr is not None:
            if not isinstance(self.loss_expr, str):
                raise SymgradError(f"{src}: loss.expr", "must be a string expression in yhat and y")
            expr = _parse(self.loss_expr, {"yhat": YHAT, "y": Y}, f"{src}: loss.expr")
            if not expr.has(YHAT):
                raise SymgradError(f"{src}: loss.expr", "the loss does not depend on yhat")
            return custom_loss(expr, self.loss_expr)
        try:
            return get_loss(str(self.loss))
        except KeyError as e:
            raise SymgradError(
                f"{src}: loss.kind", f"{e.args[0]}; use one of {', '.join(LOSSES)} or expr = \"...\""
            ) from None

    @cached_property
    def graph_shape(self) -> tuple[tuple[int, ...], tuple[tuple[str, ...], ...]]:
        """(widths, sources): the width of X and of each layer's output A_l (the columns of
        its matrix: C for a feature map), and the names of the values each layer reads.
        Every reference is checked here, once."""
        return self._shapes[:2]

    def image(self, name: str) -> tuple[int, int, int] | None:
        """(H, W, C) of the value ``name`` (X, A1, …; Yhat is A_L) when it is a feature map
        (the graph's matrix of N·H·W rows and C columns), None when it is flat."""
        images = self._shapes[2]
        if name == "X":
            return images[0]
        return images[len(self.layers) if name == "Yhat" else int(name[1:])]

    @cached_property
    def _shapes(self):
        image = self.input_shape
        widths = [self.inputs if image is None else image[2]]
        images = [image]
        sources: list[tuple[str, ...]] = []
        used: set[str] = set()
        for l, layer in enumerate(self.layers, 1):
            earlier = ["X", *(f"A{k}" for k in range(1, l))]
            names = layer.inputs if layer.inputs is not None else (
                (layer.input,) if layer.input is not None else (earlier[-1],))
            key = "inputs" if layer.inputs is not None else "input"
            for i, name in enumerate(names, 1):
                if name not in earlier:
                    at = f"{key}[{i}]" if layer.inputs is not None else key
                    raise SymgradError(f"{self._where(l)}.{at}", _bad_reference(name, l, earlier,
                                                                               len(self.layers)))
            ws = [widths[0] if n == "X" else widths[int(n[1:])] for n in names]
            ims = [images[0] if n == "X" else images[int(n[1:])] for n in names]
            width = layer.kind.width(layer, names, ws, self._where(l))
            out = layer.kind.image(layer, names, ims, ws, self._where(l))
            if out is not None:
                width = out[2]
            elif ims[0] is not None:  # a map read as one flat row per sample (flatten)
                width = math.prod(ims[0])
            if out is not None and math.prod(out) > MAX_UNITS:
                raise SymgradError(self._where(l), f"its output {'×'.join(map(str, out))} has "
                                                   f"more than {MAX_UNITS} values per sample")
            widths.append(width)
            images.append(out)
            sources.append(tuple(names))
            used.update(names)
        for l in range(1, len(self.layers)):
            if f"A{l}" not in used:
                raise SymgradError(self._where(l), (
                    f"A{l}, this layer's output, is read by no later layer, so it cannot reach "
                    f"the loss; have a later layer read it (input = \"A{l}\" or inputs = "
                    "[...]) or remove the layer"))
        if images[-1] is not None:
            raise SymgradError(self._where(len(self.layers)), (
                f"the network's output is a {'×'.join(map(str, images[-1]))} feature map; end "
                "with a flatten layer (and a dense layer) so that each sample's output is a row"))
        return tuple(widths), tuple(sources), tuple(images)

    def _where(self, l: int) -> str:
        """Where layer ``l`` (1-based) is: its TOML table, or for a Layer built in Python
        (``where`` left at "layer") its position in this spec."""
        where = self.layers[l - 1].where
        return f"{self.source}: layer[{l}]" if where == "layer" else where

    @property
    def sizes(self) -> tuple[int, ...]:
        """(inputs, width₁, …, width_L): the width of X and of each layer's output."""
        return self.graph_shape[0]

    def sources(self, l: int) -> tuple[str, ...]:
        """The names of the values layer ``l`` (1-based) reads: ("X",), ("A2",), …"""
        return self.graph_shape[1][l - 1]

    def fan_in(self, l: int) -> int:
        """The width of layer ``l``'s (first) input."""
        name = self.sources(l)[0]
        return self.sizes[0] if name == "X" else self.sizes[int(name[1:])]

    @property
    def is_chain(self) -> bool:
        """Dense layers only, each reading the previous one's output (the first wave's
        networks; some fast paths are for these)."""
        return all(layer.kind.plain and layer.input in (None, "X" if l == 1 else f"A{l - 1}")
                   for l, layer in enumerate(self.layers, 1))

    @property
    def outputs(self) -> int:
        return self.sizes[-1]

    @property
    def is_classifier(self) -> bool:
        return self.loss_fn.name in ("cross_entropy", "binary_cross_entropy") or (
            self.layers[-1].fn.name == "softmax"
        )

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The trainable parameters in layer order (each type's: W_l, b_l; gamma_l, beta_l)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for l, layer in enumerate(self.layers, 1):
            shapes.update(layer.kind.param_shapes(l, self.fan_in(l), self.sizes[l], layer=layer))
        return shapes

    def buffer_shapes(self) -> dict[str, tuple[int, ...]]:
        """The running statistics (buffers, not parameters: batchnorm's mean_l, var_l)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for l, layer in enumerate(self.layers, 1):
            shapes.update(layer.kind.buffer_shapes(l, self.sizes[l]))
        return shapes

    def with_sizes(self, sizes: tuple[int, ...]) -> Spec:
        """The same network with other widths (for tiny proofs and benchmarks): ``sizes``
        gives X's width and each layer's; only those of X and of dense layers are used (the
        other types' widths follow from their inputs)."""
        layers = tuple(dataclasses.replace(layer, **layer.kind.resized(layer, u))
                       for u, layer in zip(sizes[1:], self.layers, strict=True))
        if self.input_shape is not None:  # sizes[0] is then the input's channels
            h, w, _ = self.input_shape
            return Spec(self.name, h * w * sizes[0], layers, self.loss, self.loss_expr, self.l1,
                        self.l2, self.training, self.source, (h, w, sizes[0]))
        return Spec(self.name, sizes[0], layers, self.loss, self.loss_expr, self.l1, self.l2,
                    self.training, self.source)

    def with_image(self, h: int, w: int) -> Spec:
        """The same network on h×w input images (the channels kept): for tiny proofs."""
        c = self.input_shape[2]
        return dataclasses.replace(self, inputs=h * w * c, input_shape=(h, w, c))


# --------------------------------------------------------------------------
# TOML
# --------------------------------------------------------------------------

_TABLES = {
    "network": {"name", "inputs"},
    "layer": {"type", *(key for keys in LAYER_KEYS.values() for key in keys)},
    "loss": {"kind", "expr"},
    "regularization": {"l1", "l2"},
    "training": {f.name for f in fields(Training) if f.name != "where"},
}


def _check_keys(table: Any, allowed: set[str], where: str) -> dict:
    if not isinstance(table, dict):
        raise SymgradError(where, f"must be a table, got {type(table).__name__}")
    for key in table:
        if key not in allowed:
            raise SymgradError(
                f"{where}.{key}",
                f"unknown key{_suggest(key, allowed)}; allowed keys: {', '.join(sorted(allowed))}",
            )
    return table


def spec_from_dict(data: dict, source: str = "<spec>") -> Spec:
    """Build a :class:`Spec` from parsed TOML data; errors name ``source``."""
    for key in data:
        if key not in _TABLES:
            raise SymgradError(
                f"{source}: [{key}]",
                f"unknown table{_suggest(key, _TABLES)}; allowed: {', '.join(_TABLES)}",
            )
    network = _check_keys(data.get("network"), _TABLES["network"], f"{source}: [network]") if (
        "network" in data
    ) else None
    if network is None:
        raise SymgradError(f"{source}: [network]", "missing table; add [network] with name and inputs")
    for key in ("name", "inputs"):
        if key not in network:
            raise SymgradError(f"{source}: network.{key}", "missing; add it to the [network] table")
    raw_layers = data.get("layer")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise SymgradError(f"{source}: layer", "no [[layer]] tables; add one per dense layer, in order")
    layers = []
    for i, raw in enumerate(raw_layers, 1):
        where = f"{source}: layer[{i}]"
        if not isinstance(raw, dict):
            raise SymgradError(where, f"must be a table, got {type(raw).__name__}")
        kind = kind_of(raw.get("type", "dense"), f"{where}.type").name
        # a key of another type is refused by Layer with that key's own message
        own = {"type", *LAYER_KEYS[kind]}
        for key in raw:
            if key not in _TABLES["layer"]:
                raise SymgradError(f"{where}.{key}", f"unknown key{_suggest(key, own)}; "
                                                     f"allowed keys: {', '.join(sorted(own))}")
        layers.append(Layer(raw.get("units"), raw.get("activation", "identity"), where=where,
                            type=kind, input=raw.get("input"), inputs=raw.get("inputs"),
                            **{k: raw[k] for k in ("eps", "momentum", "p", "filters", "kernel",
                                                   "stride", "padding") if k in raw}))
    loss_table = _check_keys(data.get("loss", {}), _TABLES["loss"], f"{source}: [loss]")
    if not loss_table:
        raise SymgradError(f"{source}: [loss]", "missing; add [loss] with kind = \"...\" or expr = \"...\"")
    reg = _check_keys(data.get("regularization", {}), _TABLES["regularization"],
                      f"{source}: [regularization]")
    train = _check_keys(data.get("training", {}), _TABLES["training"], f"{source}: [training]")
    training = Training(**train, where=f"{source}: training")
    for key, owner in (("curvature", "newton_cg"), ("cg_steps", "newton_cg"),
                       ("damping", "newton_cg"), ("memory", "lbfgs")):
        if key in train and training.optimizer != owner:  # as train() refuses it
            raise SymgradError(f"{source}: training.{key}", (
                f"an option of {owner}, not of {training.optimizer}; leave it out or set "
                f'optimizer = "{owner}"'))
    return Spec(
        name=network["name"],
        inputs=network["inputs"],
        layers=tuple(layers),
        loss=loss_table.get("kind"),
        loss_expr=loss_table.get("expr"),
        l1=reg.get("l1", 0.0),
        l2=reg.get("l2", 0.0),
        training=training,
        source=source,
    )


def load_spec(path: str | Path) -> Spec:
    """Read and validate a TOML spec (a regular UTF-8 file of at most 1 MiB)."""
    from symgrad.files import SPEC_BYTES, read_text

    text = read_text(path, str(path), SPEC_BYTES, what="spec")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SymgradError(str(path), f"invalid TOML: {e}") from None
    return spec_from_dict(data, source=str(path))


def as_spec(spec_or_path: Spec | str | Path) -> Spec:
    """The one coercion at every public entry point: a :class:`Spec` as it is, a path
    (``str`` or ``os.PathLike``) read by :func:`load_spec`."""
    if isinstance(spec_or_path, Spec):
        return spec_or_path
    if isinstance(spec_or_path, str) or hasattr(spec_or_path, "__fspath__"):
        return load_spec(spec_or_path)
    raise TypeError(f"expected a symgrad.Spec or the path of a TOML spec, got "
                    f"{type(spec_or_path).__name__}")
