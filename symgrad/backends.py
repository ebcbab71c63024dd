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
lowered calls ``im2col(A, hw, …, out=P)`` are the same text in either module. The fast
training step's convolution and pooling then go to torch's own kernels
(:func:`torch_kernels`: aten convolution, convolution_backward, max_pool2d_with_indices,
avg_pool2d and their backward passes, on channels_last views of the maps).

Chosen over one module written against the Array API standard (array-api-compat's
``array_namespace``): the standard has no ``out=`` and no in-place matmul, so the fast
training step would allocate every intermediate (benchmarks/backend_bench.py measures the
two; see benchmarks/README.md).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any

from symgrad.errors import SymgradError

__all__ = ["BACKENDS", "NOT_YET", "check_backend", "cupy_module", "jax_code", "jax_context",
           "torch_code"]

BACKENDS = ("numpy", "torch", "jax", "cupy")
NOT_YET: tuple[str, ...] = ()  # issue 16: every backend it names is written


def _choices() -> str:
    return f"{', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}"


def check_backend(name: object, where: str) -> str:
    """name if it is a backend symgrad writes modules for, else a one-line SymgradError."""
    if name in BACKENDS:
        return str(name)
    if name in NOT_YET:
        raise SymgradError(where, f"the {name} backend is not available yet; use {_choices()}")
    raise SymgradError(where, f"unknown backend {name!r}; use {_choices()}")


# ------------------------------------------------------------------------------------------
# The torch dialect
# ------------------------------------------------------------------------------------------

# Python scalars of the generated code (never tensors): the batch size and the penalties'
# weights; with number literals, what a torch call may not take as its first argument.
SCALARS = {"N", "L1", "L2", "lr"}

_KEYWORDS = {"axis": "dim", "keepdims": "keepdim"}  # numpy's keyword → torch's


def _number(node: ast.AST, names: set[str]) -> bool:
    """A Python number: literals and ``names`` under unary and binary operators."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float) and not isinstance(node.value, bool)
    if isinstance(node, ast.Name):
        return node.id in names
    if isinstance(node, ast.UnaryOp):
        return _number(node.operand, names)
    if isinstance(node, ast.BinOp):
        return _number(node.left, names) and _number(node.right, names)
    return False


def _scalar(node: ast.expr) -> bool:
    return _number(node, SCALARS)


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
    would make a (1, n) result and resize out); Aᵀ B into out as the module's _matmul_tn(A,
    B, out=c) (a tall A, as a patch matrix: (Bᵀ A)ᵀ, BLAS's faster form there)."""
    a, b = c.args
    first = c.nodes[0]
    if isinstance(first, ast.Name) and first.id in c.vectors:
        return c.call("torch.mv", [f"{b}.T", a])
    if (isinstance(first, ast.Attribute) and first.attr == "T"
            and isinstance(first.value, ast.Name) and set(c.keywords) == {"out"}):
        return c.call("_matmul_tn", [first.value.id, b])
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


# ------------------------------------------------------------------------------------------
# The torch training step's convolution and pooling on torch's own kernels
# ------------------------------------------------------------------------------------------
#
# The lowered step computes Z = im2col(A) W + 𝟏b as a patch matrix P and a GEMM, ∂L/∂W =
# im2col(A)ᵀ δ as Pᵀ δ and ∂L/∂A = col2im(δ Wᵀ) as a GEMM and a scatter. In the torch
# module the same formulas go to torch's direct kernels (the module's _conv2d,
# _conv2d_weight, _conv2d_input, _maxpool_first(_back), _avgpool_mean(_back)): no patch
# matrix. ∂L/∂W then reads A itself at the backward pass, so a layer is rewritten only where
# nothing writes A's memory (A or a name sharing it) between the forward product and that
# statement, and where P is read by nothing else; otherwise it keeps the patch matrix.

_ALIAS = re.compile(r'ws\["(\w+)"\] = ws\["(\w+)"\]')
_GONE = "\0"  # a line folded into the one before it


def _parsed(line: str) -> tuple[str, list[str], dict[str, str], ast.Call] | None:
    """(callee, argument texts, keyword texts, node) of a line that is one call, else None."""
    text = line.strip()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr) \
            or not isinstance(tree.body[0].value, ast.Call):
        return None
    node = tree.body[0].value
    seg = lambda n: ast.get_source_segment(text, n) or ""  # noqa: E731
    return (ast.unparse(node.func), [seg(a) for a in node.args],
            {k.arg or "": seg(k.value) for k in node.keywords}, node)


