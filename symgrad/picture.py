"""A picture of the computational graph and of the backward pass, as lecturers draw it.

    symgrad graph examples/digits.toml -o digits.svg --backward
    symgrad graph --expr "x.T @ A @ x" --shape x=n,1 --shape A=n,n --wrt x --backward

The picture is drawn FROM the engine's graph (:mod:`symgrad.graph`): one node per
forward value (X, Z₁, A₁, …, Ŷ, L) with its formula and shape, one per parameter and
data matrix, and an edge from every input to its consumer. With ``backward`` the
cotangent flow is added: beside each value its cotangent (δ_l = ∂L/∂Z_l, ∂L/∂W_l, …),
and an edge from the consumer's cotangent to the input's, labelled with the part it
contributes and the op's vector-Jacobian rule (from the op's docstring, so the picture
reads the same rules as the derivation). Where a value feeds two consumers (a weight
in its layer and in the penalty; in expression mode a variable used twice) the parts
meet in a ``+`` node: the fan-out sum of the reverse sweep made visible.

The sweep here is :func:`symgrad.derive.derive_graph`'s, traced: the same ``vjp`` calls,
the same fusions (softmax∘cross-entropy skips ∂L/∂Ŷ, and the picture says so), so
the sum of the parts drawn into a cotangent is the formula ``symgrad derive --steps``
prints for it (a test holds this).

In expression mode the one expression is cut into units: every matrix product,
elementwise function, sum, … is a node u₁, u₂, … (transposes, scalings and
broadcasts are drawn inside their consumer's formula); a repeated subexpression is
one node.

DOT is deterministic (node names come from the graph's names, in graph order); it
needs no program. ``.svg`` and ``.png`` are rendered by Graphviz's ``dot``
(Debian: ``apt-get install graphviz``). In a notebook a :class:`Picture` shows itself
as SVG.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import unicodedata
import zlib
from dataclasses import dataclass
from pathlib import Path

import sympy as sp

from symgrad import files, naming
from symgrad.commands import command
from symgrad.errors import SymgradError
from symgrad.graph import Assignment, Graph
from symgrad.ops import (
    ONE,
    Broadcast,
    Const,
    Eye,
    MeanLoss,
    Node,
    Ones,
    RowSum,
    Scale,
    Sym,
    Transpose,
    add,
)

__all__ = ["Picture", "Part", "draw", "draw_expr", "sweep", "expr_graph", "bar", "cmd_graph"]

WHERE = "graph"
FORMATS = {".dot": "dot", ".gv": "dot", ".svg": "svg", ".png": "png"}
DOT_SECONDS = 120  #: rendering one picture (dot is fast; this bounds a pathological one)
PENALTY_RULES = ("SqNormHalf", "AbsSum")  # as derive: the network's part first, then these

#: expression mode: ops drawn inside their consumer's formula, not as nodes of their own
INLINE = (Transpose, Scale, Broadcast, RowSum, Const, Ones, Eye)

_STYLE = {
    "data": {"shape": "box", "style": "rounded,filled", "fillcolor": "#eeeeee"},
    "param": {"shape": "box", "style": "filled", "fillcolor": "#fff2b3"},
    "value": {"shape": "box", "style": "rounded,filled", "fillcolor": "#dcebfa"},
    "loss": {"shape": "box", "style": "rounded,filled,bold", "fillcolor": "#c9dcf2"},
    "cotangent": {"shape": "box", "style": "rounded,filled", "fillcolor": "#fbe0dc",
                  "color": "#b03a2e"},
    "mask": {"shape": "box", "style": "rounded,filled,dashed", "fillcolor": "#eeeeee"},
    "sum": {"shape": "circle", "style": "filled", "fillcolor": "#f5b7b1", "color": "#b03a2e",
            "fontsize": "16", "width": "0.35", "fixedsize": "true"},
}
_BACK_EDGE = {"color": "#b03a2e", "fontcolor": "#7b241c", "fontsize": "9"}
_READ_EDGE = {"style": "dashed", "color": "#7f7f7f"}  # a value an op reads (μ, σ², a mask)
_SKIP_EDGE = {"color": "#1f6feb", "fontcolor": "#1f6feb"}  # an input not the previous output


# --------------------------------------------------------------------------
# The reverse sweep, traced
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One contribution to a cotangent: what flows from the cotangent of ``source``
    (the consumer) into the cotangent of an input, and by which rule."""

    source: str  # the consumer's name (its cotangent is the incoming G)
    value: Node  # the contribution
    rule: str  # the op's rule, as the picture prints it
    kind: str = ""  # the op class of the last rule (derive's rule name), or "fused"


