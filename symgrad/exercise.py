"""exercise: backpropagation worksheets, and a grader for them (``symgrad exercise``,
``symgrad grade``).

``symgrad exercise SPEC|--random -o sheet.md`` writes three files, all checked as targets
before any is written (:mod:`symgrad.files`):

* ``sheet.md`` (or ``sheet.tex`` with ``--format latex``, a printable document): the
  network — its forward equations, the loss — and K questions, "derive ∂L/∂W₂", "δ₁", …;
* ``sheet.key.md`` (``sheet.key.tex``): the answer key, each answer in the textbook form
  and in numpy syntax, every one checked by :func:`symgrad.verify.verify` before it is
  written;
* ``sheet.toml``: the machine-readable sheet (the spec, the questions and their ``--wrt``
  names; no answers), which ``symgrad grade`` reads.

``symgrad grade sheet.toml ANSWERS`` grades a student's answers (numpy syntax, one per
question: a TOML file ``[answers] q1 = "…"`` or a text file of lines ``q1: …``) by
:func:`symgrad.verify.verify` — its evidence and diagnosis per question — and prints a
score and what to do next for each wrong answer; exit 0 when all are right, 1 otherwise,
2 for bad input. ANSWERS may be a folder (a whole class): one Markdown table on stdout,
``--csv FILE`` for a spreadsheet.

How an answer is graded (:data:`STATUSES`):

* ``right`` — verify's verdict is correct; also when verify could not finish the
  symbolic proof within its budget but the answer agrees with the gradient at 50 digits
  on every random instance (shown as "right (numerically)": it earns the point);
* ``wrong`` — verify's verdict is WRONG; its diagnosis (transposed, factor, sign,
  missing-term, …) is named, with a next step;
* ``circular`` — the answer uses the very quantity it is asked for (``dZ1`` for δ₁),
  which verify would accept as trivially equal;
* ``invalid`` — the text is not a formula over the sheet's names (verify's parser says
  why); ``blank`` — no answer.

The files carry a first line with the SHA-256 of the rest, so ``exercise`` replaces its
own unedited files and refuses any other without ``--force`` (as ``generate`` does).
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import io
import json
import random
import re
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from symgrad import files, naming
from symgrad.activations import ACTIVATIONS
from symgrad.commands import command
from symgrad.errors import SymgradError
from symgrad.layers import PARAM_FAMILIES
from symgrad.spec import Layer, Spec, as_spec, spec_from_dict

__all__ = [
    "Answers", "Grade", "Question", "Result", "STATUSES", "Worksheet", "class_table",
    "grade", "grade_folder", "load_answers", "load_sheet", "random_spec", "worksheet",
    "write_worksheet",
]

DEFAULT_COUNT = 4
MAX_DEPTH = 6
DEFAULT_ACTIVATIONS = ("tanh", "sigmoid", "relu")
#: the output layers a random network may end in, with their losses
OUTPUTS = (("softmax", "cross_entropy"), ("sigmoid", "binary_cross_entropy"), ("identity", "mse"))
STATUSES = ("right", "wrong", "circular", "invalid", "blank")
FORMATS = {"markdown": ".md", "latex": ".tex"}

_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_ID = re.compile(r"q[1-9][0-9]{0,2}\Z")

#: what a student can do about each of verify's diagnoses
NEXT_STEP = {
    "transposed": "check the shapes: the gradient has the shape of the quantity itself, so "
                  "write the product in the order that makes the sizes match",
    "factor": "check the constant: the 1/N of the mean over samples enters once, in δ of "
              "the last layer, and is not repeated in the layers below",
    "sign": "check the sign: the gradient points uphill; the minus belongs to the update "
            "W ← W − η ∂L/∂W, not to the gradient",
    "shape": "the shapes cannot match; write the size of every factor under it and check "
             "each product",
    "activation-derivative": "multiply elementwise by the activation's derivative f′(Z) "
                             "when going from ∂L/∂A to δ = ∂L/∂Z",
    "layer": "you used another layer's quantities; follow the chain rule from this layer's "
             "output",
    "missing-term": "a term is missing: a weight that also feeds the penalty collects the "
                    "penalty's gradient too (λ W for L2, λ sign(W) for L1)",
    "axis": "sum over the samples (the rows, axis=0) for a bias; over the features "
            "(axis=1) only within one sample",
    "other-gradient": "that is the gradient of another quantity; re-read which one the "
                      "question asks for",
    # networks on images
    "flipped-kernel": "conv2d is cross-correlation (as torch): im2col(A)ᵀ δ is the kernel "
                      "gradient as it stands, with no flip, and col2im(δ Wᵀ) uses W unflipped",
    "col2im-overwrite": "col2im adds: a pixel under several windows collects every window's "
                        "entry (+=, np.add.at), never only the last one",
    "stride": "the backward pass uses the forward windows: the same stride as the layer",
    "padding": "the backward pass uses the forward windows: the same padding as the layer "
               "(and drops the padded border)",
    "maxpool-average": "max pooling passes each δ only to the maximum of its window "
                       "(route(δ, l)); spreading it is average pooling's rule",
    "maxpool-ties": "on ties max pooling picks one maximum, the first in row-major order "
                    "(arg_l), as torch: route(δ, l), not every tied entry",
    "avgpool-scale": "average pooling divides each window's sum by kh·kw, so its gradient "
                     "spread(δ, l) carries 1/(kh·kw) too",
    "flatten-order": "flatten is NHWC (h, w, c): unflatten(δ, l) reads a row back in that "
                     "order, not torch's NCHW (c, h, w)",
}
NO_DIAGNOSIS = ("no single simple mistake explains it; redo the chain rule one step at a "
                "time (δ of the layer above, then ∂L/∂A, then δ) and compare each step")


# ==========================================================================================
# Questions and worksheets
# ==========================================================================================


@dataclass(frozen=True)
class Question:
    """One question: the gradient ∂L/∂``wrt`` (W2, b1, Z1 for δ₁, A1), asked as ``id``."""

    id: str
    wrt: str
    shape: str  # of the answer, in the spec's sizes: "4×2", "(2,)", "N×4"

    @property
    def text(self) -> str:
        """δ₁ = ∂L/∂Z₁, ∂L/∂W₂."""
        if self.wrt.startswith("Z"):
            return f"{naming.text('d' + self.wrt)} = ∂L/∂{naming.text(self.wrt)}"
        return f"∂L/∂{naming.text(self.wrt)}"

    @property
    def short(self) -> str:
        """δ₁, ∂L/∂W₂."""
        return naming.text("d" + self.wrt) if self.wrt.startswith("Z") else self.text

    @property
    def latex(self) -> str:
        partial = rf"\frac{{\partial L}}{{\partial {naming.latex(self.wrt)}}}"
        if self.wrt.startswith("Z"):
            return f"{naming.latex('d' + self.wrt)} = {partial}"
        return partial

    @property
    def forbidden(self) -> frozenset[str]:
        """The names of the asked quantity itself (an answer using one is circular)."""
        layer = self.wrt[1:]
        if self.wrt.startswith("Z"):
            return frozenset({f"dZ{layer}", f"delta{layer}"})
        return frozenset({"d" + self.wrt})

    @property
    def what(self) -> str:
        """"an N×4 matrix", "a 4×2 matrix (the shape of W₂)", "a vector of length 2 (…)"."""
        return self._what(naming.text(self.wrt), self.shape)

    @property
    def what_latex(self) -> str:
        shape = self.shape.replace("×", r" \times ")
        return self._what(f"${naming.latex(self.wrt)}$", shape if shape.startswith("(")
                          else f"${shape}$")

    def _what(self, name: str, shape: str) -> str:
        of = f" (the shape of {name})" if self.wrt.startswith(_PARAM_FAMILIES) else ""
        if self.shape.startswith("("):
            return f"a vector of length {self.shape.strip('(,)')}{of}"
        an = self.shape.startswith(("N", "8")) or re.match(r"1[18]\D", self.shape)
        return f"{'an' if an else 'a'} {shape} matrix{of}"


@dataclass(frozen=True)
class Worksheet:
    """A network and the questions about it; ``seed`` drew them (and the network, for
    ``--random``)."""

    spec: Spec
    questions: tuple[Question, ...]
    seed: int = 0
    random: bool = False

    @property
    def title(self) -> str:
        return self.spec.name

    def question(self, qid: str) -> Question:
        return next(q for q in self.questions if q.id == qid)


_PARAM_FAMILIES = PARAM_FAMILIES


def _candidates(spec: Spec) -> list[Question]:
    """Every question a spec offers, in the order of the reverse sweep (δ_L, ∂L/∂W_L,
    ∂L/∂b_L, ∂L/∂A_(L−1), δ_(L−1), …); ids are given later.

    Per layer l, from the last: ∂L/∂A_l (when l < L and a later layer reads A_l: with
    skips, the sum of every path), δ_l, its parameters (W_l, b_l; γ_l, β_l of a normalization)
    and the cotangents of its type's intermediates (``LayerKind.adjoints``: ∂L/∂X̂_l)."""
    sizes = spec.sizes
    read = {name for l in range(1, len(spec.layers) + 1) for name in spec.sources(l)}
    shapes = spec.param_shapes()
    out = []
    for l in range(len(spec.layers), 0, -1):
        rows = _rows(spec, f"A{l}")
        if l < len(spec.layers) and f"A{l}" in read:
            out.append(Question("", f"A{l}", f"{rows}×{sizes[l]}"))
        out.append(Question("", f"Z{l}", f"{rows}×{sizes[l]}"))
        for family in _PARAM_FAMILIES:
            shape = shapes.get(f"{family}{l}")
            if shape is not None and len(shape) == 4:  # a conv kernel: its (kh·kw·C)×F matrix
                shape = (shape[0] * shape[1] * shape[2], shape[3])
            if shape is not None:
                out.append(Question("", f"{family}{l}", "×".join(map(str, shape))
                                    if len(shape) == 2 else f"({shape[0]},)"))
        for name in spec.layers[l - 1].kind.adjoints:
            out.append(Question("", f"{name}{l}", f"{rows}×{sizes[l]}"))
    return out


