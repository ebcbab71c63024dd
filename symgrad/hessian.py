"""Second order for expressions: ``symgrad derive --expr … --wrt x --hessian``.

The Hessian-vector product is a gradient: for a direction V of x's shape,

    ∇²f[V] = ∂/∂x ⟨∇f(x), V⟩,

so the engine's own matrix-level reverse sweep (:func:`symgrad.derive.derive_graph`, the
ops' vector-Jacobian rules) runs twice: once for g = ∇f (:func:`symgrad.exprmode.derive_expr`),
then over the scalar ⟨g, V⟩ with x the parameter and V data.  Every op a first-order rule
builds has a rule of its own (closure), so no SymPy matrix derivative is relied on; the
result is simplified by exprmode's rules like any gradient.

Where x is a vector (or a scalar), H[V] is linear in V as M V and the matrix M = ∇²f is
read off the tree (:func:`matrix_form`): A V → A, a ⊙ (B V) → diag(a) B, a scalar
⟨r, V⟩ → rᵀ (its row, by one more sweep).  For a matrix variable the Hessian is a 4-index
tensor: it is printed as the linear map V ↦ ∇²f[V].

Not twice differentiable (relu, abs, max/min, ‖·‖₁, huber, any piecewise body): refused in
one line.  Their second derivative is 0 almost everywhere, but a printed 0 would hide the
kinks where it does not exist (and Newton steps are meaningless there); say so instead.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import types
from dataclasses import dataclass, field

import sympy as sp

from symgrad import budget, naming
from symgrad import exprmode as em
from symgrad.budget import EXHAUSTED, deadline
from symgrad.derive import derive_graph, walk
from symgrad.errors import SymgradError
from symgrad.graph import Assignment, Graph
from symgrad.ops import (
    AbsSum,
    Add,
    ArgMask,
    Broadcast,
    Const,
    Extremum,
    Eye,
    Hadamard,
    Map,
    MatMul,
    Node,
    Norm,
    Ones,
    Scale,
    Sub,
    Sym,
    Trace,
    Transpose,
)
from symgrad.ops.structure import DiagMatrix

__all__ = ["HessianDerivation", "derive_hessian", "matrix_form", "prove_hessian",
           "generate_hessian", "HESSIAN_SECONDS"]

WHERE = "--hessian"
#: CPU seconds for the second sweep, its simplification and the matrix form together
HESSIAN_SECONDS = 30.0
_KINKS = (sp.Piecewise, sp.Heaviside, sp.Abs, sp.sign, sp.Max, sp.Min, sp.DiracDelta)


@dataclass
class HessianDerivation:
    first: em.ExprDerivation  # ∇f
    wrt: str
    direction: Sym  # V, of x's shape
    raw: Node  # ∇²f[V] as swept
    hv: Node  # ∇²f[V] simplified
    matrix: Node | None  # ∇²f (x a vector or a scalar), else None
    rewrites: dict = field(default_factory=dict)  # rule -> verdicts of its firings

    @property
    def problem(self) -> em.ExprProblem:
        return self.first.problem

    @property
    def is_matrix_variable(self) -> bool:
        return self.direction.shape[1] != 1

    def text(self, steps: bool = False) -> str:
        return render(self, "text", steps)

    def latex(self, steps: bool = False) -> str:
        return render(self, "latex", steps)

    def markdown(self, steps: bool = False) -> str:
        return render(self, "markdown", steps)

    def __str__(self) -> str:
        return self.text()


# --------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------


def _kink(problem: em.ExprProblem) -> str | None:
    """The first op of f that is not twice differentiable, in words (None: all smooth)."""
    for n in walk(problem.root):
        if isinstance(n, Extremum | ArgMask):
            return "max/min"
        if isinstance(n, AbsSum) or (isinstance(n, Norm) and n.ord not in (2, "fro")):
            return f"the norm {em.text(n, problem)}"
        if isinstance(n, Map) and any(n.expr.has(k) for k in _KINKS):
            return _kink_name(n, problem)
    return None


def _kink_name(n: Map, problem: em.ExprProblem) -> str:
    """The activation's name (relu, huber, …) where the body is one, else its printed form."""
    from symgrad.activations import ACTIVATIONS, X

    if len(n.args) == 1:
        body = n.expr.xreplace({n.args[0][0]: X})
        for a in ACTIVATIONS.values():
            if a.expr is not None and body == a.expr:
                return a.name
    if isinstance(n.expr, sp.Abs) and len(n.args) == 1:
        return "abs"
    return em.text(n, problem)