def _top_level_cut(text: str, stops: tuple[str, ...]) -> str:
    """``text`` up to the first of ``stops`` outside parentheses."""
    depth = 0
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0 and any(text.startswith(s, i) for s in stops):
            return text[:i]
    return text


def _rule(op: Node, index: int) -> tuple[str, bool]:
    """The rule of ``op`` for its input ``index``: (``forward: ∂L/∂input = …``, trivial).

    Read from the op's docstring (its vjp's, for the backward-only ops), as
    :mod:`symgrad.printing` reads them; trivial when the cotangent passes unchanged. An op
    that names its rule (``rule``, ``law``: batchnorm's compact rule, dropout) is quoted."""
    rule, law = getattr(op, "rule", None), getattr(op, "law", None)
    if isinstance(rule, str) and isinstance(law, str) and law:
        return f"{rule}: {law}", False
    doc = type(op).vjp.__doc__ or ""
    if "∂" not in doc:
        doc = type(op).__doc__ or ""
    head = " ".join(_top_level_cut(doc, (".", ", ", " (", " for a")).split())
    rest = doc[doc.find("∂"):] if "∂" in doc else ""
    rest = _top_level_cut(rest, (": the", "  (", " (the", ", for each", ", using"))
    parts = [" ".join(p.split()).rstrip(".") for p in re.split(r",\s{2,}", rest)]
    if len(parts) == len(op.children):
        pick = parts[index]
    else:
        pick = ", ".join(parts)
    trivial = bool(re.fullmatch(r"∂\S+ = G", pick))
    return (f"{head}: {pick}" if head else pick), trivial


def sweep(graph: Graph) -> tuple[dict[str, list[Part]], dict[str, str]]:
    """The reverse sweep of :func:`symgrad.derive.derive_graph`, recording each part.

    Returns the parts of each cotangent (by primal name, in the order of the sum that
    derive prints) and the values whose cotangent a fusion skipped (name → fusion)."""
    from symgrad.derive import FUSIONS

    loss = graph.loss.name
    parts: dict[str, list[Part]] = {loss: []}
    skipped: dict[str, str] = {}

    def back(node: Node, g: Node, out: Node | None, source: str, path: list[tuple[str, bool]],
             kind: str) -> None:
        if isinstance(node, Sym):
            if node.role != "data":
                shown = [r for r, trivial in path if not trivial] or [path[-1][0]] if path else []
                parts.setdefault(node.name, []).append(Part(source, g, "; ".join(shown), kind))
            return
        grads = node.vjp(g, out)
        for i, (child, gc) in enumerate(zip(node.children, grads, strict=True)):
            if gc is not None:
                back(child, gc, None, source, [*path, _rule(node, i)], type(node).__name__)

    for a in reversed(graph.assignments):
        name = a.target.name
        if name in skipped or name not in parts:
            continue
        g = cotangent(a.target, parts[name], loss)
        if isinstance(a.rhs, MeanLoss) and isinstance(a.rhs.yhat, Sym):
            producer = graph.producer(a.rhs.yhat.name)
            for fusion in FUSIONS:
                fused = producer and fusion.rule(producer, a.rhs)
                if fused is not None:
                    skipped[producer.target.name] = fusion.name
                    doc = " ".join((fusion.rule.__doc__ or "").split())
                    law = _top_level_cut(doc[doc.find("∂"):], (", using", ", used", ": "))
                    rule = f"{fusion.name}, fused (∂L/∂{naming.text(producer.target.name)} "\
                           f"skipped): {law.rstrip('.')}" if "∂" in doc else fusion.name
                    back(producer.rhs.children[0], fused, None, name, [(rule, False)], "fused")
                    break
            else:
                back(a.rhs, g, a.target, name, [], "")
        else:
            back(a.rhs, g, a.target, name, [], "")
    for name in parts:  # the network's own term first, penalties after (derive's order)
        parts[name].sort(key=lambda p: p.kind in PENALTY_RULES)
    return parts, skipped


