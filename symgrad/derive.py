"""derivation: the reverse sweep over the graph, at matrix level.

Cotangents are summed where a value fans out (a weight feeding its layer *and* a
penalty), so no op special-cases it — micrograd's ``+=``.  Before an op's own rule
is used, the rewrite rules in :data:`FUSIONS` are tried: where a composite is
simpler than its parts (softmax∘cross-entropy → (Ŷ − Y)/N) the composite's rule is
used.  Fusions are claims, and ``symgrad derive --prove`` (:mod:`symgrad.crosscheck`)
proves them, like every other formula, by scalar expansion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp

from symgrad import budget, naming
from symgrad.activations import A as A_SYM
from symgrad.graph import Assignment, Graph, build_graph
from symgrad.losses import YHAT, Y
from symgrad.ops import (
    ONE,
    Elementwise,
    Map,
    MeanLoss,
    N,
    Node,
    Scale,
    Softmax,
    Sub,
    Sym,
    add,
    filled,
)
from symgrad.spec import Spec, as_spec

__all__ = ["Derivation", "Equation", "Fusion", "FUSIONS", "derive", "substitute", "walk"]


# --------------------------------------------------------------------------
# Tree utilities
# --------------------------------------------------------------------------


def transform(node: Node, fn: Callable[[Node], Node | None]) -> Node:
    """Rebuild ``node`` bottom-up, replacing any subtree for which ``fn`` returns a node."""
    hit = fn(node)
    if hit is not None:
        return hit
    if isinstance(node, Sym) or not dataclasses.is_dataclass(node):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, Node):
            new = transform(value, fn)
        elif isinstance(value, tuple) and value and isinstance(value[0], Node):
            new = tuple(transform(v, fn) for v in value)
        elif f.name == "args" and isinstance(node, Map):
            new = tuple((s, transform(v, fn)) for s, v in value)
        else:
            continue
        if new is not value:
            changes[f.name] = new
    return dataclasses.replace(node, **changes) if changes else node


def substitute(node: Node, mapping: dict[str, Node]) -> Node:
    """Replace the named leaves of ``node``."""
    return transform(node, lambda n: mapping.get(n.name) if isinstance(n, Sym) else None)


def walk(node: Node):
    yield node
    for child in node.children:
        yield from walk(child)


# --------------------------------------------------------------------------
# Fusions: composite rules, each a claim the cross-check proves
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fusion:
    """When the loss's Ŷ is produced by an op this rule knows, the cotangent of that
    op's *input* is given directly.  ``rule`` returns it (or None: no match)."""

    name: str
    rule: Callable[[Assignment, MeanLoss], Node | None]
    assumption: str = ""


def _softmax_cross_entropy(producer: Assignment, loss: MeanLoss) -> Node | None:
    """softmax∘cross-entropy: ∂L/∂Z = (Ŷ − Y)/N, using Σ_k y_k = 1 per row."""
    if isinstance(producer.rhs, Softmax) and loss.loss.name == "cross_entropy":
        return Scale(1 / N, Sub(producer.target, loss.y))
    return None


def _elementwise_loss(producer: Assignment, loss: MeanLoss) -> Node | None:
    """f∘ℓ for an elementwise f with f′ = g(a): ∂L/∂Z = ℓ′(a, y)·g(a)/N, used only
    when the product simplifies (sigmoid∘BCE → Ŷ − Y; identity∘mse → Ŷ − Y)."""
    if not isinstance(producer.rhs, Elementwise):
        return None
    g = producer.rhs.fn.output_derivative
    if g is None:
        return None
    d = loss.loss.derivative.xreplace({YHAT: A_SYM})
    if g == 1:
        combined = d
    else:
        left = budget.optional_end(budget.SIMPLIFY_SECONDS) - budget.clock()
        try:  # a simpler fused form is optional: past the budget, the plain chain
            if left <= 0:
                return None
            with budget.deadline(left):
                combined = sp.factor(sp.cancel(d * g))
        except budget.EXHAUSTED:
            return None
        if combined.has(sp.Piecewise) or sp.count_ops(combined) >= sp.count_ops(d) + sp.count_ops(g):
            return None
    if not combined.has(A_SYM, Y):  # ℓ affine in ŷ: c 𝟏𝟏ᵀ/N, a matrix like Ŷ
        return filled(combined / N, producer.target)
    return Scale(1 / N, Map(combined, ((A_SYM, producer.target), (Y, loss.y)), note="fused"))


FUSIONS: tuple[Fusion, ...] = (
    Fusion("softmax∘cross-entropy", _softmax_cross_entropy,
           assumption="each row of Y sums to 1 (one-hot labels or probabilities)"),
    Fusion("elementwise activation∘loss", _elementwise_loss),
)