def _direction(problem: em.ExprProblem, shape) -> Sym:
    """V (a matrix x) or v (a vector x), renamed past the user's names."""
    base = "v" if shape[1] == 1 else "V"
    taken = set(problem.shapes) | set(em._RESERVED) | {"f", "hessian", "hvp"}
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}{k}"
    return Sym(name, shape, "data")


def _check(problem: em.ExprProblem) -> str:
    if len(problem.wrt) != 1:
        raise SymgradError(WHERE, "one --wrt name at a time (the Hessian in several variables "
                           f"is a block matrix; ask for each: --wrt {problem.wrt[0]})")
    kink = _kink(problem)
    if kink is not None:
        raise SymgradError(WHERE, f"f is not twice differentiable where the pieces of {kink} "
                           "meet (relu, abs, max/min: the second derivative is 0 almost "
                           "everywhere and undefined at the kink); symgrad refuses rather than "
                           "print 0")
    return problem.wrt[0]


# --------------------------------------------------------------------------
# The second sweep
# --------------------------------------------------------------------------


def _inner(g: Node, v: Sym) -> Node:
    """⟨g, V⟩ as a 1×1 node: gᵀ v for a column, tr(gᵀ V) for a matrix."""
    if v.shape[1] == 1:
        return MatMul(Transpose(g), v)
    return Trace(MatMul(Transpose(g), v))


def sweep(root: Node, wrt: Sym, data: list[Sym]) -> Node:
    """∂root/∂wrt by the engine's reverse sweep (root 1×1)."""
    f = Sym("f", (sp.Integer(1), sp.Integer(1)), "value")
    d = derive_graph(Graph.of([Assignment(f, root)], [wrt], data))
    for eq in d.steps:
        if eq.target.name == naming.cotangent(wrt.name):
            return eq.rhs
    return em._full(sp.S.Zero, wrt.shape)


def derive_hessian(problem: em.ExprProblem, prove_rules: bool = False) -> HessianDerivation:
    """∇²f[V] by a second reverse sweep over ⟨∇f, V⟩, simplified; ∇²f itself where x is a
    vector.  Past :data:`HESSIAN_SECONDS` of work: one-line error."""
    w = _check(problem)
    try:
        with deadline(HESSIAN_SECONDS):
            first = em.derive_expr(problem, prove_rules=prove_rules)
            x, shape = problem.space.matrices[w]
            v = _direction(problem, shape)
            data = [s for s, _ in problem.space.matrices.values() if s.role == "data"] + [v]
            raw = sweep(_inner(first.gradients[w], v), x, data)
            proof = _rule_proof(problem, v) if prove_rules else None
            fired: dict = {}
            hv = problem.assume.simplified(raw, lambda g: em.simplify(g, proof, fired))
            matrix = None
            if not _has(hv, v.name) and not _has(raw, v.name):
                matrix = em._full(sp.S.Zero, (shape[0], shape[0])) if shape[1] == 1 else None
            elif shape[1] == 1:
                m = matrix_form(hv, v, data)
                matrix = None if m is None else _inner_products(problem.assume.simplified(
                    m, lambda g: em.simplify(g, proof, fired)))
                if matrix is not None and tuple(shape) == (1, 1):  # a scalar x: H v = M v
                    hv = (Scale(matrix.c, MatMul(matrix.x, v)) if isinstance(matrix, Scale)
                          else MatMul(matrix, v))
    except EXHAUSTED:
        raise SymgradError(WHERE, f"too large to derive the second derivative in "
                           f"{HESSIAN_SECONDS:g} s (of CPU time)") from None
    return HessianDerivation(first, w, v, raw, hv, matrix, fired)


def _rule_proof(problem: em.ExprProblem, v: Sym):
    """exprmode's tiny instance for proving rule firings, with the direction's entries too."""
    proof = em.rule_proof(problem)
    if proof is not None:
        r, c = (int(sp.sympify(d).xreplace(proof.env)) for d in v.shape)
        proof.env[v.name] = sp.Matrix(r, c, lambda i, j: sp.Symbol(f"{v.name}_{i}{j}", real=True))
    return proof