def _rows(spec: Spec, name: str) -> str:
    """The rows of the value ``name``: N, or H·W·N for a feature map (N images' pixels)."""
    image = spec.image(name) if spec.input_shape is not None else None
    return "N" if image is None else f"{image[0] * image[1]}N"


def _check_count(count: int, available: int, where: str = "--count") -> None:
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= available:
        raise SymgradError(where, f"must be between 1 and {available} (the questions this "
                           f"network offers), got {count!r}")


def _check_seed(seed: int, where: str = "--seed") -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise SymgradError(where, f"must be an integer between 0 and {2**32 - 1}, got {seed!r}")


def random_spec(seed: int = 0, depth: int = 2,
                activations: Sequence[str] = DEFAULT_ACTIVATIONS) -> Spec:
    """A small random network, the same for the same arguments: ``depth`` dense layers
    (hidden activations drawn from ``activations``; the output layer and its loss one of
    softmax/cross-entropy, sigmoid/binary cross-entropy, identity/mse), widths 2..5, and
    an L2 penalty every other time."""
    _check_seed(seed)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise SymgradError("--depth", f"must be between 1 and {MAX_DEPTH} layers, got {depth!r}")
    acts = [a.strip() for a in activations]
    if not acts or any(not a for a in acts):
        raise SymgradError("--activations", "give a comma-separated list of built-in "
                           "activations, e.g. tanh,sigmoid,relu")
    for a in acts:
        if a not in ACTIVATIONS:
            import difflib

            close = difflib.get_close_matches(a, list(ACTIVATIONS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise SymgradError("--activations", f"unknown activation '{a}'{hint}; the built-ins "
                               f"are {', '.join(ACTIVATIONS)}")
    rng = random.Random(f"symgrad-exercise-network-{seed}")
    inputs = rng.randint(2, 5)
    layers = [Layer(rng.randint(2, 5), rng.choice(acts)) for _ in range(depth - 1)]
    out, loss = rng.choice(OUTPUTS)
    layers.append(Layer(rng.randint(2, 4) if out == "softmax" else rng.randint(1, 3), out))
    l2 = rng.choice((0.0, 0.01))
    return Spec(f"sheet_{seed}", inputs, tuple(layers), loss=loss, l2=l2,
                source=f"--random --seed {seed}")


def worksheet(spec: Spec | str | Path | None = None, *, seed: int = 0, count: int | None = None,
              depth: int = 2, activations: Sequence[str] = DEFAULT_ACTIVATIONS) -> Worksheet:
    """The worksheet of ``spec`` (None: :func:`random_spec` of ``seed``, ``depth``,
    ``activations``) with ``count`` questions (default :data:`DEFAULT_COUNT`, or all when
    the network offers fewer), drawn by ``seed`` and asked in the order of the sweep."""
    _check_seed(seed)
    is_random = spec is None
    spec = random_spec(seed, depth, activations) if is_random else as_spec(spec)
    candidates = _candidates(spec)
    if not spec.is_chain:  # only the questions whose key verify reads (not a concat's slice)
        readable = _readable(spec)
        candidates = [q for q in candidates if q.wrt in readable]
    count = min(DEFAULT_COUNT, len(candidates)) if count is None else count
    _check_count(count, len(candidates))
    rng = random.Random(f"symgrad-exercise-questions-{seed}")
    chosen = sorted(rng.sample(range(len(candidates)), count))
    questions = tuple(Question(f"q{i}", candidates[k].wrt, candidates[k].shape)
                      for i, k in enumerate(chosen, 1))
    return Worksheet(spec, questions, seed, is_random)


# ==========================================================================================
# The answers (checked by verify before they are written)
# ==========================================================================================


@dataclass(frozen=True)
class _Answer:
    numpy: str
    textbook: str  # Unicode
    latex: str


def _formulas(spec: Spec) -> dict:
    """Every cotangent of the derivation of ``spec`` (dW2, dZ1, …) by name."""
    from symgrad.derive import derive

    d = derive(spec)
    formulas = {e.target.name: e.rhs for e in d.steps}
    formulas.update({e.target.name: e.rhs for e in d.backward})
    return formulas


def _readable(spec: Spec) -> set[str]:
    """The questions of a network with other layer types whose derivation's formula has a
    numpy spelling that verify reads (a concat's input's gradient is a column slice of its
    cotangent, ``dZ3[:, n1:n1 + n2]``): only those are asked, so every key is checked."""
    from symgrad.verify import numpy_text, verify

    formulas = _formulas(spec)
    out = set()
    for q in _candidates(spec):
        try:
            verify(spec, q.wrt, numpy_text(formulas["d" + q.wrt], spec=spec), symbolic=False)
        except SymgradError:
            continue
        out.add(q.wrt)
    return out


def _answers(ws: Worksheet) -> dict[str, _Answer]:
    from symgrad.derive import derive
    from symgrad.printing import latex, text
    from symgrad.verify import numpy_text, verify

    d = derive(ws.spec)
    formulas = {e.target.name: e.rhs for e in d.steps}
    formulas.update({e.target.name: e.rhs for e in d.backward})
    out = {}
    for q in ws.questions:
        node = formulas["d" + q.wrt]
        answer = numpy_text(node, spec=ws.spec)
        verdict = verify(ws.spec, q.wrt, answer, symbolic=False)
        # The key IS the derivation, so verify only guards our own consistency: "not proved"
        # (no proof is asked for, and a deep network has no exact evaluation, so the
        # float64 agreement is all the evidence) accepts it; only a WRONG key is our bug.
        if not (verdict.ok or verdict.undecided):  # pragma: no cover - a bug of ours
            raise RuntimeError(f"the answer key's {q.wrt} = {answer} did not verify")
        out[q.id] = _Answer(answer, text(node), latex(node))
    return out


# ==========================================================================================
# Rendering: Markdown, LaTeX, TOML
# ==========================================================================================


def _layer_text(layer: Layer) -> str:
    """``32 tanh`` (dense), ``batchnorm relu``, ``dropout 0.2``, ``add(A1, A3)``; a layer that
    names its input says so (``32 tanh of X``)."""
    head = layer.kind.head(layer, list(layer.inputs or ()), paren=False)
    text = head if layer.fn.name == "identity" and not layer.kind.plain else (
        f"{head} {layer.fn.name}")
    return f"{text} of {layer.input}" if layer.input is not None else text


def _network_line(spec: Spec) -> str:
    head = f"{spec.inputs} inputs" if spec.input_shape is None else (
        f"{'×'.join(map(str, spec.input_shape))} images")
    parts = [head] + [
        f"{ly.units} {ly.fn.name}" if spec.is_chain else _layer_text(ly) for ly in spec.layers]
    loss = spec.loss_fn.name if spec.loss_expr is None else f"ℓ(ŷ, y) = {spec.loss_expr}"
    return " → ".join(parts) + f"; loss {loss}"


def _penalty_words(spec: Spec) -> str:
    pen = []
    if spec.l2:
        pen.append(f"an L2 penalty with λ₂ = {spec.l2:g} (write it `l2`)")
    if spec.l1:
        pen.append(f"an L1 penalty with λ₁ = {spec.l1:g} (write it `l1`)")
    return (" plus " + " and ".join(pen)) if pen else ""


def _forward_rows(spec: Spec) -> list[str]:
    from symgrad.derive import derive
    from symgrad.printing import latex

    return [rf"{naming.latex(eq.target.name)} &= {latex(eq.rhs)}" for eq in derive(spec).forward]


def _names(spec: Spec) -> tuple[str, str]:
    """The names an answer may use: (values, adjoints)."""
    L = len(spec.layers)
    if not spec.is_chain:
        return _dag_names(spec)
    values = ["X", "Y", "N"] + [f"{x}{l}" for l in range(1, L + 1) for x in ("W", "b")]
    values += [f"{x}{l}" for l in range(1, L + 1) for x in ("Z", "A") if (x, l) != ("A", L)]
    values.append("Yhat")
    values += [p for p in ("l2", "l1") if getattr(spec, p)]
    adjoints = [f"dZ{l}" for l in range(1, L + 1)] + [f"dA{l}" for l in range(1, L)] + ["dYhat"]
    return ", ".join(values), ", ".join(adjoints)


def _dag_names(spec: Spec) -> tuple[str, str]:
    """The names of a network with other layer types (those verify reads): the parameters,
    each type's intermediates (``LayerKind.statistics``: a normalization's μ_l (mu), σ²_l
    (var) and X̂_l (Xhat)), masks (M_l), the widths n0, n1, … and its scalars (eps, p)."""
    L = len(spec.layers)
    shapes = spec.param_shapes()
    values = ["X", "Y", "N"]
    adjoints = []
    for l, layer in enumerate(spec.layers, 1):
        values += [f"{x}{l}" for x in _PARAM_FAMILIES if f"{x}{l}" in shapes]
        kind = layer.kind
        values += [f"{x}{l}" for x in (*kind.statistics, *kind.masks, *kind.scalars)]
        adjoints += [f"d{x}{l}" for x in kind.adjoints]
        values += [f"Z{l}"] + ([f"A{l}"] if l < L else [])
        adjoints += [f"dZ{l}"] + ([f"dA{l}"] if l < L else [])
    values += ["Yhat", *(f"n{l}" for l in range(L + 1))]
    values += [p for p in ("l2", "l1") if getattr(spec, p)]
    if spec.input_shape is not None:  # verify's names of a network on images
        from symgrad.verify import _network

        net = _network(spec)
        values += list(net.derived)  # the conv layers' patch matrices P{l}
        values += [m[3].name for m in net.maps.values() if m[3] is not None]
    return ", ".join(values), ", ".join([*adjoints, "dYhat"])


def _map_words(spec: Spec) -> str:
    """The sheet's sentence on feature maps (verify's functions), "" for a flat network."""
    if spec.input_shape is None:
        return ""
    return (" A feature map of N images H×W×C is the matrix of N·H·W rows (row-major n, h, w) "
            "and C columns, and W of a conv2d layer its (kh·kw·C)×F matrix; P1 = im2col(X, 1) "
            "is layer 1's patch matrix, argL the first maximum of each window of maxpool layer "
            "L, and the functions im2col(A, l), col2im(D, l), route(D, l) (max pooling's "
            "adjoint), spread(D, l) (average pooling's), flatten(A, l) and unflatten(D, l) "
            "take the layer whose geometry they use.")


def _classifier_note(spec: Spec) -> str:
    if spec.loss_fn.name == "cross_entropy":
        return " Each row of Y is one-hot (it sums to 1)."
    if spec.loss_fn.name == "binary_cross_entropy":
        return " Y holds 0/1 labels."
    return ""


def _answer_template(ws: Worksheet) -> str:
    return "\n".join(f"{q.id}: " for q in ws.questions)


def _markdown_sheet(ws: Worksheet, names: dict[str, str]) -> str:
    from symgrad.printing import NOTATION

    spec = ws.spec
    values, adjoints = _names(spec)
    drawn = f" (drawn with `--random --seed {ws.seed}`)" if ws.random else ""
    out = [f"# Backpropagation worksheet: `{spec.name}`", "",
           f"**The network**{drawn}: {_network_line(spec)}, averaged over the N samples"
           f"{_penalty_words(spec)}. Rows are samples: X is {_rows(spec, 'X')}×"
           f"{spec.inputs if spec.input_shape is None else spec.input_shape[2]}, Y and Ŷ are "
           f"N×{spec.outputs}.{_classifier_note(spec)}", "",
           "$$", "\\begin{aligned}", " \\\\\n".join(_forward_rows(spec)), "\\end{aligned}", "$$",
           "", "Notation: " + NOTATION.replace("ᵀ", "⊤"), "",
           "## Questions", "",
           "Derive each gradient and write it in numpy syntax (`@`, `*`, `.T`, "
           "`sum(…, axis=0)`, `exp`, `log`, `tanh`, `where(Z1 > 0, 1, 0)`, …) over " + values + " and the "
           "adjoints " + adjoints + " (δ₁ is `dZ1`), but not the quantity a question asks "
           "for." + _map_words(spec), ""]
    for i, q in enumerate(ws.questions, 1):
        out.append(f"{i}. **{q.id}.** Derive ${q.latex}$, {q.what}.")
    out += ["", "## Handing in", "",
            "Write one line per question into a text file, say `answers.txt` (or a TOML file "
            "with an `[answers]` table, `q1 = \"…\"`):", "", "```text", _answer_template(ws),
            "```", "", f"and grade it: `symgrad grade {names['toml']} answers.txt`.", ""]
    return "\n".join(out)


def _markdown_key(ws: Worksheet, answers: dict[str, _Answer], names: dict[str, str]) -> str:
    out = [f"# Answer key: `{ws.spec.name}`", "",
           f"For the worksheet `{names['sheet']}`. Every answer below was checked by "
           "`symgrad verify` before it was written; other spellings of the same gradient are "
           f"right too (`symgrad grade {names['toml']} ANSWERS` decides).", ""]
    for i, q in enumerate(ws.questions, 1):
        a = answers[q.id]
        out += [f"{i}. **{q.id}.** ${q.latex} = {a.latex}$", "",
                f"   numpy: `{a.numpy}`", ""]
    return "\n".join(out)


_TEX_ESCAPE = {"_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$", "{": r"\{",
               "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
               "\\": r"\textbackslash{}"}
_TEX_TEXT = {"→": r"$\to$", "λ₂": r"$\lambda_2$", "λ₁": r"$\lambda_1$", "ℓ": r"$\ell$",
             "ŷ": r"$\hat{y}$", "Ŷ": r"$\hat{Y}$", "×": r"$\times$", "δ₁": r"$\delta_1$",
             "…": r"\dots{}", "≥": r"$\geq$"}


def _tex(text: str) -> str:
    """Plain text for LaTeX: special characters escaped, the few symbols we use as math."""
    out = "".join(_TEX_ESCAPE.get(c, c) for c in text)
    for k, v in _TEX_TEXT.items():
        out = out.replace(k, v)
    return out


def _tex_code(text: str) -> str:
    return r"\texttt{" + _tex(text) + "}"


_TEX_HEAD = (r"\documentclass[11pt]{article}", r"\usepackage[utf8]{inputenc}",
             r"\usepackage{amsmath,amssymb}", r"\usepackage[margin=2.5cm]{geometry}",
             r"\setlength{\parindent}{0pt}", r"\setlength{\parskip}{0.6em}",
             r"\begin{document}")
_TEX_NOTATION = (r"Notation: $\odot$ elementwise product, $^\top$ transpose, $\mathbf{1}$ the "
                 r"column of $N$ ones ($\mathbf{1}^\top \delta$ sums over the samples); "
                 r"functions and powers apply elementwise; $b$ is added to every row.")


def _latex_sheet(ws: Worksheet, names: dict[str, str]) -> str:
    spec = ws.spec
    values, adjoints = _names(spec)
    drawn = f" (drawn with {_tex_code(f'--random --seed {ws.seed}')})" if ws.random else ""
    pen = _penalty_words(spec).replace("`", "")
    out = [*_TEX_HEAD,
           rf"\section*{{Backpropagation worksheet: {_tex_code(spec.name)}}}", "",
           rf"\textbf{{The network}}{drawn}: {_tex(_network_line(spec))}, averaged over the "
           rf"$N$ samples{_tex(pen)}. Rows are samples: $X$ is $N \times {spec.inputs}$, $Y$ "
           rf"and $\hat{{Y}}$ are $N \times {spec.outputs}$.{_tex(_classifier_note(spec))}", "",
           r"\[", r"\begin{aligned}", " \\\\\n".join(_forward_rows(spec)), r"\end{aligned}", r"\]",
           "", _TEX_NOTATION, "",
           r"\subsection*{Questions}", "",
           r"Derive each gradient and write it in numpy syntax (" + ", ".join(
               _tex_code(s) for s in ("@", "*", ".T", "sum(..., axis=0)", "exp", "log", "tanh",
                                  "where(Z1 > 0, 1, 0)"))
           + r", \dots{}) over " + _tex(values) + " and the adjoints " + _tex(adjoints)
           + r" ($\delta_1$ is \texttt{dZ1}), but not the quantity a question asks for.", "",
           r"\begin{enumerate}"]
    for q in ws.questions:
        out += [rf"\item[\textbf{{{q.id}.}}] Derive ${q.latex}$, {q.what_latex}.", "",
                r"\vspace{4cm}"]
    out += [r"\end{enumerate}", "",
            r"\subsection*{Handing in}", "",
            r"Write one line per question into a text file, say \texttt{answers.txt}:", "",
            r"\begin{verbatim}", _answer_template(ws), r"\end{verbatim}", "",
            rf"and grade it: {_tex_code('symgrad grade ' + names['toml'] + ' answers.txt')}.", "",
            r"\end{document}", ""]
    return "\n".join(out)


def _latex_key(ws: Worksheet, answers: dict[str, _Answer], names: dict[str, str]) -> str:
    out = [*_TEX_HEAD, rf"\section*{{Answer key: {_tex_code(ws.spec.name)}}}", "",
           rf"For the worksheet {_tex_code(names['sheet'])}. Every answer below was checked "
           r"by \texttt{symgrad verify} before it was written; other spellings of the same "
           r"gradient are right too.", "", r"\begin{enumerate}"]
    for q in ws.questions:
        a = answers[q.id]
        out += [rf"\item[\textbf{{{q.id}.}}] $\displaystyle {q.latex} = {a.latex}$", "",
                rf"numpy: {_tex_code(a.numpy)}", ""]
    out += [r"\end{enumerate}", "", r"\end{document}", ""]
    return "\n".join(out)


def _toml_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a TOML basic string


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, int | float):
        return repr(v)
    return _toml_string(str(v))


def spec_tables(spec: Spec) -> dict:
    """The TOML tables of ``spec`` ([network], [[layer]], [loss], [regularization])."""
    inputs = spec.inputs if spec.input_shape is None else list(spec.input_shape)
    data: dict = {"network": {"name": spec.name, "inputs": inputs},
                  "layer": [_layer_table(ly) for ly in spec.layers],
                  "loss": {"kind": spec.loss} if spec.loss_expr is None else {"expr": spec.loss_expr}}
    reg = {k: getattr(spec, k) for k in ("l2", "l1") if getattr(spec, k)}
    if reg:
        data["regularization"] = reg
    return data


def _layer_table(layer: Layer) -> dict:
    """A [[layer]] table: ``units`` and ``activation`` for a dense layer that reads the
    previous one; its ``type`` and own keys (input, inputs, eps, momentum, p) otherwise."""
    table: dict = {} if layer.kind.plain else {"type": layer.type}
    for key in ("units", "input", "inputs", "eps", "momentum", "p", "filters", "kernel",
                "stride", "padding"):
        value = getattr(layer, key, None)
        if value is not None:  # a window's kernel, stride and padding as [h, w] pairs
            table[key] = list(value) if isinstance(value, tuple) else value
    table["activation"] = layer.activation
    return table


def _toml_sheet(ws: Worksheet, names: dict[str, str]) -> str:
    out = ["# The machine-readable worksheet: `symgrad grade THIS_FILE ANSWERS` reads it.",
           "[sheet]", f"title = {_toml_string(ws.title)}",
           f"worksheet = {_toml_string(names['sheet'])}", f"key = {_toml_string(names['key'])}",
           f"seed = {ws.seed}", f"random = {_toml_value(ws.random)}", ""]
    for q in ws.questions:
        out += ["[[question]]", f"id = {_toml_string(q.id)}", f"wrt = {_toml_string(q.wrt)}",
                f"asks = {_toml_string(q.text)}", f"shape = {_toml_string(q.shape)}", ""]
    tables = spec_tables(ws.spec)
    out += ["[spec.network]"] + [f"{k} = {_toml_value(v)}" for k, v in tables["network"].items()]
    for layer in tables["layer"]:
        out += ["", "[[spec.layer]]"] + [f"{k} = {_toml_value(v)}" for k, v in layer.items()]
    for name in ("loss", "regularization"):
        if name in tables:
            out += ["", f"[spec.{name}]"] + [f"{k} = {_toml_value(v)}"
                                             for k, v in tables[name].items()]
    return "\n".join(out) + "\n"


# ==========================================================================================
# Writing: three files, all checked first; our own files are replaced, others kept
# ==========================================================================================

_MARK = "symgrad exercise sheet; sha256 {digest}; replaced by symgrad exercise unless edited"
_MARKS = {".md": ("<!-- ", " -->"), ".tex": ("% ", ""), ".toml": ("# ", "")}
_MARK_RE = re.compile(r"(?:<!-- |% |# )symgrad exercise sheet; sha256 (?P<digest>[0-9a-f]{16}); "
                      r"replaced by symgrad exercise unless edited(?: -->)?")


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def _stamped(body: str, suffix: str) -> str:
    left, right = _MARKS[suffix]
    return left + _MARK.format(digest=_digest(body.encode("utf-8"))) + right + "\n" + body


def _ownership(path: Path) -> str | None:
    """None when ``path`` is an exercise file symgrad wrote and nobody edited since."""
    try:
        data = files.read_bytes(path, limit=files.MODULE_BYTES)
    except SymgradError:
        data = b""
    first, _, body = data.partition(b"\n")
    m = _MARK_RE.fullmatch(first.decode("utf-8", errors="replace"))
    if m is None:
        return "exists and was not written by symgrad exercise; use --force to overwrite"
    if m["digest"] != _digest(body):
        return "was edited after symgrad exercise wrote it; use --force to overwrite, or -o elsewhere"
    return None


def _targets(output: str | Path, fmt: str | None) -> tuple[str, dict[str, Path]]:
    """The format and the three paths for ``-o``: the worksheet, its key, the TOML sheet."""
    raw = str(output)
    if raw == files.STDOUT:
        raise SymgradError("-o", "exercise writes three files (the sheet, its key and a .toml); "
                           "give the worksheet's path, e.g. sheet.md")
    if files.names_a_directory(raw):
        raise SymgradError("-o", f"{raw!r} names a directory; give the worksheet's path, e.g. "
                           "sheet.md")
    path = Path(raw)
    by_suffix = {v: k for k, v in FORMATS.items()}.get(path.suffix)
    if by_suffix is None:
        want = FORMATS[fmt or "markdown"]
        raise SymgradError("-o", f"{raw!r}: the worksheet's name must end in {want} "
                           f"(the key and the .toml are written beside it)")
    if fmt is not None and by_suffix != fmt:
        raise SymgradError("-o", f"{raw!r} ends in {path.suffix}, but --format {fmt} writes a "
                           f"{FORMATS[fmt]} file")
    stem = path.with_suffix("")
    return by_suffix, {"sheet": path, "key": Path(f"{stem}.key{path.suffix}"),
                       "toml": Path(f"{stem}.toml")}


def write_worksheet(ws: Worksheet, output: str | Path, fmt: str | None = None, *,
                    force: bool = False) -> dict[str, Path]:
    """Write the worksheet, its answer key and the TOML sheet; return their paths.

    ``output`` names the worksheet (``.md``, or ``.tex`` for ``fmt="latex"``); the key
    (``NAME.key.md``) and ``NAME.toml`` go beside it. Every target is checked before any
    is written; files symgrad exercise did not write (or that were edited) are kept
    unless ``force``.
    """
    fmt, paths = _targets(output, fmt)
    for path in paths.values():
        files.check_target(path, str(path), force=force, owner_check=_ownership)
    names = {k: p.name for k, p in paths.items()}
    answers = _answers(ws)
    if fmt == "latex":
        sheet, key = _latex_sheet(ws, names), _latex_key(ws, answers, names)
    else:
        sheet, key = _markdown_sheet(ws, names), _markdown_key(ws, answers, names)
    texts = {"sheet": sheet, "key": key, "toml": _toml_sheet(ws, names)}
    with files.uninterrupted():
        for k, path in paths.items():
            files.write_text(path, _stamped(texts[k], path.suffix), str(path), force=force,
                             owner_check=_ownership)
    return paths


# ==========================================================================================
# Reading a sheet and a student's answers
# ==========================================================================================


def _table(value, where: str, allowed: set[str], top: bool = False) -> dict:
    """``value`` as a table with only ``allowed`` keys (``top``: the file's top level)."""
    if not isinstance(value, dict):
        raise SymgradError(where, f"must be a table, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise SymgradError(f"{where}: {key}" if top else f"{where}.{key}",
                               f"unknown key; allowed keys: {', '.join(sorted(allowed))}")
    return value


def _read_toml(path: str | Path, what: str) -> dict:
    text = files.read_text(path, str(path), files.SPEC_BYTES, what=what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SymgradError(str(path), f"invalid TOML: {e}") from None


def load_sheet(path: str | Path) -> Worksheet:
    """The worksheet a ``sheet.toml`` describes (one :class:`SymgradError` line for a bad one)."""
    src = str(path)
    data = _read_toml(path, "worksheet")
    if "spec" not in data:
        raise SymgradError(f"{src}: [spec]", "missing; this is not a worksheet written by "
                           "symgrad exercise (it has no [spec] table)")
    _table(data, src, {"sheet", "question", "spec"}, top=True)
    sheet = _table(data.get("sheet", {}), f"{src}: [sheet]",
                   {"title", "worksheet", "key", "seed", "random"})
    spec = spec_from_dict(_table(data["spec"], f"{src}: [spec]",
                                 {"network", "layer", "loss", "regularization", "training"}),
                          source=f"{src}: spec")
    raw = data.get("question")
    if not isinstance(raw, list) or not raw:
        raise SymgradError(f"{src}: question", "no [[question]] tables; add one per question "
                           "(id = \"q1\", wrt = \"W2\")")
    offered = {q.wrt: q for q in _candidates(spec)}
    questions, seen = [], set()
    for i, q in enumerate(raw, 1):
        where = f"{src}: question[{i}]"
        q = _table(q, where, {"id", "wrt", "asks", "shape"})
        for key in ("id", "wrt"):
            if not isinstance(q.get(key), str):
                raise SymgradError(f"{where}.{key}", "missing or not a string")
        if not _ID.match(q["id"]) or q["id"] in seen:
            raise SymgradError(f"{where}.id", f"{q['id']!r} must be q1, q2, … and appear once")
        if q["wrt"] not in offered:
            raise SymgradError(f"{where}.wrt", f"{q['wrt']!r} is not a question this network "
                               f"offers ({', '.join(offered)})")
        seen.add(q["id"])
        questions.append(Question(q["id"], q["wrt"], offered[q["wrt"]].shape))
    seed = sheet.get("seed", 0)
    _check_seed(seed, f"{src}: sheet.seed")
    return Worksheet(spec, tuple(questions), seed, bool(sheet.get("random", False)))


@dataclass(frozen=True)
class Answers:
    """One student's answers: question id → formula text (absent: blank)."""

    student: str
    answers: dict[str, str]
    source: str = ""


def load_answers(path: str | Path, ws: Worksheet) -> Answers:
    """A student's answers: a TOML file (``student = "…"`` optional, ``[answers] q1 =
    "…"``) or a text file of lines ``q1: FORMULA`` (``#`` comments and blank lines are
    skipped; ``student: NAME`` names the student, else the file's name does)."""
    src = str(path)
    ids = [q.id for q in ws.questions]
    ids_text = ", ".join(ids)
    student = Path(path).stem
    answers: dict[str, str] = {}
    if Path(path).suffix == ".toml":
        data = _read_toml(path, "answer file")
        stray = [k for k in data if _ID.match(k)]
        if stray:
            raise SymgradError(f"{src}: {stray[0]}", f"put the answers in an [answers] table "
                               f"([answers] then {stray[0]} = \"…\")")
        _table(data, src, {"student", "answers"}, top=True)
        if "student" in data:
            if not isinstance(data["student"], str) or not data["student"].strip():
                raise SymgradError(f"{src}: student", "must be a non-empty string")
            student = data["student"].strip()
        table = data.get("answers")
        if not isinstance(table, dict):
            raise SymgradError(f"{src}: [answers]", f"missing; add an [answers] table with "
                               f"{ids[0]} = \"…\" for each question ({ids_text})")
        for qid, value in table.items():
            where = f"{src}: answers.{qid}"
            if qid not in ids:
                raise SymgradError(where, f"unknown question (the sheet has {ids_text})")
            if not isinstance(value, str):
                raise SymgradError(where, f"must be a string (the formula in quotes), got "
                                   f"{type(value).__name__}")
            answers[qid] = value
    else:
        text = files.read_text(path, src, files.SPEC_BYTES, what="answer file")
        for n, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            where = f"{src}: line {n}"
            qid, colon, formula = stripped.partition(":")
            qid = qid.strip()
            if not colon:
                raise SymgradError(where, f"expected 'q1: FORMULA' (a question id, a colon, "
                                   f"your formula); the sheet has {ids_text}")
            if qid == "student":
                student = formula.strip() or student
                continue
            if qid not in ids:
                raise SymgradError(where, f"unknown question {qid!r} (the sheet has {ids_text})")
            if qid in answers:
                raise SymgradError(where, f"a second answer to {qid}; keep one")
            answers[qid] = formula.strip()
    return Answers(student, answers, src)


# ==========================================================================================
# Grading
# ==========================================================================================


@dataclass
class Result:
    """The grade of one answer: ``status`` (one of :data:`STATUSES`), verify's
    ``verdict`` (None for blank, invalid, circular), and feedback lines."""

    question: Question
    answer: str
    status: str
    verdict: object = None  # symgrad.verify.Verdict
    reason: str = ""  # invalid / circular: why
    numerically: bool = False  # right, but the proof was over its budget
    layers: int = 0  # the network's depth (δ of the last layer has no layer above)

    @property
    def right(self) -> bool:
        return self.status == "right"

    @property
    def diagnosis(self) -> str | None:
        return getattr(self.verdict, "diagnosis", None) if self.status == "wrong" else None

    @property
    def label(self) -> str:
        """right, right (numerically), WRONG (transposed), circular, invalid, blank."""
        if self.status == "right":
            return "right (numerically)" if self.numerically else "right"
        if self.status == "wrong":
            return f"WRONG ({self.diagnosis})" if self.diagnosis else "WRONG"
        return self.status

    def lines(self, reveal: bool = False) -> list[str]:
        """The feedback a student reads: evidence, diagnosis, where it differs, next step."""
        v = self.verdict
        out = [f"yours:     {self.answer}"] if self.answer else []
        if self.status == "blank":
            return out + ["next step: no answer was given; derive it and write it as "
                          f"{self.question.id} in the answer file"]
        if self.status in ("invalid", "circular"):
            out.append(f"problem:   {self.reason}")
            if self.status == "circular" and self.question.wrt.startswith("Z") and (
                    self.question.wrt == f"Z{self.layers}"):
                out.append("next step: express it through the loss's derivative and the "
                           "forward values (Yhat, Y, N)")
            elif self.status == "circular":
                out.append("next step: express it through the layer above (its δ and W) and "
                           "this layer's forward values")
            else:
                out.append("next step: write the formula in numpy syntax over the sheet's "
                           "names (see the worksheet)")
            return out
        if self.status == "right":
            out.append(f"evidence:  {v.numeric}")
            if v.symbolic:
                out.append(f"           {v.symbolic}")
            return out
        if v.message:
            out.append(f"diagnosis: {v.message}")
        if v.numeric:
            out.append(f"evidence:  {v.numeric}")
        if v.counterexample:
            out.append(f"differs:   {v.counterexample}")
        out.append(f"next step: {NEXT_STEP.get(v.diagnosis or '', NO_DIAGNOSIS)}")
        if reveal and v.correct:
            out.append(f"correct:   {v.correct}")
        return out


@dataclass
class Grade:
    """One student's graded sheet."""

    student: str
    source: str
    results: list[Result] = field(default_factory=list)

    @property
    def score(self) -> int:
        return sum(r.right for r in self.results)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def ok(self) -> bool:
        return self.score == self.total

    def text(self, reveal: bool = False) -> str:
        out = [f"grade: {self.source} (student {self.student})"]
        width = max(len(r.question.text) for r in self.results)
        for r in self.results:
            out.append(f"{r.question.id:<4} {r.question.text:<{width}}  {r.label}")
            out += ["       " + line for line in r.lines(reveal)]
        out.append(f"score: {self.score}/{self.total}")
        return "\n".join(out) + "\n"

    def _repr_html_(self) -> str:
        from symgrad import display

        return display.grade_html(self)

    def _repr_markdown_(self) -> str:
        from symgrad import display

        return display.grade_markdown(self)

    def __repr__(self) -> str:
        from symgrad import display

        return display.grade_repr(self)


def _circular(tree: ast.AST, q: Question) -> str | None:
    used = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} & q.forbidden)
    if used:
        return (f"uses {used[0]}, the quantity the question asks for ({q.short}); "
                "an answer must compute it")
    return None


