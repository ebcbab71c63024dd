"""The engine's shape: stages import only earlier stages, and every op's lowerings are its own.

The import graph is read from the source (``ast``), every ``import`` counted — at module
level or inside a function (a lazy import is still a dependency: ``cli → exprmode → verify
→ cli`` was a circle through one). The ops are the bottom of the pipeline: they import no
stage that works on them.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import sympy as sp

import symgrad
from symgrad import ops
from symgrad.codegen import ArrayLowering, StepLowering
from symgrad.errors import SymgradError
from symgrad.ops import lowered
from symgrad.ops.base import N, Node, Sym

PACKAGE = Path(symgrad.__file__).resolve().parent
LATER_STAGES = {"derive", "codegen", "printing", "check", "verify", "cli", "exprmode",
                "crosscheck", "graph", "spec", "display", "demo", "exercise", "picture"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    """The symgrad modules ``name`` imports anywhere in its source (``from symgrad import
    ops`` is the module symgrad.ops; ``from symgrad.ops import Sym`` the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    out = set()
    for m in found:
        while m and m not in MODULES:  # symgrad.ops.Sym → symgrad.ops
            m = m.rpartition(".")[0]
        if m and m not in (name, "symgrad"):  # the package root only re-exports, lazily
            out.add(m)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == [["a", "b"], ["c", "d"]]


def test_the_graph_sees_lazy_imports() -> None:
    assert "symgrad.exprmode" in GRAPH["symgrad.cli"]  # imported inside a function
    assert "symgrad.ops" in GRAPH["symgrad.codegen"]


def test_no_import_cycles_among_symgrad_modules() -> None:
    found = cycles(GRAPH)
    detail = "; ".join(
        " ".join(f"{m} → {sorted(set(GRAPH[m]) & set(c))}" for m in c) for c in found)
    assert found == [], f"import cycles: {detail}"


def test_commands_register_below_the_command_line() -> None:
    """A stage registers its command with symgrad.commands, never by importing cli."""
    importers = sorted(m for m, deps in GRAPH.items() if "symgrad.cli" in deps)
    assert importers == ["symgrad.__main__"]
    assert GRAPH["symgrad.commands"] == set()


def test_ops_import_no_later_stage() -> None:
    op_modules = [m for m in MODULES if m == "symgrad.ops" or m.startswith("symgrad.ops.")]
    assert "symgrad.ops.lowered" in op_modules
    bad = {m: sorted(d for d in GRAPH[m] if d.rpartition(".")[2] in LATER_STAGES
                     and not d.startswith("symgrad.ops"))
           for m in op_modules}
    assert {m: b for m, b in bad.items() if b} == {}
    allowed = {"symgrad.activations", "symgrad.losses", "symgrad.naming", "symgrad.errors"}
    outside = {d for m in op_modules for d in GRAPH[m] if not d.startswith("symgrad.ops")}
    assert outside <= allowed, outside - allowed


# ------------------------------------------------------------------------------------------
# The lowerings ask the op; an op without a form is a one-line error
# ------------------------------------------------------------------------------------------


class Bare(Node):
    """An op that declares no numpy form."""

    def __init__(self):
        self.shape = (N, sp.Integer(2))


def test_an_op_without_a_numpy_form_is_a_one_line_error() -> None:
    with pytest.raises(SymgradError) as e:
        ArrayLowering().expr(ops.Hadamard(Sym("A", (N, sp.Integer(2))), Bare()), 0)
    assert e.value.one_line() == "symgrad: error: generate: cannot lower Bare to numpy"
    step = StepLowering({N: 4})
    with pytest.raises(SymgradError) as e:
        step.emit_into(ops.Add((Bare(), Sym("A", (N, sp.Integer(2))))), "Z1")
    assert e.value.one_line() == "symgrad: error: generate: cannot lower Bare in place"
    with pytest.raises(SymgradError) as e:
        ArrayLowering().expr(ops.LogSumExp(Sym("A", (N, sp.Integer(2))), None), 0)
    assert e.value.one_line() == (
        "symgrad: error: generate: cannot lower LogSumExp over all entries to numpy")


def test_codegen_has_no_node_classes_and_no_op_chains_in_its_dispatch() -> None:
    import symgrad.codegen as codegen

    own = [n for n, c in vars(codegen).items()
           if inspect.isclass(c) and issubclass(c, Node) and c.__module__ == codegen.__name__]
    assert own == []
    for fn in (ArrayLowering._expr, StepLowering.emit_into):
        assert "isinstance" not in inspect.getsource(fn)


def forms(cls) -> list[str]:
    return [f for f in ("numpy", "into") if getattr(cls, f) is not getattr(Node, f)]


def test_the_table_of_lowered_forms() -> None:
    """Which op has which numpy form, declared in its own class. An op that reaches a
    generated module declares its forms; the rest are the expression mode's and the
    proof's (``Eye``, ``Ones``, ``Trace``, ``SqNorm``) or replaced before lowering
    (``MeanLoss`` by the stable loss)."""
    table = {n: forms(c) for mod in (ops, lowered) for n, c in vars(mod).items()
             if inspect.isclass(c) and issubclass(c, Node) and c is not Node}
    both, readable, in_place = ["numpy", "into"], ["numpy"], ["into"]
    assert table == {
        "Sym": both, "Const": readable, "Map": both, "Scale": both, "Hadamard": both,
        "Add": both,
        "MatMul": both, "BiasAdd": both, "Transpose": readable, "Concat": both,
        "ColSlice": both,
        "Sub": both, "ColSum": both, "RowSum": both, "Broadcast": both, "SqNormHalf": readable,
        "AbsSum": readable, "Eye": [], "Ones": [], "Trace": [], "SqNorm": [],
        "Elementwise": both, "Softmax": both, "LogSumExp": both,
        "MeanLoss": [],
        "Standardize": both, "InvStd": both, "Dropout": both,
        "Total": readable, "ColumnBias": in_place, "Augmented": in_place, "SoftmaxT": in_place,
        "LogSumExpT": in_place, "SumRows": in_place, "SumColumns": in_place,
        # expression mode's vocabulary (issue 13): printed and read by ExprNumpyPrinter
        "Norm": readable, "Extremum": readable, "ArgMask": readable, "DiagMatrix": readable,
        "DiagPart": readable, "Kron": readable, "KronFactor": readable,
        "Inverse": readable, "Det": readable, "LogDet": readable, "Solve": readable,
        "MatPow": both,
        # feature maps (issue 12): the generated module's kernels
        "Im2col": both, "Col2im": both, "PoolArgmax": both, "MaxPool": both,
        "MaxPoolBack": both, "AvgPool": both, "AvgPoolBack": both, "Flatten": both,
        "Unflatten": both,
        # an image batch read as a map by a non-window op (batchnorm, dropout, add, concat)
        "ImageRows": both,
    }