def cotangent(target: Sym, parts: list[Part], loss: str) -> Node:
    """The incoming cotangent of ``target`` as derive names it: 1 for the loss (and
    for a value whose cotangent is exactly 1), else the symbol dV."""
    if target.name == loss or add([p.value for p in parts]) == ONE:
        return ONE
    return Sym(naming.cotangent(target.name), target.shape, "cotangent")


# --------------------------------------------------------------------------
# Expression mode: the expression cut into units
# --------------------------------------------------------------------------


def _children_replaced(node: Node, names: dict[Node, Sym]) -> Node:
    from symgrad.derive import transform

    return transform(node, lambda n: None if n is node else names.get(n))


def expr_graph(problem) -> tuple[Graph, dict[str, str]]:
    """The expression of ``problem`` as a graph of units u₁ = X w, u₂ = …, f = …
    (each distinct non-inline subexpression a unit), and the display names."""
    from symgrad.derive import walk

    order: list[Node] = []
    seen: set[Node] = set()
    stack: list[tuple[Node, bool]] = [(problem.root, False)]
    while stack:  # post-order, children left to right, each distinct node once
        node, done = stack.pop()
        if done:
            if node not in seen:
                seen.add(node)
                order.append(node)
            continue
        if node in seen or isinstance(node, Sym):
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(node.children))
    units = [n for n in order if n is problem.root or not isinstance(n, INLINE)]
    taken = set(problem.shapes)
    base = next(b for b in ("u", "v", "t", "h", "q") if not any(
        re.fullmatch(rf"{b}\d*", n) for n in taken))
    names: dict[Node, Sym] = {}
    display = {"%f": "f"}
    assignments = []
    for i, node in enumerate(units, 1):
        last = node is problem.root
        name = "%f" if last else f"%{base}{i}"
        if not last:
            display[name] = f"{base}{str(i).translate(naming._SUB)}"
        target = Sym(name, node.shape, "value")
        assignments.append(Assignment(target, _children_replaced(node, names)))
        names[node] = target
    space = problem.space
    params = [space.matrices[w][0] for w in problem.wrt]
    data = [s for s, _ in space.matrices.values() if s.role == "data" and any(
        isinstance(n, Sym) and n.name == s.name for n in walk(problem.root))]
    return Graph.of(assignments, params, data), display


# --------------------------------------------------------------------------
# The picture
# --------------------------------------------------------------------------


def _graphviz():
    try:
        import graphviz
    except ImportError:
        raise SymgradError(WHERE, "drawing needs the Python package graphviz; install it with "
                           "pip install 'symgrad[notebook]' (or pip install graphviz)") from None
    return graphviz


def _dot_program() -> str:
    dot = shutil.which("dot")
    if dot is None:
        raise SymgradError(WHERE, "rendering .svg or .png needs Graphviz's dot program, which "
                           "is not installed (Debian/Ubuntu: apt-get install graphviz); "
                           "-o FILE.dot needs nothing")
    return dot