def _base(node: ast.AST) -> str | None:
    """The array a target or an argument names: W in W, W[…], W.T, W.reshape(…)."""
    while not isinstance(node, ast.Name):
        if isinstance(node, ast.Subscript | ast.Attribute | ast.Starred):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            node = node.func.value
        else:
            return None
    return node.id


def _written(line: str) -> set[str]:
    """The arrays a line of torch code writes: assignment targets, out=/work=/mask=
    arguments, the tensor of an in-place method (x.add_(…), x[…].copy_(…))."""
    try:
        tree = ast.parse(line.strip())
    except SyntaxError:
        return set()
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[ast.AST] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, ast.Call):
            for k in node.keywords:
                if k.arg in ("out", "work", "mask"):
                    targets += list(k.value.elts) if isinstance(k.value, ast.Tuple) else [k.value]
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr.endswith("_") \
                    and not f.attr.startswith("_"):
                targets.append(f.value)
        for t in targets:
            for e in (t.elts if isinstance(t, ast.Tuple) else [t]):
                name = _base(e)
                if name:
                    out.add(name)
    return out


def _groups(aliases: list[str]) -> dict[str, set[str]]:
    """Each workspace name → the names sharing its memory (ws["a"] = ws["b"]…, views)."""
    group: dict[str, set[str]] = {}
    for line in aliases:
        m = _ALIAS.match(line.strip())
        if m:
            a, b = m.groups()
            merged = group.get(a, {a}) | group.get(b, {b})
            for name in merged:
                group[name] = merged
    return group


def torch_kernels(step: list[tuple[str, ...]], aliases: list[str]
                  ) -> tuple[list[tuple[str, ...]], set[str], set[str]]:
    """The torch step's statements (their code lines) with the convolution and pooling
    products on torch's kernels (see above); the workspace names the rewritten lines no
    longer read (patch matrices, padded copies, scratch); the max-pooling args now torch's
    int64 indices."""
    code = [list(lines) for lines in step]
    at = [(s, i) for s, lines in enumerate(code) for i in range(len(lines))]
    calls = {pos: _parsed(code[pos[0]][pos[1]]) for pos in at}
    group = _groups(aliases)
    dropped: set[str] = set()
    indices: set[str] = set()

    def uses(name: str) -> list[tuple[int, int]]:
        word = re.compile(rf"\b{name}\b")
        return [p for p in at if word.search(code[p[0]][p[1]])]

    def callee(pos, name):
        c = calls[pos]
        return c is not None and c[0] == name

    def put(pos, line):
        code[pos[0]][pos[1]] = line
        calls[pos] = _parsed(line)

    def free(*names):
        dropped.update(n for n in names if n)

    for k, pos in enumerate(at):
        c = calls[pos]
        if c is None:
            continue
        name, args, kw, node = c
        nxt = at[k + 1] if k + 1 < len(at) and at[k + 1][0] == pos[0] else None
        if name == "im2col" and len(args) == 5 and set(kw) <= {"out", "work"} and nxt \
                and callee(nxt, "torch.addmm"):
            _, add_args, add_kw, _ = calls[nxt]
            P = kw.get("out")
            if not (P and len(add_args) == 3 and add_args[1] == P and set(add_kw) == {"out"}):
                continue
            readers = [p for p in uses(P) if p not in (pos, nxt)]
            products = [p for p in readers if callee(p, "torch.addmm")  # P shared: A W' + b'
                        and len(calls[p][1]) == 3 and calls[p][1][1] == P
                        and set(calls[p][2]) == {"out"}]
            if not all(p in products or (callee(p, "_matmul_tn") and calls[p][1][0] == P
                                         and set(calls[p][2]) == {"out"}) for p in readers):
                continue
            shared = group.get(_base(node.args[0]) or "", {_base(node.args[0])})
            last = max((at.index(p) for p in readers), default=k)
            if any(_written(code[q[0]][q[1]]) & shared for q in at[k + 1 : last]) \
                    or any(calls[p][2]["out"] in shared for p in [nxt, *products]):
                continue  # A's memory is written before ∂L/∂W reads it: the patch matrix
            A, geometry = args[0], ", ".join(args[1:])
            for p, line in ((nxt, pos), *((p, p) for p in products)):
                (b, _, W), Z = calls[p][1], calls[p][2]["out"]
                put(line, f"_conv2d({A}, {W}, {b}, {geometry}, out={Z})")
            put(nxt, _GONE)
            for p in readers:
                if p in products:
                    continue
                G, dW = calls[p][1][1], calls[p][2]["out"]
                put(p, f"_conv2d_weight({A}, {G}, {geometry}, out={dW})")
            free(P, kw.get("work"))
        elif name == "torch.matmul" and len(args) == 2 and set(kw) == {"out"} and nxt \
                and callee(nxt, "col2im") and args[1].endswith(".T"):
            _, c_args, c_kw, _ = calls[nxt]
            S = kw["out"]
            if not (len(c_args) == 5 and c_args[0] == S and set(c_kw) == {"out"}
                    and set(uses(S)) == {pos, nxt}):
                continue
            geometry = ", ".join(c_args[1:])
            put(pos, f"_conv2d_input({args[0]}, {args[1][:-2]}, {geometry}, out={c_kw['out']})")
            put(nxt, _GONE)
            free(S)
        elif name == "maxpool" and len(args) == 5 and isinstance(node.keywords[0].value, ast.Tuple):
            arg = _base(node.keywords[0].value.elts[1]) or ""
            readers = [p for p in uses(arg) if p != pos]
            if arg in group or not all(
                    callee(p, "maxpool_back") and calls[p][1][1] == arg
                    and calls[p][1][2:] == args[1:] for p in readers):
                continue
            put(pos, f"_maxpool_first({', '.join(args)}, out={kw['out']})")
            for p in readers:
                g_args, g_kw = calls[p][1], calls[p][2]
                free(g_kw.get("mask"))
                put(p, f"_maxpool_first_back({', '.join(g_args)}, out={g_kw['out']})")
            indices.add(arg)
            free(kw.get("work"), kw.get("mask"))
        elif name == "avgpool" and len(args) == 5 and "out" in kw:
            put(pos, f"_avgpool_mean({', '.join(args)}, out={kw['out']})")
            free(kw.get("work"))
        elif name == "avgpool_back" and len(args) == 5 and set(kw) == {"out"}:
            put(pos, f"_avgpool_mean_back({', '.join(args)}, out={kw['out']})")
    new = [tuple(line for line in lines if line is not _GONE) for lines in code]
    text = "\n".join(line for lines in new for line in lines)
    return new, {n for n in dropped if not re.search(rf"\b{n}\b", text)}, indices