def _has(node: Node, name: str) -> bool:
    return name in node.syms()


# --------------------------------------------------------------------------
# The matrix form: H[v] = M v
# --------------------------------------------------------------------------


def _times_scalar(m: Node, s: Node) -> Node:
    """M·s for a 1×1 node s."""
    c = em._const_value(s)
    if c is not None:
        return m if c == 1 else Scale(c, m)
    return Hadamard(m, Broadcast(s, tuple(m.shape)))


def _row_sweep(node: Node, v: Sym) -> Node:
    """∂node/∂v for a 1×1 node: v the one parameter, every other name data."""
    from symgrad.derive import transform

    param = Sym(v.name, v.shape, "param")
    names: dict[str, Sym] = {}

    def fn(n: Node) -> Node | None:
        if isinstance(n, Sym):
            new = param if n.name == v.name else Sym(n.name, n.shape, "data")
            names[n.name] = new
            return new
        return None

    root = transform(node, fn)
    return sweep(root, param, [s for s in names.values() if s.role == "data"])


def _weighted(a: Node, b: Node, v: Sym, data: list[Sym]) -> Node | None:
    """M with a ⊙ b = M v, for a free of v and b linear in v."""
    if isinstance(b, Broadcast) and tuple(b.x.shape) == (1, 1):  # a ⊙ 𝟏⟨r, v⟩ = a rᵀ v
        m = matrix_form(b.x, v, data)
        return None if m is None else MatMul(a, m)
    m = matrix_form(b, v, data)
    if m is None:
        return None
    if isinstance(a, Broadcast) and tuple(a.x.shape) == (1, 1):
        return _times_scalar(m, a.x)
    if isinstance(m, MatMul) and isinstance(m.a, DiagMatrix):  # diag(a) diag(b) = diag(a ⊙ b)
        return MatMul(DiagMatrix(Hadamard(a, m.a.x)), m.b)
    if isinstance(m, DiagMatrix):
        return DiagMatrix(Hadamard(a, m.x))
    return MatMul(DiagMatrix(a), m)


def _product(factors: list[Node]) -> Node:
    out = factors[0]
    for f in factors[1:]:
        out = MatMul(out, f)
    return out


def _regrouped(node: MatMul, v: Sym, data: list[Sym]) -> Node | None:
    """M for a product f₁ ⋯ fₖ whose one factor with v, fᵢ, is a column: the factors after it
    make a 1×1 value s, so the product is (f₁ ⋯ fᵢ) s — e.g. A v xᵀ Aᵀ x = (A v)(xᵀ Aᵀ x)."""
    factors: list[Node] = []

    def flat(n: Node) -> None:
        if isinstance(n, MatMul):
            flat(n.a)
            flat(n.b)
        else:
            factors.append(n)

    flat(node)
    live = [i for i, f in enumerate(factors) if _has(f, v.name)]
    if len(live) != 1 or tuple(factors[live[0]].shape[1:]) != (1,) or live[0] == len(factors) - 1:
        return None
    i = live[0]
    m = matrix_form(_product(factors[: i + 1]), v, data)
    return None if m is None else _times_scalar(m, _product(factors[i + 1 :]))


def _inner_products(node: Node) -> Node:
    """𝟏ᵀ(a ⊙ b) of named columns a, b as aᵀb, rowsum(a ⊙ b) of rows as a bᵀ (a 1×1 Hessian:
    2 XᵀX for x of one entry, not 2 𝟏ᵀ(X ⊙ X)), anywhere in node."""
    import dataclasses

    from symgrad.ops import ColSum, RowSum

    named = (Sym, Transpose)  # named arrays (and their transposes), not expressions
    if (isinstance(node, ColSum | RowSum) and isinstance(node.x, Hadamard)
            and isinstance(node.x.a, named) and isinstance(node.x.b, named)):
        a, b = node.x.a, node.x.b
        if isinstance(node, ColSum) and tuple(a.shape[1:]) == tuple(b.shape[1:]) == (1,):
            return MatMul(Transpose(_inner_products(a)), _inner_products(b))
        if isinstance(node, RowSum) and tuple(a.shape[:1]) == tuple(b.shape[:1]) == (1,):
            return MatMul(_inner_products(a), Transpose(_inner_products(b)))
    if not dataclasses.is_dataclass(node):
        return node
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, Node):
            new = _inner_products(value)
        elif isinstance(value, tuple) and value and all(isinstance(t, Node) for t in value):
            new = tuple(_inner_products(t) for t in value)
        else:
            continue
        if new is not value and new != value:
            changes[f.name] = new
    return dataclasses.replace(node, **changes) if changes else node


