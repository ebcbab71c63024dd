"""Array libraries a generated module can be written for: numpy (the default) and torch.

An op declares its numpy lowering once (``numpy(lw)``, ``into(st, dest)`` in symgrad/ops);
the lowering's statements are numpy source.  A backend is a *dialect* of that source: one
spelling table, numpy call → the library's call, applied to every lowered statement by
walking its ``ast`` and splicing the rewritten calls back into the text (so a statement
keeps the layout the lowering gave it).  No op is lowered twice; a call the table does not
know is refused in one line (``no torch spelling for np.…``), never passed through.

The convolution kernels (im2col, col2im, max/average pooling and their backward passes)
are not lowered statements but functions the module carries: the torch module carries
their torch versions (templates/torch_module.py.jinja, the same formulas on strided views:
Tensor.unfold for the windows, slice-adds for the adjoints, first-maximum routing), so the
lowered calls ``im2col(A, hw, …, out=P)`` are the same text in either module.

Chosen over one module written against the Array API standard (array-api-compat's
``array_namespace``): the standard has no ``out=`` and no in-place matmul, so the fast
training step would allocate every intermediate (benchmarks/backend_bench.py measures the
two; see benchmarks/README.md).
"""

from __future__ import annotations

import ast
from collections.abc import Callable

from symgrad.errors import SymgradError

__all__ = ["BACKENDS", "NOT_YET", "check_backend", "torch_code"]

BACKENDS = ("numpy", "torch")
NOT_YET = ("cupy", "jax")  # issue 16, later


def check_backend(name: object, where: str) -> str:
    """name if it is a backend symgrad writes modules for, else a one-line SymgradError."""
    if name in BACKENDS:
        return str(name)
    if name in NOT_YET:
        raise SymgradError(where, f"the {name} backend is not available yet; use numpy or torch")
    raise SymgradError(where, f"unknown backend {name!r}; use numpy or torch")


# ------------------------------------------------------------------------------------------
# The torch dialect
# ------------------------------------------------------------------------------------------

# Python scalars of the generated code (never tensors): the batch size and the penalties'
# weights; with number literals, what a torch call may not take as its first argument.
SCALARS = {"N", "L1", "L2", "lr"}

_KEYWORDS = {"axis": "dim", "keepdims": "keepdim"}  # numpy's keyword → torch's


def _scalar(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool)
    if isinstance(node, ast.Name):
        return node.id in SCALARS
    if isinstance(node, ast.UnaryOp):
        return _scalar(node.operand)
    if isinstance(node, ast.BinOp):
        return _scalar(node.left) and _scalar(node.right)
    return False


class _Call:
    """A call being rewritten: its arguments' (rewritten) texts and nodes, and the names
    of the statement's vectors (1-D workspace tensors)."""

    def __init__(self, node: ast.Call, text: Callable[[ast.AST], str],
                 vectors: frozenset[str] = frozenset()):
        self.node = node
        self.vectors = vectors
        self.args = [text(a) for a in node.args]
        self.nodes = list(node.args)
        self.keywords = {k.arg: text(k.value) for k in node.keywords}

    def rest(self, skip: tuple[str, ...] = ()) -> list[str]:
        return [f"{_KEYWORDS.get(k, k)}={v}" for k, v in self.keywords.items() if k not in skip]

    def call(self, name: str, args: list[str] | None = None, skip: tuple[str, ...] = ()) -> str:
        return f"{name}({', '.join([*(self.args if args is None else args), *self.rest(skip)])})"

    def scalar(self, i: int) -> bool:
        return _scalar(self.nodes[i])


def _named(name: str) -> Callable[[_Call], str]:
    return lambda c: c.call(name)


def _commutative(name: str) -> Callable[[_Call], str]:
    """torch.add / torch.mul: a scalar first argument moves second."""
    def spell(c: _Call) -> str:
        a, b = c.args
        return c.call(name, [b, a] if c.scalar(0) and not c.scalar(1) else [a, b])
    return spell


def _subtract(c: _Call) -> str:
    """c − x with a scalar c: −x + c (torch.sub takes a tensor first)."""
    a, b = c.args
    if c.scalar(0) and not c.scalar(1):
        return f"{c.call('torch.neg', [b])}.add_({a})"
    return c.call("torch.sub")


def _divide(c: _Call) -> str:
    a, b = c.args
    if c.scalar(0) and not c.scalar(1):
        return f"{c.call('torch.reciprocal', [b])}.mul_({a})"
    return c.call("torch.div")


def _extremum(name: str, bound: str) -> Callable[[_Call], str]:
    """np.maximum(x, c) → torch.clamp(x, min=c); of two tensors torch.maximum."""
    def spell(c: _Call) -> str:
        a, b = c.args
        if c.scalar(1) or c.scalar(0):
            x, s = (b, a) if c.scalar(0) else (a, b)
            return c.call("torch.clamp", [x, f"{bound}={s}"])
        return c.call(name)
    return spell


