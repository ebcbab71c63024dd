"""The public surface is ``symgrad.__all__`` (as httpx's tests/test_exported_members.py
holds httpx's): a change to it is a decision, made here on purpose."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import symgrad

REPO = Path(__file__).resolve().parents[1]

PUBLIC = [
    "CheckReport",
    "Derivation",
    "Layer",
    "Picture",
    "Spec",
    "SymgradError",
    "Training",
    "__version__",
    "check_module",
    "check_spec",
    "derive",
    "digits_split",
    "draw",
    "draw_expr",
    "generate",
    "generate_source",
    "load_digits",
    "load_module",
    "load_spec",
    "prove",
    "spec_from_dict",
    "verify",
]


def test_all_is_the_public_surface() -> None:
    assert symgrad.__all__ == PUBLIC
    assert symgrad.__all__ == sorted(symgrad.__all__)


def test_every_name_comes_from_its_module() -> None:
    for name in PUBLIC:
        value = getattr(symgrad, name)
        if name == "__version__":
            continue
        home = importlib.import_module(symgrad._API[name])
        assert value is getattr(home, name), name
        assert name in getattr(home, "__all__", [name]), f"{home.__name__}.__all__ lacks {name}"
    assert set(symgrad._API) == set(PUBLIC) - {"__version__"}


def test_no_other_public_names() -> None:
    """Besides __all__, the package namespace holds only its submodules."""
    extra = {
        name for name, value in vars(symgrad).items()
        if not name.startswith("_") and name not in PUBLIC
        and not (type(value).__name__ == "module" and value.__name__ == f"symgrad.{name}")
    }
    assert extra == set()
    assert set(PUBLIC) <= set(dir(symgrad))


def test_star_import() -> None:
    namespace: dict = {}
    exec("from symgrad import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(PUBLIC)


def test_version_in_one_place() -> None:
    assert symgrad.__version__.count(".") == 2
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject and "version =" not in pyproject.split("[project]")[1].split("\n[")[0]
    out = subprocess.run([sys.executable, "-m", "symgrad", "--version"], capture_output=True,
                         text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == f"symgrad {symgrad.__version__}"


def test_import_is_quick() -> None:
    """`import symgrad` (and so `symgrad --version`) loads neither SymPy nor numpy."""
    code = ("import sys, symgrad; symgrad.__version__; "
            "print(sorted(m for m in ('sympy', 'numpy', 'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_derive_and_verify_are_functions() -> None:
    """``symgrad.derive(spec)`` and ``symgrad.verify(...)`` are the functions, also after
    their submodules are imported (the import system binds a submodule on its package);
    the modules stay reachable through sys.modules and ``from symgrad.derive import …``."""
    code = (
        "import sys, types, symgrad, symgrad.derive, symgrad.verify\n"
        "from symgrad.derive import derive_graph\n"
        "from symgrad import derive, verify\n"
        "for f in (symgrad.derive, symgrad.verify, derive, verify):\n"
        "    assert isinstance(f, types.FunctionType), f\n"
        "assert symgrad.derive is sys.modules['symgrad.derive'].derive\n"
        "assert symgrad.verify is sys.modules['symgrad.verify'].verify\n"
        "print(derive_graph.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "symgrad.derive"


def test_entry_points_take_a_path_or_a_spec() -> None:
    """One coercion (symgrad.spec.as_spec) at every public entry point."""
    path = REPO / "examples" / "digits.toml"
    spec = symgrad.load_spec(path)
    assert symgrad.derive(str(path)).text() == symgrad.derive(spec).text()
    assert symgrad.generate_source(path) == symgrad.generate_source(spec)
    assert symgrad.verify(str(path), "b2", "sum(dZ2, axis=0)", symbolic=False).ok
    assert symgrad.prove(path, spot=False).ok
    picture = symgrad.draw(path, backward=True)
    assert isinstance(picture, symgrad.Picture) and picture.source.startswith("digraph")
    assert picture.source == symgrad.draw(spec, backward=True).source
    assert symgrad.draw_expr("sum(x * x)", ["x=n,1"], ["x"]).source.startswith("digraph")
    with pytest.raises(TypeError, match="expected a symgrad.Spec or the path of a TOML spec, "
                                        "got int"):
        symgrad.derive(3)
