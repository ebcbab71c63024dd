"""Normalization and noise: batchnorm's and layernorm's standardization, dropout.

A batchnorm layer is, as assignments (axis 0: the statistics of each column, over the batch)::

    μ = (1/N) 𝟏ᵀA                  σ² = (1/N) 𝟏ᵀ(A − 𝟏μ)²
    X̂ = (A − 𝟏μ) ⊙ 𝟏(σ² + ε)^(−½)  (Standardize)
    Z = X̂ ⊙ 𝟏γ + β                 (Hadamard with a broadcast row, BiasAdd)

and a layernorm layer the same along each row (axis 1: the features of one sample). The
affine part is ordinary algebra; :class:`Standardize` carries the compact rule of the whole
standardization (its mean and variance paths folded in), which is the textbook's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from symgrad import naming
from symgrad.ops.base import Hadamard, Map, Node, Scale, Sym, _size, hadamard, tangent_sum
from symgrad.ops.reductions import Broadcast, ColSum, RowSum, Sub

__all__ = ["Standardize", "InvStd", "Dropout", "exact"]


def exact(value: float) -> sp.Rational:
    """A decimal hyperparameter (eps 1e-5, p 0.5) as the exact rational it names, for
    the proofs."""
    return sp.Rational(repr(float(value)))


def _literal(value: float) -> str:
    return repr(float(value))


@dataclass(frozen=True, eq=True)
class InvStd(Node):
    """𝟏(σ² + ε)^(−½): the reciprocal standard deviation of each column (σ² a 1×n row),
    spread down the rows; or of each row (σ² an N×1 column), spread across the columns.
    ``power`` other than −½ (𝟏(σ² + ε)^(−1), ^(−3/2)) appears in the tangents below.

    Backward-only (it appears in Standardize's rule); it is never differentiated in
    reverse. Its tangent (forward mode, for the second-order adjoints of symgrad.second):
    d/dε 𝟏(σ² + ε)^p = p 𝟏(σ² + ε)^(p−1) ⊙ 𝟏σ̇²."""

    var: Sym
    eps: float
    shape: tuple
    power: sp.Rational = sp.Rational(-1, 2)

    @property
    def children(self):
        return ()

    @property
    def refs(self):
        return (self.var,)

    @property
    def rowwise(self) -> bool:
        """σ² is one value per row (layernorm)."""
        return self.var.shape[1] == 1 and self.shape[1] != 1

    def vjp(self, g, out):  # pragma: no cover - backward-only
        raise NotImplementedError("InvStd is backward-only")

    def jvp(self, t, out):
        """C = 𝟏(σ² + ε)^p.   Ċ = p 𝟏(σ² + ε)^(p−1) ⊙ 𝟏σ̇² (t: σ²'s tangent, a ref's)."""
        (vd,) = t
        if vd is None:
            return None
        lower = InvStd(self.var, self.eps, self.shape, self.power - 1)
        return Scale(self.power, Hadamard(lower, _spread(vd, self.shape)))

    def explicit(self, env):
        v = env[self.var.name]
        r, c = (_size(d, env) for d in self.shape)
        eps = exact(self.eps)
        return sp.Matrix(r, c, lambda i, j: (v[i if v.rows > 1 else 0, j if v.cols > 1 else 0]
                                             + eps) ** self.power)

    def numeric(self, env):
        v = np.asarray(env[self.var.name])
        shape = tuple(_size(d, env) for d in self.shape)
        if self.power == sp.Rational(-1, 2):
            return np.broadcast_to(1.0 / np.sqrt(v + self.eps), shape)
        return np.broadcast_to(np.power(v + self.eps, float(self.power)), shape)

    @property
    def unbroadcast(self) -> Node | None:
        """(σ² + ε)^(−½) at σ²'s own shape (a lowering reads it; numpy broadcasts it)."""
        return None if self.shape == self.var.shape else InvStd(self.var, self.eps,
                                                                 self.var.shape, self.power)

    precedence = 100  # an atom: 𝟏(σ² + ε)^(−½)

    def _exponent(self) -> str:
        return "−½" if self.power == sp.Rational(-1, 2) else str(self.power).replace("-", "−")

    def text(self, p):
        core = f"({p.name(self.var.name)} + ε)^({self._exponent()})"
        return f"{core}𝟏ᵀ" if self.rowwise else f"𝟏{core}"

    def latex(self, p):
        power = (r"-\frac{1}{2}" if self.power == sp.Rational(-1, 2)
                 else sp.latex(self.power).replace(" ", ""))
        core = rf"\left({p.name(self.var.name)} + \varepsilon\right)^{{{power}}}"
        return rf"{core}\mathbf{{1}}^{{\top}}" if self.rowwise else rf"\mathbf{{1}}{core}"

    def numpy(self, lw):
        if self.power == sp.Rational(-1, 2):
            return f"1 / np.sqrt({self.var.name} + {_literal(self.eps)})", lw.MUL
        if self.power == -1:
            return f"1 / ({self.var.name} + {_literal(self.eps)})", lw.MUL
        return (f"np.power({self.var.name} + {_literal(self.eps)}, "
                f"{_literal(float(self.power))})", lw.ATOM)

    def into(self, st, dest):
        st.emit(f"np.add({self.var.name}, {_literal(self.eps)}, out={dest})")
        if self.power == sp.Rational(-1, 2):
            st.emit(f"np.sqrt({dest}, out={dest})")
        elif self.power != -1:
            st.emit(f"np.power({dest}, {_literal(float(-self.power))}, out={dest})")
        st.emit(f"np.reciprocal({dest}, out={dest})")


def _spread(v: Node, shape: tuple) -> Node:
    """v (a statistic's row or column) repeated to ``shape``, or v where it has it."""
    return v if v.shape == shape else Broadcast(v, shape)


@dataclass(frozen=True, eq=True)
class Standardize(Node):
    """X̂ = (A − 𝟏μ) ⊙ 𝟏(σ² + ε)^(−½), μ and σ² the mean and biased variance of each column
    (``axis=0``, batchnorm: over the N samples of the batch) or of each row (``axis=1``,
    layernorm: over the n features of a sample; then 𝟏 sits on the other side).

    With G = ∂L/∂X̂ and m the count averaged over (N, or n):

        ∂L/∂A = (1/m) 𝟏(σ² + ε)^(−½) ⊙ (m G − 𝟏𝟏ᵀG − X̂ ⊙ 𝟏𝟏ᵀ(G ⊙ X̂))

    — the direct path m G, the mean path −𝟏𝟏ᵀG and the variance path −X̂ ⊙ 𝟏𝟏ᵀ(G ⊙ X̂),
    written in terms of the output X̂ (for layernorm 𝟏𝟏ᵀ multiplies from the right).
    μ and σ² are read (``refs``), not differentiated through: the rule covers their paths."""

    x: Node
    mu: Sym
    var: Sym
    eps: float
    axis: int = 0

    @property
    def children(self):
        return (self.x,)

    @property
    def refs(self):
        return (self.mu, self.var)

    @property
    def shape(self):
        return self.x.shape

    @property
    def count(self) -> sp.Expr:
        """m: the number of values each statistic averages."""
        return self.x.shape[self.axis]

    def spread_sum(self, v: Node) -> Node:
        """𝟏𝟏ᵀV (the column sums down every row) for axis 0, V𝟏𝟏ᵀ for axis 1."""
        return Broadcast(ColSum(v) if self.axis == 0 else RowSum(v), self.shape)

    def vjp(self, g, out):
        xhat = self if out is None else out
        m = self.count
        inner = Sub(Sub(Scale(m, g), self.spread_sum(g)),
                    Hadamard(xhat, self.spread_sum(hadamard(g, xhat))))
        return (Scale(1 / m, Hadamard(InvStd(self.var, self.eps, self.shape), inner)),)

    def jvp(self, t, out):
        """X̂ = (A − 𝟏μ) ⊙ 𝟏(σ² + ε)^(−½), μ and σ² refs whose tangents μ̇, σ̇² follow Ȧ in t
        (the forward sweep has them from their own lines):

            Ẋ̂ = (Ȧ − 𝟏μ̇) ⊙ 𝟏(σ² + ε)^(−½) − ½ X̂ ⊙ 𝟏σ̇² ⊙ 𝟏(σ² + ε)^(−1)

        (the centring's tangent scaled, then the scale's: d(σ² + ε)^(−½) = −½ (σ² + ε)^(−3/2)
        σ̇², and (A − 𝟏μ) ⊙ 𝟏(σ² + ε)^(−3/2) = X̂ ⊙ 𝟏(σ² + ε)^(−1))."""
        ad, mud, vd = t
        xhat = self if out is None else out
        inv = InvStd(self.var, self.eps, self.shape)
        terms: list[Node | None] = []
        if ad is not None:
            terms.append(Standardize(ad, mud, self.var, self.eps, self.axis)
                         if isinstance(mud, Sym) else Hadamard(ad, inv))
        if vd is not None:
            ratio = Hadamard(_spread(vd, self.shape),
                             InvStd(self.var, self.eps, self.shape, sp.Integer(-1)))
            terms.append(Scale(sp.Rational(-1, 2), Hadamard(xhat, ratio)))
        return tangent_sum(terms)

    def explicit(self, env):
        a, mu = self.x.explicit(env), env[self.mu.name]
        inv = InvStd(self.var, self.eps, self.shape).explicit(env)
        return sp.Matrix(a.rows, a.cols, lambda i, j: (
            a[i, j] - mu[0 if mu.rows == 1 else i, 0 if mu.cols == 1 else j]) * inv[i, j])

    def numeric(self, env):
        a = self.x.numeric(env)
        mu, var = np.asarray(env[self.mu.name]), np.asarray(env[self.var.name])
        return (a - mu) / np.sqrt(var + self.eps)

    precedence = 50  # a ⊙ product

    @property
    def rule(self) -> str:
        """The rule's name in ``derive --steps``."""
        return "batchnorm (compact)" if self.axis == 0 else "layernorm (compact)"

    @property
    def law(self) -> str:
        """The rule as ``derive --steps`` and the picture state it (G = ∂L/∂X̂)."""
        if self.axis == 0:
            return ("X̂ = (A − 𝟏μ) ⊙ 𝟏(σ² + ε)^(−½), ∂L/∂A = (1/N) 𝟏(σ² + ε)^(−½) ⊙ "
                    "(N G − 𝟏𝟏ᵀG − X̂ ⊙ 𝟏𝟏ᵀ(G ⊙ X̂)) with G = ∂L/∂X̂ (the direct path, the "
                    "mean's and the variance's)")
        return ("X̂ = (A − μ𝟏ᵀ) ⊙ (σ² + ε)^(−½)𝟏ᵀ, ∂L/∂A = (1/n) (σ² + ε)^(−½)𝟏ᵀ ⊙ "
                "(n G − G𝟏𝟏ᵀ − X̂ ⊙ (G ⊙ X̂)𝟏𝟏ᵀ) with G = ∂L/∂X̂, n the features of a row (the "
                "direct path, the mean's and the variance's)")

    def text(self, p):
        mu = p.name(self.mu.name)
        centred = (f"{p.paren(self.x, p.ADD)} − 𝟏{mu}" if self.axis == 0
                   else f"{p.paren(self.x, p.ADD)} − {mu}𝟏ᵀ")
        return f"({centred}) ⊙ {InvStd(self.var, self.eps, self.shape).text(p)}"

    def latex(self, p):
        mu = p.name(self.mu.name)
        centred = (rf"{p.paren(self.x, p.ADD)} - \mathbf{{1}}{mu}" if self.axis == 0
                   else rf"{p.paren(self.x, p.ADD)} - {mu}\mathbf{{1}}^{{\top}}")
        return rf"\left({centred}\right) \odot {InvStd(self.var, self.eps, self.shape).latex(p)}"

    def numpy(self, lw):
        a = lw.expr(self.x, lw.ADD)
        return (f"({a} - {self.mu.name}) / np.sqrt({self.var.name} + {_literal(self.eps)})",
                lw.MUL)

    def into(self, st, dest):
        self.centred_into(st, dest)
        self.scale_into(st, dest)

    def centred_into(self, st, dest):
        """dest = A − 𝟏μ (the training step computes σ² from it, then scales it in place)."""
        with st.operand(self.x) as a:
            st.emit(f"np.subtract({a}, {self.mu.name}, out={dest})")

    def scale_into(self, st, dest):
        """dest ⊙= 𝟏(σ² + ε)^(−½): A − 𝟏μ, in dest, becomes X̂."""
        with st.scratch(self.var.shape) as inv:
            InvStd(self.var, self.eps, self.var.shape).into(st, inv)
            st.emit(f"{dest} *= {inv}")

    def is_variance(self, node: Node) -> bool:
        """Whether node is σ² = (1/m) 𝟏ᵀ(A − 𝟏μ)² of this standardization (batchnorm)."""
        if not (self.axis == 0 and isinstance(node, Scale) and node.c == 1 / self.count
                and isinstance(node.x, ColSum) and isinstance(node.x.x, Map)):
            return False
        body = node.x.x
        if len(body.args) != 2:
            return False
        (a, x), (m, mu) = body.args
        return (x == self.x and mu == Broadcast(self.mu, self.shape)
                and body.expr == (a - m) ** 2)

    # The batchnorm layer's backward as a person writes it (the training step's form): X̂
    # feeds Z = X̂ ⊙ 𝟏γ + β, so with δ = ∂L/∂Z the rule's G = ∂L/∂X̂ = δ ⊙ 𝟏γ has the column
    # sums 𝟏ᵀG = γ ⊙ ∂L/∂β and 𝟏ᵀ(G ⊙ X̂) = γ ⊙ ∂L/∂γ, and the rule becomes
    #     ∂L/∂A = 𝟏(γ ⊙ (σ² + ε)^(−½)) ⊙ (δ − 𝟏∂L/∂β/N − X̂ ⊙ 𝟏∂L/∂γ/N):
    # four passes over the N×n values, G never formed.

    def affine_law(self, xhat: str, delta: str, gamma: str, dgamma: str,
                   dbeta: str) -> tuple[str, str]:
        """The compact form's comment lines, in the layer's names."""
        x, d, g, v, dg, db = (naming.text(n) for n in (xhat, delta, gamma, self.var.name,
                                                        dgamma, dbeta))
        return (f"  as 𝟏({g} ⊙ ({v} + ε)^(−½)) ⊙ ({d} − 𝟏{db}/N − {x} ⊙ 𝟏{dg}/N),",
                f"  since 𝟏ᵀ∂L/∂{x} = {g} ⊙ {db} and 𝟏ᵀ(∂L/∂{x} ⊙ {x}) = {g} ⊙ {dg}")

    def affine_vjp_into(self, st, xhat: str, delta: str, gamma: str, dgamma: str, dbeta: str,
                        dest: str) -> None:
        """∂L/∂A into dest from X̂, δ, ∂L/∂γ, ∂L/∂β (computed before; see above); axis 0."""
        assert self.axis == 0, "the column sums of G are γ ⊙ ∂L/∂β only over the batch"
        n = st.doprint(self.count)
        with st.scratch(self.var.shape) as c, st.scratch(self.var.shape) as r:
            InvStd(self.var, self.eps, self.var.shape).into(st, c)
            st.emit(f"{c} *= {gamma}")
            st.emit(f"np.divide({dgamma}, {n}, out={r})")
            st.emit(f"np.multiply({xhat}, {r}, out={dest})")
            st.emit(f"np.subtract({delta}, {dest}, out={dest})")
            st.emit(f"np.divide({dbeta}, {n}, out={r})")
            st.emit(f"{dest} -= {r}")
            st.emit(f"{dest} *= {c}")


@dataclass(frozen=True, eq=True)
class Dropout(Node):
    """Z = A ⊙ M/(1 − p): M a 0/1 mask (each entry kept with probability 1 − p, drawn per
    batch) and the survivors scaled by 1/(1 − p), so that E[Z] = A (inverted dropout, as
    torch). ∂L/∂A = G ⊙ M/(1 − p): the same mask and the same factor."""

    x: Node
    mask: Sym
    p: float

    @property
    def children(self):
        return (self.x,)

    @property
    def refs(self):
        return (self.mask,)

    @property
    def shape(self):
        return self.x.shape

    @property
    def keep(self) -> float:
        return 1.0 - float(self.p)

    def vjp(self, g, out):
        return (Dropout(g, self.mask, self.p),)

    def jvp(self, t, out):
        """Z = A ⊙ M/(1 − p).   Ż = Ȧ ⊙ M/(1 − p) (the same mask)."""
        return Dropout(t[0], self.mask, self.p)

    def explicit(self, env):
        a, m = self.x.explicit(env), env[self.mask.name]
        return a.multiply_elementwise(m) / (1 - exact(self.p))

    def numeric(self, env):
        return self.x.numeric(env) * np.asarray(env[self.mask.name]) / self.keep

    precedence = 40  # a scaled product
    rule = "dropout"  # the rule's name and statement in derive --steps
    law = "Z = A ⊙ M/(1 − p), ∂L/∂A = G ⊙ M/(1 − p) (the same mask, the same factor)"

    def text(self, p):
        return f"{p.factor(self.x)} ⊙ {p.name(self.mask.name)}/(1 − {_literal(self.p)})"

    def latex(self, p):
        return (rf"\frac{{{p.factor(self.x)} \odot {p.name(self.mask.name)}}}"
                rf"{{1 - {_literal(self.p)}}}")

    def numpy(self, lw):
        return f"{lw.expr(self.x, lw.MUL)} * {self.mask.name} / {_literal(self.keep)}", lw.MUL

    def into(self, st, dest):
        with st.operand(self.x) as a:
            st.emit(f"np.multiply({a}, {self.mask.name}, out={dest})")
        st.emit(f"{dest} /= {_literal(self.keep)}")