def _logaddexp(c: _Call) -> str:
    """log(eᵃ + eᵇ); a scalar becomes a 0-d tensor made on the other's device."""
    a, b = c.args
    if not (c.scalar(0) or c.scalar(1)):
        return c.call("torch.logaddexp")
    x, s = (b, a) if c.scalar(0) else (a, b)
    zero = s.strip("0.") == ""
    return c.call("torch.logaddexp", [x, f"{x}.new_zeros(())" if zero else f"{x}.new_full((), {s})"])


def _dot(c: _Call) -> str:
    """np.dot(a, b, out=c): torch.matmul; a vector times a matrix as torch.mv(bᵀ, a) (matmul
    would make a (1, n) result and resize out)."""
    a, b = c.args
    if isinstance(c.nodes[0], ast.Name) and c.nodes[0].id in c.vectors:
        return c.call("torch.mv", [f"{b}.T", a])
    return c.call("torch.matmul")


def _vdot(c: _Call) -> str:
    """Σ a ⊙ b over all entries: the module's _vdot (np.vdot flattens; torch.vdot takes
    vectors)."""
    return c.call("_vdot")


def _copyto(c: _Call) -> str:
    """np.copyto(dst, src[, where=m]): dst.copy_(src), or torch.where(m, src, dst, out=dst)
    (a scalar src: dst.masked_fill_(m, src))."""
    dst, src = c.args
    if "where" in c.keywords and c.scalar(1):
        return f"{dst}.masked_fill_({c.keywords['where']}, {src})"
    if "where" in c.keywords:
        return f"torch.where({c.keywords['where']}, {src}, {dst}, out={dst})"
    return f"{dst}.copy_({src})"


def _take_along_axis(c: _Call) -> str:
    """np.take_along_axis(a, i, axis) → torch.take_along_dim(a, i, dim=axis) (i int64)."""
    a, i, *axis = c.args
    return c.call("torch.take_along_dim", [a, i, *(f"dim={x}" for x in axis)], skip=())


def _where(c: _Call) -> str:
    return c.call("torch.where")


def _array(name: str) -> Callable[[_Call], str]:
    """np.zeros(shape, dtype) → torch.zeros(shape, dtype=dtype) (init_params' lines)."""
    def spell(c: _Call) -> str:
        shape, *rest = c.args
        return c.call(name, [shape, *(f"dtype={d}" for d in rest)])
    return spell


_ELEMENTWISE = ("tanh", "exp", "expm1", "log", "log1p", "cos", "sin", "cosh", "sinh", "sign",
                "abs", "sqrt", "square", "arctan", "reciprocal")
_RENAMED = {"arctan": "atan"}

TORCH: dict[str, Callable[[_Call], str]] = {
    **{f"np.{f}": _named(f"torch.{_RENAMED.get(f, f)}") for f in _ELEMENTWISE},
    "np.dot": _dot,
    "np.vdot": _vdot,
    "np.sum": _named("torch.sum"),
    "np.add.reduce": _named("torch.sum"),
    "np.maximum.reduce": _named("torch.amax"),
    "np.add": _commutative("torch.add"),
    "np.multiply": _commutative("torch.mul"),
    "np.subtract": _subtract,
    "np.divide": _divide,
    "np.negative": _named("torch.neg"),
    "np.power": _named("torch.pow"),
    "np.maximum": _extremum("torch.maximum", "min"),
    "np.minimum": _extremum("torch.minimum", "max"),
    "np.greater": _named("torch.gt"),
    "np.greater_equal": _named("torch.ge"),
    "np.less": _named("torch.lt"),
    "np.less_equal": _named("torch.le"),
    "np.logaddexp": _logaddexp,
    "np.where": _where,
    "np.copyto": _copyto,
    "np.concatenate": _named("torch.cat"),
    "np.take_along_axis": _take_along_axis,
    "np.zeros": _array("torch.zeros"),
    "np.ones": _array("torch.ones"),
}  # the one spelling table of the torch backend: numpy call → torch source

_CONSTANTS = {"inf": "torch.inf", "pi": "torch.pi", "intp": "torch.int64"}  # not calls

_METHODS = {"fill": "fill_", "max": "amax", "min": "amin", "copy": "clone"}


