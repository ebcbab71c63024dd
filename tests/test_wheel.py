"""The package as a user gets it: build the wheel, install it into a fresh virtual
environment and run ``symgrad demo`` there (STYLE.md, "Packaging").

The wheel must carry templates/, every file of examples/ (the specs, the tutorial
notebook, the exercise sheet and its answers), the digits data with its licence,
``py.typed`` and LICENSE; the installed ``symgrad`` must not see this repository, and
``symgrad examples DIR`` must copy the examples out of it. About a minute (building,
``python -m venv``, installing numpy, SymPy, Jinja2, graphviz, matplotlib and tqdm from
the pip index or cache, a 3-epoch demo); ``-m "not wheel"`` deselects it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import symgrad
from symgrad.examples import example_files

pytestmark = [pytest.mark.wheel, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 300


def _env() -> dict[str, str]:
    """The environment without this repository or the test's venv on any path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "-q", "-w", str(dist)],
         cwd=dist)
    (built,) = dist.glob("symgrad-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    assert wheel.name == f"symgrad-{symgrad.__version__}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {p.name for p in (REPO / "templates").glob("*.jinja")}
    assert templates and {f"symgrad/templates/{t}" for t in templates} <= names
    assert {
        "symgrad/data/digits.npz",
        "symgrad/data/LICENSE-digits.txt",
        "symgrad/examples/digits.toml",
        "symgrad/demo.py",
        "symgrad/py.typed",
        "symgrad/examples.py",
        "symgrad/examples/tutorial.ipynb",
        "symgrad/examples/exercises/sheet.toml",
        f"symgrad-{symgrad.__version__}.dist-info/licenses/LICENSE",
        f"symgrad-{symgrad.__version__}.dist-info/licenses/symgrad/data/LICENSE-digits.txt",
    } <= names
    # every example, byte for byte (symgrad examples copies them out of the installed wheel)
    shipped = {n.removeprefix("symgrad/examples/") for n in names
               if n.startswith("symgrad/examples/")}
    assert shipped == set(example_files(REPO / "examples"))
    with zipfile.ZipFile(wheel) as zf:
        for rel in shipped:
            assert zf.read(f"symgrad/examples/{rel}") == (REPO / "examples" / rel).read_bytes(), rel
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = zf.read(metadata).decode()
    assert "License-Expression: MIT AND CC-BY-4.0" in meta
    assert "Classifier: Typing :: Typed" in meta
    assert "Requires-Dist: graphviz>=0.20\n" in meta  # a core dependency: symgrad graph
    assert "Description-Content-Type: text/markdown" in meta
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "symgrad = symgrad.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_demo_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-compile", f"{wheel}[demo]"], cwd=tmp_path)

    where = _run([str(python), "-c", "import symgrad; print(symgrad.__file__)"], cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    version = _run([str(bin_dir / "symgrad"), "--version"], cwd=tmp_path)
    assert version.stdout.strip() == f"symgrad {symgrad.__version__}"

    out = tmp_path / "out"
    demo = _run([str(bin_dir / "symgrad"), "demo", "--out", str(out), "--epochs", "3"],
                cwd=tmp_path)
    assert "held-out accuracy:" in demo.stdout
    assert "ok: " in demo.stdout and "all formulas proved" in demo.stdout
    for name in ("digits_mlp.py", "digits.toml", "digits.npz", "params.npz", "report.md",
                 "training_curves.png"):
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "](training_curves.png)" in report and r"\begin{aligned}" in report
    assert (out / "digits_mlp.py").read_text(encoding="utf-8").startswith(
        f"# Generated by symgrad {symgrad.__version__}")

    # the README's tour after pip install: symgrad examples, then its commands as printed
    copied = _run([str(bin_dir / "symgrad"), "examples"], cwd=tmp_path)
    expected = example_files(REPO / "examples")
    assert copied.stderr.splitlines()[0] == (
        f"symgrad: wrote {len(expected)} example files into examples:")
    for rel in expected:
        assert (tmp_path / "examples" / rel).read_bytes() == (REPO / "examples" / rel).read_bytes()
    # (not on PATH here, so named as typed from the working directory) runs as printed
    assert copied.stderr.splitlines()[-1] == "symgrad: next: venv/bin/symgrad derive examples/digits.toml"
    derive = _run(["bash", "-c", copied.stderr.splitlines()[-1].removeprefix("symgrad: next: ")],
                  cwd=tmp_path)
    assert derive.stdout.startswith("digits_mlp: 64 → 32 tanh → 10 softmax; loss cross_entropy")
    again = _run([str(bin_dir / "symgrad"), "examples", "examples"], cwd=tmp_path)
    assert again.stderr.splitlines()[0] == (
        f"symgrad: examples already holds the {len(expected)} example files, unchanged")
    dot = _run([str(bin_dir / "symgrad"), "graph", "examples/digits.toml"], cwd=tmp_path)
    assert dot.stdout.startswith("digraph")  # graphviz came with the core install