class _Grader:
    """Grades answers against one worksheet; verify is asked once per distinct answer."""

    def __init__(self, ws: Worksheet) -> None:
        self.ws = ws
        self.memo: dict[tuple[str, str], Result] = {}

    def result(self, q: Question, answer: str) -> Result:
        key = (q.wrt, answer)
        if key not in self.memo:
            self.memo[key] = self._result(q, answer)
        r = self.memo[key]
        return Result(q, answer, r.status, r.verdict, r.reason, r.numerically,
                      len(self.ws.spec.layers))

    def _result(self, q: Question, answer: str) -> Result:
        from symgrad.expr import validate
        from symgrad.verify import verify

        if not answer.strip():
            return Result(q, answer, "blank")
        try:
            tree = validate(answer, where="formula", allow_matrix=True, indexing=True)
            reason = _circular(tree, q)
            if reason:
                return Result(q, answer, "circular", reason=reason)
            v = verify(self.ws.spec, q.wrt, answer)
        except SymgradError as e:
            return Result(q, answer, "invalid", reason=e.what)
        if v.ok or v.undecided:
            return Result(q, answer, "right", v, numerically=v.undecided)
        return Result(q, answer, "wrong", v)

    def grade(self, answers: Answers) -> Grade:
        g = Grade(answers.student, answers.source)
        for q in self.ws.questions:
            g.results.append(self.result(q, answers.answers.get(q.id, "")))
        return g