class _Rewriter:
    def __init__(self, source: str, where: str, vectors: frozenset[str]):
        self.vectors = vectors
        self.source = source.encode()
        self.lines = [0]
        for line in source.encode().splitlines(keepends=True):
            self.lines.append(self.lines[-1] + len(line))
        self.where = where

    def offset(self, line: int, col: int) -> int:
        return self.lines[line - 1] + col

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),
                self.offset(node.end_lineno, node.end_col_offset))

    def text(self, node: ast.AST) -> str:
        if isinstance(node, ast.Call):
            spelled = self.call(node)
            if spelled is not None:
                return spelled
        if isinstance(node, ast.keyword) and node.arg in _KEYWORDS:
            return f"{_KEYWORDS[node.arg]}={self.text(node.value)}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "np":
            if node.attr in _CONSTANTS:
                return _CONSTANTS[node.attr]
            raise SymgradError(self.where, f"no torch spelling for np.{node.attr} yet "
                               "(symgrad.backends.TORCH, the torch backend's spelling table)")
        start, end = self.span(node)
        out, at = [], start
        for child in ast.iter_child_nodes(node):
            if not hasattr(child, "lineno") or isinstance(child, ast.expr_context):
                continue
            s, e = self.span(child)
            out.append(self.source[at:s].decode())
            out.append(self.text(child))
            at = e
        out.append(self.source[at:end].decode())
        return "".join(out)

    def call(self, node: ast.Call) -> str | None:
        name = ast.unparse(node.func)
        if name in TORCH:
            return TORCH[name](_Call(node, self.text, self.vectors))
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "astype":
            return self.astype(node)
        if isinstance(f, ast.Attribute) and f.attr in _METHODS and not name.startswith("np."):
            c = _Call(node, self.text)
            return c.call(f"{self.text(f.value)}.{_METHODS[f.attr]}")
        return None

    def astype(self, node: ast.Call) -> str:
        """x.astype(T.dtype) → x.to(T.dtype); np.where(c, a, b) of two scalars becomes a
        tensor of T's dtype and device first (torch would make it float32)."""
        f = node.func
        target = node.args[0]
        inner = f.value
        if (isinstance(inner, ast.Call) and ast.unparse(inner.func) == "np.where"
                and isinstance(target, ast.Attribute) and target.attr == "dtype"
                and all(_scalar(a) for a in inner.args[1:])):
            like = self.text(target.value)
            cond, a, b = (self.text(a) for a in inner.args)
            return f"torch.where({cond}, {like}.new_full((), {a}), {b})"
        return f"{self.text(inner)}.to({self.text(target)})"


def _bias_after_product(first: ast.stmt, second: ast.stmt) -> tuple[ast.Call, str] | None:
    """(the product, the bias) where ``np.dot(A, W, out=Z)`` is followed by ``Z += b``."""
    if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Call)
            and ast.unparse(first.value.func) == "np.dot" and len(first.value.args) == 2):
        return None
    out = [k.value for k in first.value.keywords if k.arg == "out"]
    if not (out and isinstance(out[0], ast.Name) and isinstance(second, ast.AugAssign)
            and isinstance(second.op, ast.Add) and isinstance(second.target, ast.Name)
            and second.target.id == out[0].id):
        return None
    return first.value, ast.unparse(second.value)


def torch_code(lines: tuple[str, ...] | list[str], where: str = "torch backend",
               vectors: frozenset[str] = frozenset(), indent: int = 4) -> tuple[str, ...]:
    """The torch spelling of numpy statements (the lines of one lowered statement);
    ``vectors`` names the 1-D tensors among the operands (the workspace's 𝟏's). A product
    into Z followed by Z += b becomes one torch.addmm(b, A, W, out=Z) (the bias in the
    GEMM's epilogue)."""
    source = "\n".join(lines)
    tree = ast.parse(source)
    rewriter = _Rewriter(source, where, vectors)
    out = []
    at = 0
    body = list(tree.body)
    i = 0
    while i < len(body):
        stmt = body[i]
        s, e = rewriter.span(stmt)
        out.append(source.encode()[at:s].decode())
        fused = _bias_after_product(stmt, body[i + 1]) if i + 1 < len(body) else None
        if fused is not None:
            product, bias = fused
            a, w = (rewriter.text(x) for x in product.args)
            target = ast.unparse(product.keywords[0].value)
            out.append(f"torch.addmm({bias}, {a}, {w}, out={target})")
            e = rewriter.span(body[i + 1])[1]
            i += 1
        else:
            out.append(rewriter.text(stmt))
        at = e
        i += 1
    out.append(source.encode()[at:].decode())
    return tuple(line for text in "".join(out).split("\n") for line in _fitted(text, indent))


LINE_LENGTH = 100  # ruff's, as pyproject.toml sets it


def _fitted(line: str, indent: int) -> list[str]:
    """line, or where torch's longer names push an assignment past the line length, its
    value in parentheses on a line of its own (as ruff format lays it out)."""
    target, eq, value = line.partition(" = ")
    if (indent + len(line) <= LINE_LENGTH or not eq or not target.isidentifier()
            or indent + 4 + len(value) > LINE_LENGTH or line.startswith(" ")):
        return [line]
    return [f"{target} = (", f"    {value}", ")"]