# --------------------------------------------------------------------------
# The derivation
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Equation:
    """``target = rhs``; ``rule`` names the chain-rule step that produced it."""

    target: Sym
    rhs: Node
    rule: str = ""


@dataclass
class Derivation:
    """Forward equations, the backward chain and the update, for one spec.

    Renders itself: ``text()``, ``latex()``, ``markdown()``; in Jupyter through
    ``_repr_latex_`` / ``_repr_markdown_``.  ``show_steps`` (``derive(spec, steps=True)``)
    is the default of their ``steps``: each chain-rule step and the scalar derivatives.
    """

    spec: Spec
    graph: Graph
    forward: list[Equation]
    steps: list[Equation]  # every cotangent, in sweep order, as derived
    backward: list[Equation]  # the same with single-use intermediates inlined
    fusions: list[str] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    show_steps: bool = False  # the default of steps= in text(), latex(), markdown(), Jupyter
    #: the statement of each readable rule name in ``steps`` (an op's ``rule`` → its ``law``)
    rules: dict[str, str] = field(default_factory=dict)

    @property
    def gradients(self) -> dict[str, Node]:
        """∂L/∂param for every parameter (in terms of forward values and δ's)."""
        return {
            naming.primal(e.target.name): e.rhs
            for e in self.backward
            if e.target.role == "cotangent" and naming.primal(e.target.name) in self.param_names
        }

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.graph.params]

    def text(self, steps: bool | None = None) -> str:
        from symgrad.printing import render

        return render(self, "text", steps=self._steps(steps))

    def latex(self, steps: bool | None = None) -> str:
        """LaTeX for a document or ``IPython.display.Latex``: display math per section,
        titled by bold inline math (no ``%`` comment lines, which a notebook shows as text)."""
        from symgrad.printing import derivation_latex

        return derivation_latex(self, self._steps(steps))

    def markdown(self, steps: bool | None = None) -> str:
        from symgrad.printing import render

        return render(self, "markdown", steps=self._steps(steps))

    def __str__(self) -> str:
        return self.text()

    def _repr_latex_(self) -> str:
        from symgrad.printing import render

        if self.show_steps:
            return self.latex(steps=True)
        return render(self, "jupyter-latex")

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def _steps(self, steps: bool | None) -> bool:
        return self.show_steps if steps is None else bool(steps)

    def __repr__(self) -> str:
        from symgrad.display import short_repr
        from symgrad.printing import _network_line

        return short_repr("Derivation", _network_line(self),
                          f"({len(self.backward)} backward equations"
                          + (", with steps)" if self.show_steps else ")"))


PENALTY_RULES = ("SqNormHalf", "AbsSum")

SKIP = " (skip)"  # an add layer's part of a cotangent summed at a fan-out: the skip path


def rule_of(node: Node) -> tuple[str, str]:
    """The name of ``node``'s rule in the steps and its statement ("" for the ops named by
    their class, whose docstring states the rule): an op's own ``rule``/``law`` first."""
    rule = getattr(node, "rule", None)
    if isinstance(rule, str) and rule:
        return rule, getattr(node, "law", "")
    return type(node).__name__, ""


def derive(spec: Spec, steps: bool = False) -> Derivation:
    """Derive the backpropagation formulas of ``spec`` by the reverse sweep.

    Each activation and the loss are differentiated first, within
    :data:`symgrad.budget.SIMPLIFY_SECONDS` (past it, one line naming the layer).
    ``steps``: the derivation shows each chain-rule step by default (its ``text()``,
    ``latex()``, ``markdown()`` and its display in Jupyter), as ``derive --steps``."""
    spec = as_spec(spec)
    with budget.shared_budget(budget.SIMPLIFY_SECONDS):  # simpler forms: one budget in all
        for layer in spec.layers:
            layer.fn.resolve(f"{layer.where}.activation")
        spec.loss_fn.resolve(
            f"{spec.source}: loss.{'expr' if spec.loss_expr is not None else 'kind'}")
        d = derive_graph(build_graph(spec))
    d.show_steps = bool(steps)
    return d