def grade(ws: Worksheet | str | Path, answers: Answers | str | Path) -> Grade:
    """Grade one student's answers (an :class:`Answers` or the path of an answer file)."""
    ws = ws if isinstance(ws, Worksheet) else load_sheet(ws)
    answers = answers if isinstance(answers, Answers) else load_answers(answers, ws)
    return _Grader(ws).grade(answers)


@dataclass
class ClassGrades:
    """A folder of answer files graded: the grades, and the files that could not be read."""

    sheet: Worksheet
    grades: list[Grade]
    unreadable: list[tuple[str, str]]  # (file name, the one-line reason)

    @property
    def ok(self) -> bool:
        return not self.unreadable and all(g.ok for g in self.grades)

    def _repr_html_(self) -> str:
        from symgrad import display

        return display.class_html(self)

    def _repr_markdown_(self) -> str:
        return class_table(self)[0]

    def __repr__(self) -> str:
        from symgrad import display

        return display.class_repr(self)


def grade_folder(ws: Worksheet | str | Path, folder: str | Path) -> ClassGrades:
    """Grade every answer file (``*.txt``, ``*.toml``; not hidden ones) in ``folder``, in
    name order; a file that cannot be read is listed, not fatal."""
    ws = ws if isinstance(ws, Worksheet) else load_sheet(ws)
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir()
                   if p.suffix in (".txt", ".toml") and not p.name.startswith(".") and p.is_file())
    if not paths:
        raise SymgradError(str(folder), "no answer files (*.txt or *.toml) in this folder")
    grader = _Grader(ws)
    grades, unreadable = [], []
    for p in paths:
        try:
            grades.append(grader.grade(load_answers(p, ws)))
        except SymgradError as e:
            unreadable.append((p.name, e.one_line().removeprefix("symgrad: error: ")))
    return ClassGrades(ws, grades, unreadable)