def _geometry(c: ast.Call, text: str) -> str | None:
    """"hw, kernel, stride, padding" of a call im2col(A, hw, kernel, stride, padding) or
    col2im(P, …) without keywords, else None."""
    if len(c.args) != 5 or c.keywords:
        return None
    return ", ".join(ast.get_source_segment(text, a) or "" for a in c.args[1:])


def torch_readable_kernels(lines: tuple[str, ...]) -> tuple[str, ...]:
    """Readable statements (loss_and_grad's, forward's) with the convolution's products on
    torch's kernels: ``im2col(A, g…) @ W + b`` → ``_conv2d(A, W, b, g…)``, ``im2col(A,
    g…).T @ G`` → ``_conv2d_weight(A, G, g…)``, ``col2im(G @ W.T, g…)`` → ``_conv2d_input(G,
    W, g…)``; pooling keeps the module's kernels (its int8 arg is what hvp's tangents read)."""
    return tuple(_readable_line(line) for line in lines)


def _im2col(n: ast.AST, text: str) -> ast.Call | None:
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "im2col" \
            and _geometry(n, text):
        return n
    return None


def _readable_line(line: str) -> str:
    try:
        tree = ast.parse(line)
    except SyntaxError:
        return line
    spans: list[tuple[int, int, str]] = []

    def seg(n: ast.AST) -> str:
        return ast.get_source_segment(line, n) or ""

    for n in ast.walk(tree):
        if not isinstance(n, ast.expr) or n.lineno != 1 or n.end_lineno != 1 \
                or any(s <= n.col_offset < e for s, e, _ in spans):
            continue  # (inside a rewritten span)
        new = None
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add) \
                and isinstance(n.left, ast.BinOp) and isinstance(n.left.op, ast.MatMult) \
                and (c := _im2col(n.left.left, line)):
            new = (f"_conv2d({seg(c.args[0])}, {seg(n.left.right)}, {seg(n.right)}, "
                   f"{_geometry(c, line)})")
        elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult) \
                and isinstance(n.left, ast.Attribute) and n.left.attr == "T" \
                and (c := _im2col(n.left.value, line)):
            new = f"_conv2d_weight({seg(c.args[0])}, {seg(n.right)}, {_geometry(c, line)})"
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "col2im" \
                and _geometry(n, line) and isinstance(n.args[0], ast.BinOp) \
                and isinstance(n.args[0].op, ast.MatMult) \
                and isinstance(n.args[0].right, ast.Attribute) and n.args[0].right.attr == "T":
            G, W = n.args[0].left, n.args[0].right.value
            new = f"_conv2d_input({seg(G)}, {seg(W)}, {_geometry(n, line)})"
        if new is not None:
            spans.append((n.col_offset, n.end_col_offset, new))
    data = line.encode()
    for s, e, new in sorted(spans, reverse=True):  # (offsets in UTF-8 bytes)
        data = data[:s] + new.encode() + data[e:]
    return data.decode()