def derive_graph(graph: Graph) -> Derivation:
    """The reverse sweep over ``graph``."""
    spec = graph.spec
    forward = [Equation(a.target, a.rhs) for a in graph.assignments]
    uses: dict[str, int] = {}
    for a in graph.assignments:
        for leaf in walk(a.rhs):
            if isinstance(leaf, Sym):
                uses[leaf.name] = uses.get(leaf.name, 0) + 1

    cot: dict[str, list[tuple[Node, str]]] = {graph.loss.name: [(ONE, "seed")]}
    steps: list[Equation] = []
    fusions: list[str] = []
    assumptions: list[str] = []
    skipped: set[str] = set()
    params = {p.name for p in graph.params}
    rules: dict[str, str] = {}
    layer_rules = dict(_layer_sums(graph))  # an add layer's sum, by its op's id
    skips = {name for name, _ in layer_rules.values()}
    live = _live(graph)

    def leads_to_params(node: Node) -> bool:
        return any(isinstance(n, Sym) and n.name in live for n in walk(node))

    def emit(sym: Sym) -> Node:
        # the network's own term first, penalties after (in the order of L)
        parts = sorted(cot.pop(sym.name), key=lambda p: p[1] in PENALTY_RULES)
        rhs = add([p for p, _ in parts])
        names = [r + SKIP if r in skips and len(parts) > 1 else r for _, r in parts]
        rule = " + ".join(names)
        if sym.name == graph.loss.name or rhs == ONE:
            return ONE
        g = Sym(naming.cotangent(sym.name), sym.shape, "cotangent")
        steps.append(Equation(g, rhs, rule))
        return g

    def backprop(node: Node, g: Node, out: Sym | None, rule: str) -> None:
        if isinstance(node, Sym):
            if node.role == "data":
                return
            cot.setdefault(node.name, []).append((g, rule))
            uses[node.name] -= 1
            if node.name in params and uses[node.name] == 0:
                emit(node)
            return
        grads = node.vjp(g, out)
        name, law = layer_rules.get(id(node)) or rule_of(node)
        if law:
            rules[name] = law
            if name in skips:
                rules[name + SKIP] = law
        for child, gc in zip(node.children, grads, strict=True):
            if gc is not None and leads_to_params(child):  # no cotangents of data
                backprop(child, gc, None, name)

    for a in reversed(graph.assignments):
        if a.target.name in skipped or a.target.name not in cot:
            continue
        g = emit(a.target)
        if isinstance(a.rhs, MeanLoss):
            producer = graph.producer(a.rhs.yhat.name)
            for fusion in FUSIONS:
                fused = producer and fusion.rule(producer, a.rhs)
                if fused is not None:
                    fusions.append(fusion.name)
                    if fusion.assumption:
                        assumptions.append(fusion.assumption)
                    skipped.add(producer.target.name)
                    pre = producer.rhs.children[0]
                    backprop(pre, fused, None, f"{fusion.name} (fused)")
                    break
            else:
                backprop(a.rhs, g, a.target, "")
        else:
            backprop(a.rhs, g, a.target, "")
    # values whose cotangent was completed by the last assignments (Z1)
    # (and parameters whose other uses had a zero cotangent: x ⊙ heaviside(x))
    by_name = {p.name: p for p in graph.params}
    for name in list(cot):
        emit(by_name[name] if name in by_name else Sym(name, _shape_of(graph, name), "value"))

    backward = _inline(steps, keep={naming.cotangent(p) for p in params})
    return Derivation(spec, graph, forward, steps, backward, fusions, assumptions, rules=rules)


def _live(graph: Graph) -> set[str]:
    """The names whose cotangent is needed: the parameters and every value computed
    (through an op's children, not its refs) from one.  A value computed from data alone
    (dropout, batchnorm or layernorm on X) has none: the sweep stops there, as at X."""
    live = {p.name for p in graph.params}
    for a in graph.assignments:
        if any(isinstance(n, Sym) and n.name in live for n in walk(a.rhs)):
            live.add(a.target.name)
    return live


def _layer_sums(graph: Graph):
    """(id of the op, (rule, law)) of each layer whose type names its op's rule (an
    ``add`` layer's sum Z_l: the generic Add, named for the layer it computes)."""
    if graph.spec is None:
        return
    for l, layer in enumerate(graph.spec.layers, 1):
        if layer.kind.sum_rule is not None:
            a = graph.producer(f"Z{l}")
            if a is not None:
                yield id(a.rhs), layer.kind.sum_rule


def _shape_of(graph: Graph, name: str):
    for a in graph.assignments:
        if a.target.name == name:
            return a.target.shape
    raise KeyError(name)


def _inline(steps: list[Equation], keep: set[str]) -> list[Equation]:
    """Inline cotangents used exactly once (∂L/∂A₁ into δ₁), except δ's and gradients.

    δ_l (= dZ_l) stays named: it is the textbook quantity and is used three times."""
    result = list(steps)
    changed = True
    while changed:
        changed = False
        for i, eq in enumerate(result):
            name = eq.target.name
            if name in keep or name.startswith("dZ"):
                continue
            users = [j for j, e in enumerate(result) if name in e.rhs.syms()]
            count = sum(_count(result[j].rhs, name) for j in users)
            if count == 1:
                j = users[0]
                result[j] = Equation(
                    result[j].target, substitute(result[j].rhs, {name: eq.rhs}), result[j].rule
                )
                del result[i]
                changed = True
                break
    return result


def _count(node: Node, name: str) -> int:
    return sum(1 for n in walk(node) if isinstance(n, Sym) and n.name == name)