def _cell(r: Result) -> str:
    return r.label.replace("WRONG", "wrong")


def class_table(result: ClassGrades) -> tuple[str, str]:
    """The class's grades as (Markdown, CSV)."""
    ids = [q.id for q in result.sheet.questions]
    md = ["| student | " + " | ".join(ids) + " | score |",
          "|---|" + "---|" * len(ids) + "---|"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["student", *ids, "score", "total", "file"])
    for g in result.grades:
        cells = [_cell(r) for r in g.results]
        md.append(f"| {_md(g.student)} | " + " | ".join(cells) + f" | {g.score}/{g.total} |")
        w.writerow([g.student, *cells, g.score, g.total, Path(g.source).name])
    for name, _why in result.unreadable:
        md.append(f"| {_md(name)} | " + " | ".join("—" for _ in ids) + " | unreadable |")
        w.writerow([name, *("" for _ in ids), "", len(ids), name])
    scores = [g.score for g in result.grades]
    if scores:
        md += ["", f"{len(scores)} graded, mean score {sum(scores) / len(scores):.2g} of "
               f"{len(ids)}; all right: {sum(g.ok for g in result.grades)}"]
    for name, why in result.unreadable:
        md.append(f"- {_md(name)} could not be read: {_md(why)}")
    return "\n".join(md) + "\n", buf.getvalue()