# ------------------------------------------------------------------------------------------
# The jax dialect
# ------------------------------------------------------------------------------------------
#
# JAX arrays are immutable, so only the readable statements of loss_and_grad (pure
# assignments: ``dW1 = X.T @ dZ1``) have a jax spelling; the fast path's ``out=`` and
# in-place statements have none (XLA fuses the readable ones inside one jax.jit). numpy's
# operators and methods (@, .T, .sum(axis=…), .reshape, .astype) are jax.numpy's too, so the
# dialect renames the calls np.f → jnp.f of its table and refuses everything that writes
# into an array.

JAX_NAMES = frozenset({
    "abs", "arctan", "concatenate", "cos", "cosh", "exp", "expm1", "greater", "greater_equal",
    "inf", "less", "less_equal", "log", "log1p", "logaddexp", "maximum", "minimum", "pi",
    "power", "reciprocal", "sign", "sin", "sinh", "sqrt", "square", "sum", "tanh", "where",
    "zeros", "ones", "full_like", "zeros_like", "ones_like", "take_along_axis", "int8", "intp",
})  # the one spelling table of the jax backend: np.f → jnp.f (the same name in jax.numpy)
_JAX_RENAMED = {"intp": "int32"}  # (jax.numpy has no intp; its indices are int32)

_JAX_REFUSED_METHODS = {"fill", "sort", "resize", "put", "itemset", "setflags"}  # in place


