"""Structured matrices: the diagonal matrix of a vector and the diagonal of a matrix
(``diag``), and the Kronecker product (``kron``).

Each op declares, in its class, its shape, vector-Jacobian rule, explicit expansion (the
proof at tiny sizes), numpy value, printed forms and numpy lowering.  The lowerings are
numpy's own functions (``np.diagflat``, ``np.diag``, ``np.kron``, ``np.einsum``), written
so that the expression parser reads the ``diag``/``kron`` ones back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy as sp

from symgrad.ops.base import Const, Hadamard, Map, Node, Scale, _size
from symgrad.ops.linear import MatMul, Transpose
from symgrad.ops.reductions import Broadcast, Eye

__all__ = ["DiagMatrix", "DiagPart", "Kron", "KronFactor"]

_ATOM, _MATMUL = 100, 60  # the printers' precedences (symgrad.printing) of these forms


def _length(x: Node) -> sp.Expr:
    """The length of a vector held as a column (n×1) or a row (1×n)."""
    r, c = x.shape
    return r if c == 1 else c


@dataclass(frozen=True, eq=True)
class DiagMatrix(Node):
    """D = diag(x): the n×n matrix with the vector x (n×1 or 1×n) on its diagonal.

    ∂L/∂x = diag(G), the diagonal of the cotangent (as a column, or a row for a row x)."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        n = _length(self.x)
        return (n, n)

    def vjp(self, g, out):
        d = DiagPart(g)
        return (d,) if self.x.shape[1] == 1 else (Transpose(d),)

    def rewrite(self) -> Node | None:
        """The simplifier's rules: diag(c v) = c diag(v), diag(c 𝟏) = c I."""
        x = self.x
        if isinstance(x, Scale):
            return Scale(x.c, DiagMatrix(x.x))
        if isinstance(x, Broadcast) and isinstance(x.x, Const):
            n = self.shape[0]
            return Eye(n) if x.x.value == 1 else Scale(x.x.value, Eye(n))
        return None

    def explicit(self, env):
        return sp.diag(*list(self.x.explicit(env)))

    def numeric(self, env):
        return np.diagflat(self.x.numeric(env))

    def text(self, p):
        return f"diag({p._print(self.x)})"

    def latex(self, p):
        return rf"\operatorname{{diag}}\left({p._print(self.x)}\right)"

    def numpy(self, lw):
        return f"np.diagflat({lw.full(self.x, 0)})", lw.ATOM


@dataclass(frozen=True, eq=True)
class DiagPart(Node):
    """d = diag(A): the diagonal of the square matrix A as an n×1 column.

    ∂L/∂A = diag(g), the diagonal matrix of the cotangent column (off-diagonal entries of A
    do not reach d)."""

    x: Node

    @property
    def children(self):
        return (self.x,)

    @property
    def shape(self):
        return (self.x.shape[0], sp.Integer(1))

    def vjp(self, g, out):
        return (DiagMatrix(g),)

    def rewrite(self) -> Node | None:
        """The simplifier's rules: diag(Aᵀ) = diag(A), diag(c A) = c diag(A),
        diag(diag(v)) = v, diag(I) = 𝟏, the diagonal of a spread vector is the vector
        (diag(𝟏vᵀ) = diag(v𝟏ᵀ) = v), diag(u vᵀ) = u ⊙ v, diag(𝟏 vᵀM) = Mᵀv."""
        x, col = self.x, self.shape
        if isinstance(x, Transpose):
            return DiagPart(x.x)
        if isinstance(x, Scale):
            return Scale(x.c, DiagPart(x.x))
        if isinstance(x, DiagMatrix):
            return x.x if x.x.shape[1] == 1 else Transpose(x.x)
        if isinstance(x, Eye):
            return Broadcast(Const(sp.Integer(1)), col)
        if isinstance(x, Broadcast):
            v = x.x
            if v.shape == (1, 1):
                return Broadcast(v, col)
            if v.shape[0] == 1:
                return Transpose(v)
            if v.shape[1] == 1:
                return v
        if isinstance(x, MatMul):
            a, b = x.a, x.b
            if a.shape[1] == 1:  # diag(u vᵀ) = u ⊙ v
                return Hadamard(a, Transpose(b))
            if isinstance(a, Broadcast) and a.x.shape == (1, a.shape[1]):  # diag(𝟏 vᵀ M) = (vᵀM)ᵀ
                return Transpose(MatMul(a.x, b))
            if isinstance(b, Broadcast) and b.x.shape == (b.shape[0], 1):  # diag(M v 𝟏ᵀ) = M v
                return MatMul(a, b.x)
        return None

    def explicit(self, env):
        m = self.x.explicit(env)
        return sp.Matrix(m.rows, 1, lambda i, _: m[i, i])

    def numeric(self, env):
        return np.diag(self.x.numeric(env)).reshape(-1, 1).copy()

    def text(self, p):
        return f"diag({p._print(self.x)})"

    def latex(self, p):
        return rf"\operatorname{{diag}}\left({p._print(self.x)}\right)"

    def numpy(self, lw):
        """np.diag is 1-D; the column is np.expand_dims(…, 1) (read back by the parser)."""
        return f"np.expand_dims(np.diag({lw.full(self.x, 0)}), 1)", lw.ATOM