def matrix_form(node: Node, v: Sym, data: list[Sym]) -> Node | None:
    """M with node = M v, for a node linear in the column v (None where the tree has no
    recognized form)."""
    if not _has(node, v.name):
        return None
    if node == v:
        return Eye(v.shape[0])
    if tuple(node.shape) == (1, 1):  # ⟨r, v⟩: its row rᵀ, by one more sweep (v the parameter)
        return Transpose(_row_sweep(node, v))
    if isinstance(node, Add):
        parts = [matrix_form(t, v, data) for t in node.terms]
        return None if any(p is None for p in parts) else Add(tuple(parts))
    if isinstance(node, Sub):
        a, b = (matrix_form(t, v, data) if _has(t, v.name) else None for t in (node.a, node.b))
        if a is None and b is None:
            return None
        if not _has(node.b, v.name):
            return a if em._const_value(node.b) == 0 else None
        if not _has(node.a, v.name):
            return Scale(sp.Integer(-1), b) if em._const_value(node.a) == 0 else None
        return None if a is None or b is None else Sub(a, b)
    if isinstance(node, Scale):
        m = matrix_form(node.x, v, data)
        return None if m is None else Scale(node.c, m)
    if isinstance(node, MatMul):
        if not _has(node.a, v.name):
            m = matrix_form(node.b, v, data)
            return None if m is None else MatMul(node.a, m)
        if not _has(node.b, v.name) and tuple(node.b.shape) == (1, 1):
            m = matrix_form(node.a, v, data)
            return None if m is None else _times_scalar(m, node.b)
        if not _has(node.b, v.name) and tuple(node.a.shape[1:]) == (1,):
            return None
        return _regrouped(node, v, data)
    if isinstance(node, Hadamard):
        a, b = node.a, node.b
        if _has(a, v.name):
            a, b = b, a
        if _has(a, v.name):
            return None  # quadratic in v: not a Hessian
        return _weighted(a, b, v, data)
    if isinstance(node, Broadcast) and tuple(node.x.shape) == (1, 1):  # 𝟏 ⟨r, v⟩
        m = matrix_form(node.x, v, data)
        return None if m is None else MatMul(Ones((node.shape[0], sp.Integer(1))), m)
    if isinstance(node, Map):  # a body linear in its v-arguments: Σ ∂body/∂s ⊙ arg_s
        live = [(s, a) for s, a in node.args if _has(a, v.name)]
        symbols = {s for s, _ in live}
        coefs = [sp.diff(node.expr, s) for s, _ in live]
        if any(c.free_symbols & symbols for c in coefs) or sp.expand(
                node.expr - sum(c * s for c, (s, _) in zip(coefs, live, strict=True))) != 0:
            return None  # not linear in v
        rest = tuple((t, b) for t, b in node.args if t not in symbols)
        parts = []
        for c, (_, a) in zip(coefs, live, strict=True):
            if c == 0:
                continue
            if c.free_symbols & {t for t, _ in rest}:
                m = _weighted(Map(c, rest), a, v, data)
            else:
                m = matrix_form(a, v, data)
                m = m if m is None or c == 1 else Scale(c, m)
            if m is None:
                return None
            parts.append(m)
        return None if not parts else parts[0] if len(parts) == 1 else Add(tuple(parts))
    return None


# --------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------


def _shown(n: Node) -> Node:
    return em.shown(n)