def render(source: str, fmt: str) -> bytes:
    """DOT → ``fmt`` (svg, png) by Graphviz's ``dot``; one line if that cannot be done."""
    try:
        run = subprocess.run([_dot_program(), f"-T{fmt}"], input=source.encode("utf-8"),
                             capture_output=True, timeout=DOT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise SymgradError(WHERE, f"dot took longer than {DOT_SECONDS} s; write .dot "
                           "instead") from None
    except OSError as e:
        raise SymgradError(WHERE, f"cannot run dot: {e.strerror or e}") from None
    if run.returncode != 0:
        message = " ".join(run.stderr.decode("utf-8", "replace").split())[:200]
        raise SymgradError(WHERE, f"dot failed (exit {run.returncode}): {message}")
    return run.stdout


@dataclass(frozen=True)
class Picture:
    """A drawn graph: ``source`` is its DOT; ``render("svg")``, ``save(path)``; in a
    notebook it shows itself as SVG."""

    title: str
    digraph: object  # graphviz.Digraph
    backward: bool
    nodes: int
    edges: int

    @property
    def source(self) -> str:
        return self.digraph.source  # type: ignore[attr-defined]

    def render(self, fmt: str = "svg") -> bytes:
        return render(self.source, fmt)

    def save(self, path: str | Path, where: str | None = None, *, force: bool = False,
             inputs=()) -> bool:
        """Write the picture; its format comes from the extension (.svg, .png, .dot).
        The file carries symgrad's mark with the hash of its content (:func:`marked`), so
        a picture symgrad wrote, unedited, is replaced; any other existing file is kept
        unless ``force``, and one of ``inputs`` (the spec drawn) always."""
        fmt = picture_format(path, where)
        data = self.source.encode("utf-8") if fmt == "dot" else self.render(fmt)
        return files.write_bytes(path, marked(data, fmt), where, force=force,
                                 owner_check=picture_ownership, inputs=inputs)

    def _repr_svg_(self) -> str | None:
        """The SVG, scaled down to the output cell's width when it is wider (its viewBox
        kept, its natural size otherwise): ``max-width:100%; height:auto`` on the root."""
        try:
            svg = self.render("svg").decode("utf-8")
        except SymgradError:
            return None  # no dot: the notebook falls back to repr
        return fit_width(svg)

    def __repr__(self) -> str:
        kind = "forward and backward" if self.backward else "forward"
        return (f"<symgrad picture of {self.title} ({kind}): {self.nodes} nodes, "
                f"{self.edges} edges; .source is DOT>")

    def __str__(self) -> str:
        return self.source


# ------------------------------------------------------------------------------------------
# The mark of a picture symgrad wrote: the hash of the rest of the file, as a generated
# module's header records it (symgrad.files), in the place each format allows
# ------------------------------------------------------------------------------------------

MARK = "symgrad graph; sha256 {digest}; replaced by symgrad graph unless edited"
_MARK_RE = re.compile(rb"symgrad graph; sha256 (?P<digest>[0-9a-f]{16}); "
                      rb"replaced by symgrad graph unless edited")
_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_KEY = b"symgrad"
_IHDR_END = len(_PNG) + 4 + 4 + 13 + 4  # the signature, then IHDR: length, type, data, CRC


def _mark(body: bytes) -> str:
    return MARK.format(digest=files.content_digest(body))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (len(data).to_bytes(4, "big") + kind + data
            + zlib.crc32(kind + data).to_bytes(4, "big"))


def marked(data: bytes, fmt: str) -> bytes:
    """``data`` (a picture in ``fmt``) with symgrad's mark, which records the SHA-256 of
    ``data``: DOT a first ``//`` comment line; SVG an XML comment line after the XML
    declaration (which must come first); PNG a tEXt chunk right after IHDR."""
    mark = _mark(data).encode("ascii")
    if fmt == "png":
        if not data.startswith(_PNG) or data[12:16] != b"IHDR":
            return data  # pragma: no cover - dot's PNG always starts so
        chunk = _png_chunk(b"tEXt", _PNG_KEY + b"\0" + mark)
        return data[:_IHDR_END] + chunk + data[_IHDR_END:]
    if fmt == "svg":
        first, nl, rest = data.partition(b"\n")
        if first.startswith(b"<?xml"):
            return first + nl + b"<!-- " + mark + b" -->\n" + rest
        return b"<!-- " + mark + b" -->\n" + data
    return b"// " + mark + b"\n" + data


def _unmarked(data: bytes) -> tuple[bytes, bytes] | None:
    """(the mark, the picture without it), or None when ``data`` has no mark where
    :func:`marked` puts one."""
    if data.startswith(_PNG):
        head = data[_IHDR_END:_IHDR_END + 8]
        if len(head) < 8 or head[4:] != b"tEXt":
            return None
        end = _IHDR_END + 12 + int.from_bytes(head[:4], "big")
        text = data[_IHDR_END + 8:end - 4]
        if not text.startswith(_PNG_KEY + b"\0") or len(data) < end:
            return None
        return text[len(_PNG_KEY) + 1:], data[:_IHDR_END] + data[end:]
    lines = data.split(b"\n", 2)
    for k in (0, 1) if data.startswith(b"<?xml") else (0,):
        if k >= len(lines) - 1:
            break
        line = lines[k]
        for left, right in ((b"// ", b""), (b"<!-- ", b" -->")):
            if line.startswith(left) and line.endswith(right):
                rest = b"\n".join(lines[k + 1:])
                return line[len(left):len(line) - len(right)], (
                    lines[0] + b"\n" + rest if k == 1 else rest)
    return None


def picture_ownership(path: Path) -> str | None:
    """None when ``path`` is a picture symgrad graph wrote and nobody edited since (its
    mark's hash still matches); else why it is kept."""
    try:
        data = files.read_bytes(path, limit=files.MODULE_BYTES)
    except SymgradError:
        data = b""
    found = _unmarked(data)
    m = _MARK_RE.fullmatch(found[0]) if found else None
    if m is None:
        return "exists and was not written by symgrad graph; use --force to overwrite"
    if m["digest"].decode() != files.content_digest(found[1]):
        return ("was edited after symgrad graph wrote it; use --force to overwrite, or -o "
                "elsewhere")
    return None


def fit_width(svg: str) -> str:
    """``svg`` with ``style="max-width:100%;height:auto"`` on its root element, so that a
    notebook (or a page) shows it no wider than its column; a saved file keeps dot's size."""
    return re.sub(r"<svg\b", '<svg style="max-width:100%;height:auto"', svg, count=1)


def picture_format(path: str | Path, where: str | None = None) -> str:
    if str(path) == files.STDOUT:
        return "dot"
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise SymgradError(where or str(path), "the picture's format comes from the "
                           "extension: give a name ending in .svg, .png or .dot")
    return fmt


class _Drawing:
    """Builds the Digraph; ``text(node)`` prints a formula, ``name(n)`` a value's name."""

    def __init__(self, title: str, graph: Graph, text, name, sizes: dict, loss_name: str):
        gv = _graphviz()
        self.graph, self.text, self.name, self.sizes = graph, text, name, sizes
        self.loss_name = loss_name
        self.dot = gv.Digraph(name=re.sub(r"\W", "_", title) or "graph")
        self.dot.attr(rankdir="TB", label=title, labelloc="t", fontname="DejaVu Sans",
                      fontsize="14", nodesep="0.3", ranksep="0.6")
        self.dot.attr("node", fontname="DejaVu Sans", fontsize="11")
        self.dot.attr("edge", fontname="DejaVu Sans", fontsize="10", arrowsize="0.7")
        self.escape = gv.escape
        self.nodes = self.edges = 0

    def label(self, *lines: str) -> str:
        return "\\n".join(self.escape(line) for line in lines if line)

    def shape(self, sym: Sym) -> str:
        dims = [sp.sympify(d).xreplace(self.sizes) for d in sym.shape]
        if all(d == 1 for d in dims):
            return "scalar"
        return " × ".join(str(d) for d in dims)

    def node(self, key: str, label: str, kind: str, graph=None) -> None:
        (graph or self.dot).node(key, label, **_STYLE[kind])
        self.nodes += 1

    def edge(self, a: str, b: str, **attrs) -> None:
        self.dot.edge(a, b, **attrs)
        self.edges += 1

    def cot_name(self, name: str) -> str:
        """δ₁ = ∂L/∂Z₁ for a pre-activation, ū₁ = ∂f/∂u₁ for a unit of an expression,
        else ∂L/∂V."""
        shown = f"∂{self.loss_name}/∂{self.name(name)}"
        if self.graph.spec is not None and re.fullmatch(r"Z\d+", name):
            return f"{naming.text('d' + name)} = {shown}"
        if name.startswith("%"):
            return f"{bar(self.name(name))} = {shown}"
        return shown

    def forward(self) -> None:
        g = self.graph
        for sym in (*g.data, *g.params):
            self.node(f"v_{sym.name}", self.label(self.name(sym.name), self.shape(sym)),
                      sym.role if sym.role in _STYLE else "data")
        for mask, p in g.masks:  # dropout masks: inputs of the step, drawn per batch
            self.node(f"v_{mask.name}", self.label(self.name(mask.name), self.shape(mask),
                                                   f"dropout mask, p = {p:g}"), "mask")
        kinds = _layer_kinds(g)
        for a in g.assignments:
            kind = "loss" if a.target.name == g.loss.name else "value"
            self.node(f"v_{a.target.name}", self.label(
                f"{self.name(a.target.name)} = {self.text(a.rhs)}", self.shape(a.target),
                kinds.get(a.target.name, "")), kind)
        skips = _skips(g)
        for a in g.assignments:
            for leaf in _leaves(a.rhs):
                skip = skips.get((leaf.name, a.target.name))
                extra = {} if skip is None else {**_SKIP_EDGE, **({"label": skip} if skip else {})}
                self.edge(f"v_{leaf.name}", f"v_{a.target.name}", **extra)
            for ref in _refs(a.rhs):  # read, not differentiated through: dashed
                self.edge(f"v_{ref.name}", f"v_{a.target.name}", **_READ_EDGE)

    def backward(self) -> None:
        g = self.graph
        parts, skipped = sweep(g)
        loss = g.loss
        primal = {s.name: s for s in (*g.params,)} | {a.target.name: a.target
                                                       for a in g.assignments}
        order = [a.target.name for a in reversed(g.assignments)] + [p.name for p in g.params]
        for name in order:
            if name not in parts:
                continue
            with self.dot.subgraph() as column:  # the cotangent beside its value
                column.attr(rank="same")
                if name == loss.name:
                    self.node(f"g_{name}", self.label(f"∂{self.loss_name}/∂{self.name(name)} = 1",
                                                      "seed of the sweep"), "cotangent", column)
                else:
                    total = add([p.value for p in parts[name]])
                    self.node(f"g_{name}", self.label(f"{self.cot_name(name)} = {self.text(total)}",
                                                      self.shape(primal[name])), "cotangent",
                              column)
                    if len(parts[name]) > 1:
                        self.node(f"s_{name}", "+", "sum", column)
                column.edge(f"v_{name}", f"s_{name}" if len(parts[name]) > 1 else f"g_{name}",
                            style="invis")
                if len(parts[name]) > 1:
                    column.edge(f"s_{name}", f"g_{name}", **_BACK_EDGE)
                    self.edges += 1
            into = f"s_{name}" if len(parts[name]) > 1 else f"g_{name}"
            for p in parts[name]:
                self.edge(f"g_{p.source}", into, label=self.label(self.text(p.value), p.rule),
                          constraint="false", **_BACK_EDGE)
        for name, fusion in sorted(skipped.items()):
            self.dot.node(f"v_{name}", xlabel=self.escape(f"∂L/∂{self.name(name)}: skipped "
                                                          f"({fusion})"), fontsize="11")


def bar(name: str) -> str:
    """The adjoint's name: u₁ → ū₁ (a macron on the first letter; precomposed where
    Unicode has the letter, so that fonts draw it well)."""
    return unicodedata.normalize("NFC", name[:1] + "\u0304") + name[1:]


def _layer_kinds(graph: Graph) -> dict[str, str]:
    """Z_l → the kind of a layer beyond dense (a third line of its node): batchnorm, ε = …;
    dropout, p = …; add; concat."""
    spec = graph.spec
    if spec is None:
        return {}
    labels = {f"Z{l}": layer.kind.label(layer) for l, layer in enumerate(spec.layers, 1)}
    return {name: label for name, label in labels.items() if label}


def _skips(graph: Graph) -> dict[tuple[str, str], str]:
    """(value, Z_l) → label, where layer l reads a value other than the previous layer's
    output (drawn in its own colour): "skip" into an add or concat, else a branch."""
    spec = graph.spec
    if spec is None:
        return {}
    out = {}
    for l, layer in enumerate(spec.layers, 1):
        previous = "X" if l == 1 else f"A{l - 1}"
        for name in spec.sources(l):
            if name != previous:
                out[(name, f"Z{l}")] = "skip" if layer.kind.joins else ""
    return out


def _refs(node: Node):
    """The values ``node`` reads without being differentiated through them (``refs``)."""
    seen: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        for r in n.refs:
            if isinstance(r, Sym) and r.name not in seen:
                seen.add(r.name)
                yield r
        stack.extend(reversed(n.children))


def _leaves(node: Node):
    """The symbols of ``node``, once per use, in reading order."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Sym):
            yield n
        else:
            stack.extend(reversed(n.children))


def draw(spec_or_path, backward: bool = False) -> Picture:
    """The computational graph of a network spec (a :class:`~symgrad.Spec` or a TOML
    path): forward values with formulas and shapes; with ``backward`` the cotangents,
    the rule on each edge, and a ``+`` where a value feeds two consumers."""
    from symgrad.derive import derive
    from symgrad.printing import text
    from symgrad.spec import as_spec

    spec = as_spec(spec_or_path)
    d = derive(spec)  # resolves each activation's derivative (budgeted) as derive does
    graph = d.graph
    title = f"{spec.name}: {'backward pass' if backward else 'forward pass'}"
    drawing = _Drawing(title, graph, text, naming.text, graph.sizes(), "L")
    drawing.forward()
    if backward:
        drawing.backward()
    return Picture(title, drawing.dot, backward, drawing.nodes, drawing.edges)


def draw_expr(expr: str, shapes, wrt, backward: bool = False) -> Picture:
    """The graph of an expression (``--expr``): ``shapes`` as ``["X=N,d", …]``, ``wrt``
    a name or names."""
    from symgrad import exprmode

    problem = exprmode.parse_problem(expr, list(shapes), wrt)
    graph, display = expr_graph(problem)
    printer = _expr_printer(problem, display)
    title = f"f = {problem.text}"
    drawing = _Drawing(title, graph, printer, lambda n: display.get(n) or naming.text(n), {},
                       "f")
    drawing.forward()
    if backward:
        drawing.backward()
    return Picture(title, drawing.dot, backward, drawing.nodes, drawing.edges)


def _expr_printer(problem, display: dict[str, str]):
    from symgrad import exprmode

    class Printer(exprmode.ExprTextPrinter):
        def _print_Sym(self, node):
            if node.name in display:
                return display[node.name]
            if node.role == "cotangent":  # the adjoint ū₁ = ∂f/∂u₁
                return bar(display.get(node.name[1:]) or naming.text(node.name[1:]))
            return super()._print_Sym(node)

    names = exprmode._coef_names(problem, False)
    return lambda node: Printer(names)._print(exprmode.shown(exprmode.simplify(node)))


# --------------------------------------------------------------------------
# symgrad graph
# --------------------------------------------------------------------------


@command("graph")
def cmd_graph(args: argparse.Namespace) -> int:
    if args.expr is None:
        if args.spec is None:
            raise SymgradError(WHERE, "give a SPEC or --expr EXPR")
        if args.shape or args.wrt:
            raise SymgradError(WHERE, "--shape and --wrt go with --expr")
    elif args.spec is not None:
        raise SymgradError(WHERE, "give either a SPEC or --expr, not both")
    out = args.output or files.STDOUT
    picture_format(out, f"{WHERE}: -o")  # a bad name is refused before any work
    if args.expr is None:
        picture = draw(args.spec, backward=args.backward)
    else:
        if not args.wrt:
            raise SymgradError("--wrt", "name the variable(s) to differentiate, e.g. --wrt w")
        picture = draw_expr(args.expr, args.shape or [], args.wrt, backward=args.backward)
    if out == files.STDOUT:
        sys.stdout.write(picture.source)
        return 0
    picture.save(out, force=args.force,
                 inputs=() if args.spec is None else (args.spec,))
    print(f"symgrad: wrote {out}", file=sys.stderr)
    return 0