def _md(text: str) -> str:
    return text.replace("|", "\\|")


# ==========================================================================================
# The commands
# ==========================================================================================


@contextmanager
def _options_of(name: str) -> Iterator[None]:
    """An error about an option (``-o``, ``--count``, …) names the command, as every other
    command's do (``check: --tol``): ``exercise: -o: …``."""
    try:
        yield
    except SymgradError as e:
        if e.where.startswith("-"):
            raise SymgradError(f"{name}: {e.where}", e.what) from None
        raise


def _csv_ownership(data: bytes) -> Callable[[Path], str | None]:
    """A CSV has no room for a mark, so an existing one is replaced only when it already
    holds exactly these grades (re-running the same grade); any other with --force."""
    def check(path: Path) -> str | None:
        try:
            if files.read_bytes(path, limit=max(len(data), 1)) == data:
                return None
        except SymgradError:
            pass
        return (f"{path} exists and does not hold these grades; use --force to overwrite "
                "it, or --csv elsewhere")
    return check


def _write_csv(args: argparse.Namespace, table: str, inputs: list) -> None:
    data = table.encode("utf-8")
    files.write_bytes(args.csv, data, "grade: --csv", force=args.force,
                      owner_check=_csv_ownership(data), inputs=inputs)


@command("exercise")
def cmd_exercise(args: argparse.Namespace) -> int:
    with _options_of("exercise"):
        return _exercise(args)