def _names(hd: HessianDerivation, latex: bool = False) -> tuple[str, str, str]:
    """(∇²f, ∇²f v / ∇²f[V], the direction's name) in text or LaTeX."""
    v = hd.direction.name
    if latex:
        lv = naming.latex(v)
        return (r"\nabla^2 f", rf"\nabla^2 f\,[{lv}]" if hd.is_matrix_variable
                else rf"\nabla^2 f\,{lv}", lv)
    tv = naming.text(v)
    return "∇²f", (f"∇²f[{tv}]" if hd.is_matrix_variable else f"∇²f {tv}"), tv


def rewrite_lines(hd: HessianDerivation, md: bool) -> list[str]:
    lead = "- " if md else "  "
    out = []
    for name, verdicts in hd.rewrites.items():
        k = len(verdicts)
        if verdicts and all(v is True for v in verdicts):
            status = f" — proved at tiny sizes ({k} firing{'s' * (k != 1)})"
        elif any(v is False for v in verdicts):
            status = " — refuted on the tiny instance, not applied"
        else:
            status = f" ({k} firing{'s' * (k != 1)})"
        out.append(f"{lead}{name}: {em.RULES[name].identity}{status}")
    return out or [f"{lead}(none: the swept form is already the normal form)"]


def render(hd: HessianDerivation, fmt: str, steps: bool = False) -> str:
    p = hd.problem
    w = hd.wrt
    g = hd.first.gradients[w]
    H, HV, v = _names(hd, fmt == "latex")
    if fmt == "latex":
        lines = [r"\begin{aligned}", rf"f &= {em.latex(p.root, p)} \\", *p.assume.latex_lines(),
                 rf"\frac{{\partial f}}{{\partial {naming.latex(w)}}} &= {em.latex(_shown(g), p)} \\"]
        if hd.matrix is not None:
            lines.append(rf"{H} &= {em.latex(_shown(hd.matrix), p)} \\")
        lines.append(rf"{HV} &= {em.latex(_shown(hd.hv), p)} \\")
        lines.append(r"\end{aligned}")
        return "\n".join(lines) + "\n"
    md = fmt == "markdown"
    pad = "" if md else "  "
    q = "`" if md else ""
    lines = ["## Hessian of an expression" if md else "Hessian of an expression", ""]
    lines.append(f"{pad}f = {q}{ast.unparse(ast.parse(p.text, mode='eval'))}{q}")
    lines.append(f"{pad}with {em._display(p)}")
    lines += em._assumed(p, md)
    lines += ["", "### Gradient" if md else "Gradient"]
    shape = em._shape_text(hd.direction.shape)
    if md:
        lines.append(f"$$\\frac{{\\partial f}}{{\\partial {naming.latex(w)}}} = {em.latex(_shown(g), p)}$$")
    else:
        lines.append(f"  ∂f/∂{naming.text(w)} = {em.text(_shown(g), p)}")
    lines += ["", "### Hessian" if md else "Hessian"]
    Hl, HVl, vl = _names(hd, latex=True)
    if hd.matrix is not None:
        n = em._shape_text(hd.matrix.shape)
        if md:
            lines.append(f"$${Hl} = {em.latex(_shown(hd.matrix), p)}$$ ({n})")
            lines.append(f"numpy: `{em.numpy_code(hd.matrix)}`")
        else:
            lines.append(f"  {H} = {em.text(_shown(hd.matrix), p)}   ({n})")
            lines.append(f"      numpy: {em.numpy_code(hd.matrix)}")
    elif hd.is_matrix_variable:
        lines.append(f"{pad}(the Hessian in a matrix {naming.text(w)} is a 4-index tensor: "
                     f"shown as the linear map {v} ↦ {HV})")
    else:
        lines.append(f"{pad}(no matrix form recognized: shown as the product with {v})")
    what = (f"for {v} of {naming.text(w)}'s shape ({shape})" if hd.is_matrix_variable
            else f"the Hessian-vector product, {v} of {naming.text(w)}'s shape ({shape})")
    if md:
        lines.append(f"$${HVl} = {em.latex(_shown(hd.hv), p)}$$ ({what})")
        lines.append(f"numpy: `{em.numpy_code(hd.hv)}`")
    else:
        lines.append(f"  {HV} = {em.text(_shown(hd.hv), p)}   ({what})")
        lines.append(f"      numpy: {em.numpy_code(hd.hv)}")
    if steps:
        lines += ["", "### Second sweep, as swept" if md else
                  f"Second sweep: ∂/∂{naming.text(w)} ⟨∂f/∂{naming.text(w)}, {v}⟩, before simplification"]
        lines.append(f"{'- ' if md else '  '}{HV} = {em.text(hd.raw, p)}")
        lines += ["", "### Rewrite rules that fired" if md else
                  "Rewrite rules that fired (simplification of the second sweep and of ∇²f)"]
        lines += rewrite_lines(hd, md)
    lines += ["", "Notation: ⊙ elementwise product, ᵀ transpose, σ the logistic sigmoid, "
              "tr the trace, I the identity, diag(a) the diagonal matrix of a; functions and "
              f"powers apply elementwise; {HV} = ∂/∂{naming.text(w)} ⟨∂f/∂{naming.text(w)}, {v}⟩."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# The proof: against the scalar expansion's second derivatives
# --------------------------------------------------------------------------


def _exp_free(e: sp.Expr) -> sp.Expr | None:
    """e with every exponential written as a power of a fresh symbol, exp(c b) = t_bᶜ (c the
    integer coefficient of b's first term, so that exp(−z) = 1/t_z and exp(2z) = t_z²), after
    tanh, sinh, … are rewritten with exp; None where an exponential is left."""
    bases: dict[sp.Expr, sp.Dummy] = {}

    def power(a: sp.Expr) -> sp.Expr:
        arg = sp.expand(a.args[0])
        c = min(sp.Add.make_args(arg), key=sp.default_sort_key).as_coeff_Mul()[0]
        c = c if c.is_Integer and c != 0 else sp.Integer(1)
        return bases.setdefault(sp.expand(arg / c), sp.Dummy("t")) ** c

    out = e.rewrite(sp.exp).replace(lambda x: isinstance(x, sp.exp), power)
    return None if out.has(sp.exp) else out


def _is_zero(e: sp.Expr) -> bool | None:
    """exprmode's is_zero, first trying the numerator of e as a rational function of its
    exponentials, each a power of its own symbol (_exp_free): a zero polynomial there is
    zero for every value of the exponentials, so for every value of the symbols. The second
    derivatives of sigmoids, softplus, log-sum-exp and tanh cancel there in well under a
    second where simplify takes tens of seconds (a logistic loss with 0/1 labels: 40 s)."""
    if e.has(sp.exp, sp.tanh, sp.sinh, sp.cosh) and not e.has(sp.Piecewise, sp.sign, sp.Abs):
        free = _exp_free(e)
        if free is not None and sp.expand(sp.fraction(sp.together(free))[0]) == 0:
            return True
    return em.is_zero(e)


def prove_hessian(hd: HessianDerivation, seconds: float = em.PROOF_SECONDS) -> tuple[bool, list[str]]:
    """∇²f (or ∇²f[V]) against SymPy's second derivatives of the expanded f, entry by entry,
    on a tiny instance (concrete sizes above exprmode's PROOF_SIZE reduced)."""
    original = hd.problem
    small = em.reduced(original, em.PROOF_SIZE)
    if small is not original:
        hd = derive_hessian(small)
    p = hd.problem
    env = em.proof_env(p)
    v = hd.direction
    r, c = (int(sp.sympify(d).xreplace(env)) for d in v.shape)
    env[v.name] = sp.Matrix(r, c, lambda i, j: sp.Symbol(f"{v.name}_{i}{j}", real=True))
    sizes = ", ".join(f"{s}={k}" for s, k in env.items()
                      if isinstance(s, sp.Symbol) and isinstance(k, int)) or "as given"
    constrain = p.assume.constrain(env)
    x = env[hd.wrt]
    xs = [x[i, j] for j in range(x.cols) for i in range(x.rows)]
    vs = [env[v.name][i, j] for j in range(x.cols) for i in range(x.rows)]
    H, HV, _ = _names(hd)
    lines: list[str] = []
    ok = True
    try:
        with deadline(seconds):
            f = em.expand(p.root.explicit(env))[0, 0]
            second = [[sp.diff(f, a, b) for b in xs] for a in xs]
            checks = []
            if hd.matrix is not None:
                mine = em.expand(hd.matrix.explicit(env))
                checks.append((H, [mine[i, j] - second[i][j]
                                   for i in range(len(xs)) for j in range(len(xs))]))
            mine = em.expand(hd.hv.explicit(env))
            flat = [mine[i, j] for j in range(mine.cols) for i in range(mine.rows)]
            checks.append((HV, [flat[a] - sum(second[a][b] * vs[b] for b in range(len(xs)))
                                for a in range(len(xs))]))
            verdicts = {name: [_is_zero(constrain(e)) for e in diffs] for name, diffs in checks}
    except EXHAUSTED:
        return True, [f"not decided symbolically: over {seconds:g} s"]
    for name, vs_ in verdicts.items():
        if all(t is True for t in vs_):
            lines.append(f"{name}: proved equal to the entrywise second derivatives ({sizes})")
        elif any(t is False for t in vs_):
            ok = False
            lines.append(f"{name}: DIFFERS from the entrywise second derivatives ({sizes})")
        else:
            lines.append(f"{name}: not decided symbolically ({sizes})")
    note = em._sizes_note(original, small)
    if note:
        lines.append(note)
    rules_ok, rule_lines = em.rule_proof_lines(types.SimpleNamespace(rewrites={hd.wrt: hd.rewrites}))
    return ok and rules_ok, lines + rule_lines


# --------------------------------------------------------------------------
# The module: hessian(...) and hvp(..., v)
# --------------------------------------------------------------------------


def _function(root: Node, target: str, p: em.ExprProblem, taken: set[str]) -> dict:
    """The lines of one function's body: its temporaries, then ``target = …``."""
    (expr,), temps = em.shared_values([root], set(taken))
    return {"temps": [{"var": t.name, "formula": em.text(rhs, p),
                       "lines": em.layout(t.name, em.numpy_code(rhs))} for t, rhs in temps],
            "formula": em.text(_shown(root), p), "lines": em.layout(target, em.numpy_code(expr)),
            "spread": em._needs_spread(root), "var": target}


def module_context(hd: HessianDerivation, name: str = "expr") -> dict:
    ctx = em.module_context(hd.first, name)
    p = hd.problem
    v = hd.direction.name
    H, HV, _ = _names(hd)
    taken = set(p.shapes) | {v}

    def fresh(base: str) -> str:
        while base in taken:
            base += "_"
        taken.add(base)
        return base

    hv_var, h_var = fresh("hv"), fresh("h")
    out = {"wrt": hd.wrt, "v": v, "hvp_name": HV, "name": H,
           "hvp": _function(hd.hv, hv_var, p, taken),
           "matrix": None if hd.matrix is None else _function(hd.matrix, h_var, p, taken)}
    code = " ".join(line for fn in (out["hvp"], out["matrix"]) if fn
                    for t in [*fn["temps"], fn] for line in t["lines"])
    for helper in ("sigmoid", "softplus", "softmax", "logsumexp", "erf", "logdet"):
        if helper not in ctx["helpers"] and re.search(rf"(?<![\w.]){helper}\(", code):
            ctx["helpers"].append(helper)
    ctx["hessian"] = out
    return ctx


def generate_hessian(hd: HessianDerivation, name: str = "expr") -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(em._templates_dir())),
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pyrepr"] = em._literal
    env.globals["constant"] = em.constant
    return env.get_template(em.TEMPLATE).render(**module_context(hd, name))


# --------------------------------------------------------------------------
# Commands (exprmode routes here with --hessian)
# --------------------------------------------------------------------------


def cmd_derive(args: argparse.Namespace) -> int:
    hd = derive_hessian(em._problem_from(args), prove_rules=getattr(args, "prove", False))
    return em.write_derivation(hd, args, prove_hessian)


def cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from symgrad.spec import check_module_path

    out = Path(args.output or "generated/expr_module.py")
    if str(out) != "-":
        check_module_path(out)
    hd = derive_hessian(em._problem_from(args))
    name = re.sub(r"\W", "_", out.stem) or "expr"
    if em.write_module(out, generate_hessian(hd, name), args.force) and str(out) != "-":
        print(f"symgrad: wrote {out}", file=sys.stderr)
    elif str(out) != "-":
        print(f"symgrad: {out} is up to date", file=sys.stderr)
    return 0


_ = (Const, budget)