@dataclass(frozen=True, eq=True)
class Kron(Node):
    """K = A ⊗ B (A m×n, B p×q, K mp×nq): the block matrix [a_ij B].

    With G = ∂L/∂K cut into the m×n grid of its p×q blocks G_ij:
    ∂L/∂A = [⟨G_ij, B⟩]_ij (each block's inner product with B), and
    ∂L/∂B = Σ_ij a_ij G_ij (the blocks weighted by A's entries) — :class:`KronFactor`.
    Supported for any shapes (vectors, matrices, 1×1 factors)."""

    a: Node
    b: Node

    @property
    def children(self):
        return (self.a, self.b)

    @property
    def shape(self):
        (m, n), (p, q) = self.a.shape, self.b.shape
        return (m * p, n * q)

    def vjp(self, g, out):
        return KronFactor(g, self.b, left=True), KronFactor(g, self.a, left=False)

    def explicit(self, env):
        a, b = self.a.explicit(env), self.b.explicit(env)
        p, q = b.shape
        return sp.Matrix(a.rows * p, a.cols * q, lambda r, c: a[r // p, c // q] * b[r % p, c % q])

    def numeric(self, env):
        return np.kron(self.a.numeric(env), self.b.numeric(env))

    precedence = _MATMUL

    def text(self, p):
        return f"{p.paren(self.a, p.MATMUL + 1)} ⊗ {p.paren(self.b, p.MATMUL + 1)}"

    def latex(self, p):
        return rf"{p.paren(self.a, p.MATMUL + 1)} \otimes {p.paren(self.b, p.MATMUL + 1)}"

    def numpy(self, lw):
        return f"np.kron({lw.full(self.a, 0)}, {lw.full(self.b, 0)})", lw.ATOM


@dataclass(frozen=True, eq=True)
class KronFactor(Node):
    """The cotangent of one factor of K = A ⊗ B, from G = ∂L/∂K and the other factor:
    ``left``: ∂L/∂A = [⟨G_ij, B⟩]_ij (m×n; ``other`` is B);
    else:     ∂L/∂B = Σ_ij a_ij G_ij     (p×q; ``other`` is A).

    Both are linear in G and in the other factor, so their own cotangents (a second
    derivative) are again block contractions; they are not needed for a gradient."""

    g: Node
    other: Node
    left: bool

    @property
    def children(self):
        return (self.g, self.other)

    @property
    def shape(self):
        (r, c), (s, t) = self.g.shape, self.other.shape
        return (r / s, c / t)

    def rewrite(self) -> Node | None:
        """The simplifier's rules, so that a gradient with a matrix form prints it and no
        cotangent is contracted block by block where it need not be (an mn×mn identity is
        never built).  The contraction is linear in G, so a sum, a scaling and a 1×1 factor
        spread (s ⊙ G) come out of it; then, for ∂L/∂A (``other`` B; ∂L/∂B alike with A):

        * G = c𝟏𝟏ᵀ:     c (Σ B) 𝟏𝟏ᵀ                      (f = sum(A ⊗ B))
        * G = I:        tr(B) I, A and B square          (f = tr(A ⊗ B): I's blocks are δᵢⱼ I)
        * G = A′ ⊗ B′:  ⟨B′, B⟩ A′ (‖B‖² A′ for B′ = B)   (f = ‖A ⊗ B‖²: G = 2 A ⊗ B)
        * a vector or 1×1 factor, where A ⊗ B is a product: a b (a column, b a row): G bᵀ;
          b a (a a row, b a column): bᵀ G; s B: ⟨G, B⟩; A s: s G.

        Any other G keeps the block form [⟨Gᵢⱼ, B⟩]ᵢⱼ, the standard reshape identity:
        with G cut into the m×n grid of its p×q blocks, ∂L/∂A = R(G) vec(B), lowered as
        one einsum over G reshaped to (m, p, n, q)."""
        from symgrad.ops.base import Add, add
        from symgrad.ops.reductions import ColSum, RowSum, SqNorm, Trace

        g, o, left = self.g, self.other, self.left

        def again(h: Node) -> Node:
            return KronFactor(h, o, left)

        def inner(x: Node, y: Node) -> Node:  # ⟨X, Y⟩, ‖X‖² when equal (‖Xᵀ‖² = ‖X‖²)
            if x == y:
                return SqNorm(x.x if isinstance(x, Transpose) else x)
            return ColSum(RowSum(Hadamard(x, y)))

        def times(s: Node, x: Node) -> Node:  # a 1×1 s times x: s t Y for x = t Y
            if isinstance(x, Hadamard) and isinstance(x.a, Broadcast) and tuple(
                    x.a.x.shape) == (1, 1):
                u, v = sp.Symbol("_s", real=True), sp.Symbol("_t", real=True)
                s, x = Map(u * v, ((u, s), (v, x.a.x))), x.b
            return Hadamard(Broadcast(s, tuple(x.shape)), x)

        if isinstance(g, Add):
            return add([again(t) for t in g.terms])
        if isinstance(g, Scale):
            return Scale(g.c, again(g.x))
        if isinstance(g, Hadamard):
            for s, m in ((g.a, g.b), (g.b, g.a)):
                if isinstance(s, Broadcast) and tuple(s.x.shape) == (1, 1) and not (
                        isinstance(m, Broadcast) and tuple(m.x.shape) == (1, 1)):
                    inside = again(m)
                    return times(s.x, inside.rewrite() or inside)
        if isinstance(g, Transpose) and isinstance(g.x, Eye):
            return again(g.x)
        if isinstance(g, Transpose) and isinstance(g.x, Kron):
            return again(Kron(Transpose(g.x.a), Transpose(g.x.b)))
        if isinstance(g, Broadcast) and tuple(g.x.shape) == (1, 1):
            total = ColSum(RowSum(o))
            if isinstance(g.x, Const):
                c = g.x.value
                return Broadcast(total if c == 1 else Scale(c, total), self.shape)
            return Broadcast(times(g.x, total), self.shape)
        (m, n), (p, q) = (self.shape, o.shape) if left else (o.shape, self.shape)
        if isinstance(g, Eye) and m == n and p == q:
            return times(Trace(o), Eye(self.shape[0]))
        if isinstance(g, Kron):
            mine, theirs = (g.a, g.b) if left else (g.b, g.a)
            if tuple(theirs.shape) == tuple(o.shape) and tuple(mine.shape) == tuple(self.shape):
                return times(inner(theirs, o), mine)
        if n == 1 and p == 1:  # a b: a column times a row
            return MatMul(g, Transpose(o)) if left else MatMul(Transpose(o), g)
        if m == 1 and q == 1:  # b a: a row a, a column b
            return MatMul(Transpose(o), g) if left else MatMul(g, Transpose(o))
        if (p == 1 and q == 1) if left else (m == 1 and n == 1):  # the other factor is 1×1
            return times(o, g)
        if (m == 1 and n == 1) if left else (p == 1 and q == 1):  # this factor is 1×1
            return inner(g, o)
        return None

    def _grid(self, env) -> tuple[int, int, int, int]:
        """(m, n, p, q): the grid of blocks and the block's shape."""
        (r, c), (s, t) = ((_size(d, env) for d in shape) for shape in (self.g.shape, self.other.shape))
        return (r // s, c // t, s, t) if self.left else (s, t, r // s, c // t)

    def explicit(self, env):
        g, o = self.g.explicit(env), self.other.explicit(env)
        m, n, p, q = self._grid(env)
        if self.left:
            return sp.Matrix(m, n, lambda i, j: sp.Add(*[
                g[i * p + k, j * q + l] * o[k, l] for k in range(p) for l in range(q)]))
        return sp.Matrix(p, q, lambda k, l: sp.Add(*[
            o[i, j] * g[i * p + k, j * q + l] for i in range(m) for j in range(n)]))

    def numeric(self, env):
        g, o = self.g.numeric(env), self.other.numeric(env)
        m, n, p, q = self._grid(env)
        blocks = g.reshape(m, p, n, q)
        return np.einsum("ipjq,pq->ij" if self.left else "ipjq,ij->pq", blocks, o)

    def text(self, p):
        g, o = p.paren(self.g, p.ATOM), p._print(self.other)
        return f"[⟨{g}ᵢⱼ, {o}⟩]ᵢⱼ" if self.left else f"Σᵢⱼ {p.paren(self.other, p.ATOM)}ᵢⱼ {g}ᵢⱼ"

    def latex(self, p):
        g, o = p.paren(self.g, p.ATOM), p._print(self.other)
        if self.left:
            return rf"\left[\langle {g}_{{ij}}, {o} \rangle\right]_{{ij}}"
        return rf"\sum_{{ij}} {p.paren(self.other, p.ATOM)}_{{ij}} {g}_{{ij}}"

    def numpy(self, lw):
        """One einsum over the blocks of G, reshaped to (m, p, n, q) (not read back by
        the expression parser: its notation has no reshape)."""
        (r, c), (s, t) = self.g.shape, self.other.shape
        g, o = lw.full(self.g, lw.ATOM), lw.full(self.other, 0)
        if self.left:  # other = B (p×q): the grid is (r/p)×(c/q)
            dims, spec = (r / s, s, c / t, t), "ipjq,pq->ij"
        else:  # other = A (m×n): each block is (r/m)×(c/n)
            dims, spec = (s, r / s, t, c / t), "ipjq,ij->pq"
        shape = ", ".join(lw.size(d) for d in dims)
        return f'np.einsum("{spec}", {g}.reshape({shape}), {o})', lw.ATOM