def _exercise(args: argparse.Namespace) -> int:
    if args.random == (args.spec is not None):
        raise SymgradError("exercise", "give a SPEC or --random, not both" if args.random
                           else "give a SPEC, or --random for a random network")
    if not args.random and (args.depth is not None or args.activations is not None):
        raise SymgradError("exercise", "--depth and --activations go with --random")
    acts = DEFAULT_ACTIVATIONS if args.activations is None else tuple(args.activations.split(","))
    if args.output is None:
        args.output = "sheet" + FORMATS[args.format or "markdown"]
    fmt, _ = _targets(args.output, args.format)  # refuse a bad -o before deriving anything
    ws = worksheet(None if args.random else args.spec, seed=args.seed, count=args.count,
                   depth=2 if args.depth is None else args.depth, activations=acts)
    paths = write_worksheet(ws, args.output, fmt, force=args.force)
    print(f"symgrad: wrote {paths['sheet']} ({len(ws.questions)} questions), its key "
          f"{paths['key']} and {paths['toml']} (grade with: symgrad grade {paths['toml']} "
          "ANSWERS)", file=sys.stderr)
    return 0


def _answer_files(target: Path) -> list[Path]:
    if not target.is_dir():
        return [target]
    try:
        return [p for p in target.iterdir() if p.suffix in (".txt", ".toml")]
    except OSError:
        return []


@command("grade")
def cmd_grade(args: argparse.Namespace) -> int:
    target = Path(args.answers)
    inputs = [args.sheet, *_answer_files(target)]
    if args.csv and args.csv != files.STDOUT:  # a bad --csv, or an input: before grading
        files.check_target(args.csv, "grade: --csv", force=True, owner_check=None,
                           inputs=inputs)
    ws = load_sheet(args.sheet)
    if target.is_dir():
        result = grade_folder(ws, target)
        md, table = class_table(result)
        if args.csv:
            _write_csv(args, table, inputs)
        for name, why in result.unreadable:
            print(f"symgrad grade: skipped {name}: {why}", file=sys.stderr)
        sys.stdout.write(md)
        return 0 if result.ok else 1
    g = grade(ws, load_answers(args.answers, ws))
    sys.stdout.write(g.text(reveal=args.reveal))
    if args.csv:
        _, table = class_table(ClassGrades(ws, [g], []))
        _write_csv(args, table, inputs)
    return 0 if g.ok else 1