def jax_code(lines: tuple[str, ...] | list[str], where: str = "jax backend",
             indent: int = 4, dicts: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The jax spelling of readable numpy statements (the lines of one lowered statement):
    ``np.f`` → ``jnp.f`` for the names of :data:`JAX_NAMES`; a name the table lacks, an
    ``out=`` argument, an assignment into an array (``A[…] = …``) or an in-place method is
    refused in one line (JAX arrays are immutable); ``dicts`` names the dicts an item may be
    assigned into (init_params' ``params["W1"] = …``)."""
    source = "\n".join(lines)
    tree = ast.parse(source)
    spans: list[tuple[int, int, str]] = []
    offsets = [0]
    for line in source.encode().splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "np":
            if node.attr not in JAX_NAMES:
                raise SymgradError(where, f"no jax spelling for np.{node.attr} yet "
                                   "(symgrad.backends.JAX_NAMES, the jax backend's table)")
            start = offsets[node.value.lineno - 1] + node.value.col_offset
            end = offsets[node.end_lineno - 1] + node.end_col_offset
            spans.append((start, end, f"jnp.{_JAX_RENAMED.get(node.attr, node.attr)}"))
        elif isinstance(node, ast.keyword) and node.arg == "out":
            raise SymgradError(where, f"no jax spelling for out= in {ast.unparse(node.value)!r}"
                               " (JAX arrays are immutable: write the readable statement)")
        elif isinstance(node, ast.Assign | ast.AugAssign) and not all(
                isinstance(t, ast.Name) or isinstance(t, ast.Tuple)
                and all(isinstance(e, ast.Name) for e in t.elts)
                or isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                and t.value.id in dicts
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target])):
            raise SymgradError(where, f"no jax spelling for {ast.unparse(node).splitlines()[0]!r}"
                               " (JAX arrays are immutable: no assignment into an array)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in _JAX_REFUSED_METHODS:
            raise SymgradError(where, f"no jax spelling for .{node.func.attr}() (in place)")
    text = source.encode()
    for start, end, spelled in sorted(spans, reverse=True):
        text = text[:start] + spelled.encode() + text[end:]
    return tuple(line for t in text.decode().split("\n") for line in _fitted(t, indent))


_MASK = re.compile(r"(\s*)(\w+) = rng\.random\((\(.*\))\) >= ([0-9.e-]+)(  # .*)?")


def _jax_mask(line: str) -> str:
    """``M3 = rng.random((N, 64)) >= 0.2  # …`` (the numpy module's mask line) drawn from
    the layer's own key: ``M3 = _keep(jax.random.fold_in(key, 3), (N, 64), 0.2)  # …``."""
    m = _MASK.fullmatch(line)
    if m is None:
        raise SymgradError("jax backend", f"no jax spelling for the dropout mask {line.strip()}")
    space, name, shape, p, note = m.groups()
    layer = re.sub(r"\D", "", name)
    return f"{space}{name} = _keep(jax.random.fold_in(key, {layer}), {shape}, {p}){note or ''}"


def jax_context(d: Any, ctx: dict[str, Any], products: bool = False) -> dict[str, Any]:
    """The context of templates/jax_module.py.jinja from the numpy module's (``ctx``, as
    codegen.module_context(d) made it): the readable statements in jax's spelling
    (:func:`jax_code`), the pure loss-and-gradient function's return, the dropout masks from
    jax.random keys, batchnorm's running-statistics update as pure assignments. First-order
    optimizers only; anything else is refused in one line."""
    spec = d.spec
    where = f"{spec.source}: training.backend"
    if spec.training.optimizer in ("newton_cg", "lbfgs"):
        raise SymgradError(where, f"{spec.training.optimizer} is in numpy modules only so "
                           "far; use a first-order optimizer (sgd, momentum, nesterov, adam, "
                           "rmsprop) with the jax backend")
    ctx = dict(ctx)
    ctx["products"] = products  # hvp() and gnvp(): their statements in jax's spelling
    if products:
        for key in ("hvp", "gnvp"):
            ctx[key] = {**ctx[key], **{part: [type(s)(jax_code(s.code, where), s.comments)
                                              for s in ctx[key][part]]
                                       for part in ("forward", "tangents", "backward",
                                                    "adjoints")}}
    for key in ("buffer_shapes", "buffer_unpack", "mask_lines", "layer_init"):
        ctx.setdefault(key, [])
    ctx.setdefault("stochastic", False)
    ctx.setdefault("batchnorm", False)
    ctx.setdefault("mask_doc", "")
    chain = spec.is_chain
    keys = ["forward", "loss", "grad_forward", "grad_backward"]
    for key in keys + ([] if chain else ["inference_forward", "inference_loss"]):
        ctx[key] = [type(s)(jax_code(s.code, where), s.comments) for s in ctx[key]]
    if chain:  # a dense chain's init lines: the weights, zero biases
        ctx["layer_init"] = [line for l, code in ctx["init"] for line in (
            f'params["W{l}"] = {code}', f'params["b{l}"] = np.zeros(PARAM_SHAPES["b{l}"], dtype)')]
    ctx["layer_init"] = [re.sub(r"\brng\b", "next(keys)", line)
                         for init in ctx["layer_init"]
                         for line in jax_code([init], where, dicts=frozenset({"params"}))]
    ctx["mask_lines"] = [_jax_mask(line) for line in ctx["mask_lines"]]
    ctx["grad_return"] = [ctx["grad_return"][0].replace("return float(L), {", "grads = {"),
                          *ctx["grad_return"][1:]]
    stats, names = [], []
    for l, layer in enumerate(spec.layers, 1):
        if not layer.kind.buffers:  # batchnorm's running statistics
            continue
        m = float(layer.momentum)
        image = spec.image(spec.sources(l)[0])  # on a feature map: the batch's N·H·W rows
        n = "N" if image is None else f"{image[0] * image[1]} * N"
        names += [f"mu{l}", f"var{l}"]
        stats += [
            f'    # mean{l} ← (1 − m) mean{l} + m μ{l}, var{l} ← (1 − m) var{l} + m σ{l}² n/(n − 1)'
            f", m = {m!r}",
            f'    "mean{l}": {1 - m!r} * params["mean{l}"] + {m!r} * mu{l},',
            f'    "var{l}": {1 - m!r} * params["var{l}"] + {m!r} * {n} / ({n} - 1) * var{l},',
        ]
    ctx["stat_lines"], ctx["batch_stats"] = stats, names
    ctx["docstring"] = ctx["docstring"].replace(
        "a numpy training module", "a JAX training module", 1).replace(
        "dropout masks drawn\nfrom np.random.default_rng(seed)",
        "dropout masks drawn\nfrom jax.random keys of seed", 1)
    ctx["optimizers"] = "(" + ", ".join(f'"{o}"' for o in ctx["optimizers"]
                                        if o not in ("newton_cg", "lbfgs")) + ")"
    ctx["training"] = [(k, v) for k, v in ctx["training"] if k in (
        "OPTIMIZER", "LEARNING_RATE", "BATCH_SIZE", "EPOCHS", "SEED", "MOMENTUM", "BETA1",
        "BETA2", "EPS", "ALPHA")]
    return ctx


# ------------------------------------------------------------------------------------------
# The CuPy dialect
# ------------------------------------------------------------------------------------------
#
# CuPy mirrors numpy's API, so a CuPy module is the numpy module, every numpy call in it
# spelled for CuPy: the same name and out= where CuPy has them (checked against CuPy's
# reference, docs.cupy.dev), another spelling where it differs, and numpy kept for what
# stays on the host (the random generators, whose numbers are then copied to the device:
# the same draws as the numpy module; the .npz files; dtypes and their limits).  The whole
# rendered module goes through the table, so no statement is written twice; a numpy name
# the table does not know is refused in one line (``no CuPy spelling for np.…``).
# Chosen over a namespace variable in the templates (``xp.exp``): the templates and the
# numpy modules stay as they are, byte for byte, and the host/device split (which numpy
# stays numpy) is decided here, in one table, rather than at every call in the templates.

# numpy names used as they are: host work (files, generators, dtypes, floating-point
# state), scalar types CuPy takes as dtypes, constants
CUPY_HOST = {
    "np.random.default_rng", "np.random.SeedSequence", "np.random.BitGenerator",
    "np.random.Generator", "np.load", "np.lib.npyio.NpzFile", "np.errstate", "np.dtype",
    "np.finfo", "np.iinfo", "np.float32", "np.float64", "np.complex128", "np.int8",
    "np.int64", "np.intp", "np.integer", "np.floating", "np.bool_", "np.generic", "np.inf",
    "np.pi", "np.nan", "np.newaxis",
}

# numpy functions CuPy has under the same name, with the same positional arguments and
# out= where numpy's has it (cupy.<name> in CuPy's reference)
_CUPY_SAME = (
    "abs", "add", "amax", "amin", "arange", "argmax", "argmin", "argwhere", "array",
    "array_equal", "asarray", "ascontiguousarray", "broadcast_to", "ceil", "clip",
    "concatenate", "copysign", "cos", "cosh", "count_nonzero", "divide", "dot", "einsum",
    "empty", "empty_like", "equal", "exp", "expm1", "eye", "flatnonzero", "floor", "full",
    "full_like", "greater", "greater_equal", "isfinite", "isnan", "less", "less_equal", "log",
    "log1p", "logaddexp", "matmul", "max", "maximum", "may_share_memory", "mean", "min",
    "minimum", "multiply", "ndim", "negative", "ones", "ones_like", "power", "reciprocal",
    "shape", "shares_memory", "sign", "sin", "sinh", "sort", "sqrt", "square",
    "squeeze", "stack", "subtract", "sum", "take_along_axis", "tanh", "trunc", "unravel_index",
    "vdot", "where", "zeros", "zeros_like", "lib.stride_tricks.sliding_window_view",
    "linalg.det", "linalg.slogdet", "result_type", "iscomplexobj",
)

_CUPY_CONSTANTS = {"np.ndarray": "cp.ndarray"}  # numpy names that are CuPy's own

# generators on the host (numpy's: the numpy module's numbers), their draws copied over
RNG_NAMES = {"rng", "noise"}

# array attributes: CuPy's arrays are always writeable and aligned (their flags are
# c_contiguous, f_contiguous and owndata), and describe their memory for CUDA
_CUPY_ATTRIBUTES = {"writeable": "True", "aligned": "True"}


def _cupy_ufunc_where(c: _Call) -> str:
    """np.add(a, b, out=T, where=B): CuPy's ufuncs take no where=, cupy.copyto does."""
    a, b = c.args
    return f"cp.copyto({c.keywords['out']}, cp.add({a}, {b}), where={c.keywords['where']})"


def _cupy_add(c: _Call) -> str:
    return _cupy_ufunc_where(c) if "where" in c.keywords else c.call("cp.add")


def _cupy_savez(c: _Call) -> str:
    """np.savez(file, **arrays): the arrays copied to the host first (cupy.asnumpy)."""
    star = [k for k in c.node.keywords if k.arg is None]
    if len(star) != 1 or len(c.node.keywords) != 1:
        raise SymgradError("cupy backend", "no CuPy spelling for this np.savez call")
    arrays = c.keywords[None]
    return f"np.savez({', '.join(c.args)}, **{{k: cp.asnumpy(v) for k, v in {arrays}.items()}})"


def _cupy_add_at(c: _Call) -> str:
    """np.add.at(a, i, v) → cupyx.scatter_add(a, i, v) (numpy.add.at's CuPy form)."""
    return f"cupyx.scatter_add({', '.join(c.args)})"


CUPY: dict[str, Callable[[_Call], str]] = {
    **{f"np.{f}": _named(f"cp.{f}") for f in _CUPY_SAME},
    "np.add": _cupy_add,
    "np.add.reduce": _named("cp.sum"),  # ufunc.reduce: cupy.sum/amax take out=, keepdims=
    "np.maximum.reduce": _named("cp.amax"),
    "np.minimum.reduce": _named("cp.amin"),
    "np.add.at": _cupy_add_at,
    "np.copyto": _named("cp.copyto"),
    "np.savez": _cupy_savez,
}  # the one spelling table of the CuPy backend: numpy call → CuPy source


class _CupyCall(_Call):
    """A call being rewritten for CuPy: numpy's keywords are CuPy's."""

    def rest(self, skip: tuple[str, ...] = ()) -> list[str]:
        return [f"**{v}" if k is None else f"{k}={v}" for k, v in self.keywords.items()
                if k not in skip]


class _CupyRewriter(_Rewriter):
    """The CuPy spelling of a whole numpy module (see :data:`CUPY`)."""

    def text(self, node: ast.AST) -> str:
        if isinstance(node, ast.Call):
            spelled = self.call(node)
            if spelled is not None:
                return spelled
        name = _dotted(node)
        if name.startswith("np."):
            if name in _CUPY_CONSTANTS:
                return _CUPY_CONSTANTS[name]
            if name in CUPY_HOST:
                return name
            raise SymgradError(self.where, f"no CuPy spelling for {name} yet "
                               "(symgrad.backends.CUPY, the CuPy backend's spelling table)")
        if isinstance(node, ast.Attribute) and node.attr == "__array_interface__":
            return f"{self.text(node.value)}.__cuda_array_interface__"  # "data": (pointer, …)
        if (isinstance(node, ast.Attribute) and node.attr in _CUPY_ATTRIBUTES
                and isinstance(node.value, ast.Attribute) and node.value.attr == "flags"):
            return _CUPY_ATTRIBUTES[node.attr]
        return self.children(node)

    def children(self, node: ast.AST) -> str:
        """node's text with each part rewritten, the parts taken in source order (a dict's
        keys and values alternate; of an f-string only the expressions in braces)."""
        start, end = self.span(node)
        out, at = [], start
        parts = (v.value for v in node.values if isinstance(v, ast.FormattedValue)) \
            if isinstance(node, ast.JoinedStr) else ast.iter_child_nodes(node)
        spans = sorted((self.span(child), i, child) for i, child in enumerate(parts)
                       if hasattr(child, "lineno") and not isinstance(child, ast.expr_context))
        for (s, e), _, child in spans:
            if s < at:
                continue
            out.append(self.source[at:s].decode())
            out.append(self.text(child))
            at = e
        out.append(self.source[at:end].decode())
        return "".join(out)

    def call(self, node: ast.Call) -> str | None:
        f = node.func
        name = _dotted(f)
        if name.startswith("np.") and node.args and all(_host_scalar(a) for a in node.args):
            s, e = self.span(node)  # np.sqrt(6.0 / (fan_in + fan_out)): a number, for
            return self.source[s:e].decode()  # the host's draws (numpy's, as it is)
        if name in CUPY:
            return CUPY[name](_CupyCall(node, self.text))
        if name in CUPY_HOST:
            return None  # np.random.default_rng(seed), np.load(path), …: numpy's
        if name.startswith("np."):
            raise SymgradError(self.where, f"no CuPy spelling for {name} yet "
                               "(symgrad.backends.CUPY, the CuPy backend's spelling table)")
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                and f.value.id in RNG_NAMES and f.attr != "spawn":
            return self.draw(node)
        if isinstance(f, ast.Attribute) and f.attr == "take" and any(
                k.arg == "mode" for k in node.keywords):
            # cupy.ndarray.take(indices, axis=None, out=None): no mode (indices in range)
            c = _CupyCall(node, self.text)
            return c.call(f"{self.text(f.value)}.take", skip=("mode",))
        return None

    def draw(self, node: ast.Call) -> str:
        """rng.uniform(…) → cp.asarray(rng.uniform(…)): drawn on the host, copied over;
        noise.random(out=U) → U.set(noise.random(U.shape)) (cupy.ndarray.set: host → device)."""
        c = _CupyCall(node, self.text)
        method = f"{self.text(node.func.value)}.{node.func.attr}"
        if "out" in c.keywords:
            out = c.keywords["out"]
            return f"{out}.set({c.call(method, [*c.args, f'{out}.shape'], skip=('out',))})"
        return f"cp.asarray({c.call(method)})"


_CUPY_WORDS = (  # what the module says of itself
    ("a numpy training module", "a CuPy training module"),
    ("must be a numpy array (train() updates", "must be a CuPy array (train() updates"),
)


def cupy_module(source: str, where: str = "cupy backend") -> str:
    """The CuPy module for the numpy module ``source`` (its text, as symgrad renders it):
    every numpy call in CuPy's spelling (:data:`CUPY`), numpy kept for the host's work,
    ``import cupy as cp`` (and cupyx where used) beside numpy's import. Statements CuPy
    has no form for (a read-only flag) are left out."""
    tree = ast.parse(source)
    rewriter = _CupyRewriter(source, where, frozenset())
    raw = source.encode()
    out, at = [], 0
    for stmt in _statements(tree):
        s, e = rewriter.span(stmt)
        if s < at:
            continue  # inside a statement already written
        if _is_setflags(stmt):  # x.setflags(write=False): CuPy arrays have no such flag
            line_start = raw.rfind(b"\n", 0, s) + 1
            out.append(raw[at:line_start].decode())
            at = e + 1 if raw[e:e + 1] == b"\n" else e
            continue
        if isinstance(stmt, ast.FunctionDef | ast.ClassDef | ast.If | ast.For | ast.While
                      | ast.With | ast.Try):
            continue  # compound: its parts are visited one by one
        out.append(raw[at:s].decode())
        out.append(rewriter.text(stmt))
        at = e
    out.append(raw[at:].decode())
    text = "".join(out)
    for numpy_words, cupy_words in _CUPY_WORDS:
        text = text.replace(numpy_words, cupy_words)
    imports = "import cupy as cp\n" + ("import cupyx\n" if "cupyx." in text else "")
    return text.replace("import numpy as np\n", imports + "import numpy as np\n", 1)


HOST_SCALARS = {"fan_in", "fan_out"}  # Python numbers of the generated code's init helpers


def _host_scalar(node: ast.AST) -> bool:
    """A number computed from literals and HOST_SCALARS (np.sqrt(2.0 / fan_in))."""
    return _number(node, HOST_SCALARS)


def _dotted(node: ast.AST) -> str:
    """np.add.reduce for that chain of names, else "" (a call's result, a subscript)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else ""


def _is_setflags(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Attribute) and stmt.value.func.attr == "setflags")


def _statements(tree: ast.AST):
    """The module's statements in source order, compound ones before their parts; the
    heads of compound statements (a condition, a for's iterable, a with's items, a
    function's defaults) as the expressions they are."""
    for node in tree.body if isinstance(tree, ast.Module) else []:
        yield from _walk_statement(node)


def _walk_statement(node: ast.stmt):
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        yield node
        yield from (*node.decorator_list, *node.args.defaults,
                    *(d for d in node.args.kw_defaults if d is not None))
        for s in node.body:
            yield from _walk_statement(s)
    elif isinstance(node, ast.ClassDef):
        yield node
        yield from node.bases
        for s in node.body:
            yield from _walk_statement(s)
    elif isinstance(node, ast.If | ast.While):
        yield node
        yield node.test
        for s in (*node.body, *node.orelse):
            yield from _walk_statement(s)
    elif isinstance(node, ast.For):
        yield node
        yield node.target
        yield node.iter
        for s in (*node.body, *node.orelse):
            yield from _walk_statement(s)
    elif isinstance(node, ast.With):
        yield node
        for item in node.items:
            yield item.context_expr
            if item.optional_vars is not None:
                yield item.optional_vars
        for s in node.body:
            yield from _walk_statement(s)
    elif isinstance(node, ast.Try):
        yield node
        for s in node.body:
            yield from _walk_statement(s)
        for h in node.handlers:
            if h.type is not None:
                yield h.type
            for s in h.body:
                yield from _walk_statement(s)
        for s in (*node.orelse, *node.finalbody):
            yield from _walk_statement(s)
    else:
        yield node
