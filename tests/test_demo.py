"""``symgrad demo``: the whole mission on the digits data, its files, and its accuracy.

The full demo (100 epochs) runs once per module; the variations (no matplotlib, no tqdm,
bad arguments) run with two epochs.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from symgrad import demo
from symgrad.cli import main
from symgrad.codegen import load_module
from symgrad.datasets import digits_split

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
FILES = ("digits.toml", "digits_mlp.py", "digits.npz", "params.npz", "training_curves.png",
         "report.md")


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["demo", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory):
    """The demo as `make demo` runs it: (exit code, stdout, stderr, out dir)."""
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    code, stdout, stderr = run_cli("--out", str(out))
    return code, stdout, stderr, out


def accuracy_of(stdout: str) -> float:
    m = re.search(r"^held-out accuracy: (\d+\.\d+)% \((\d+) of 360 images\)", stdout, re.M)
    assert m, stdout
    assert float(m.group(1)) == pytest.approx(100 * int(m.group(2)) / 360, abs=0.005)
    return float(m.group(1))


def test_exits_0_and_prints_every_stage(full) -> None:
    code, stdout, stderr, out = full
    assert code == 0, stdout + stderr
    stages = re.findall(r"^\[(\d)/5\] (\w+)", stdout, re.M)
    assert stages == [("1", "derive"), ("2", "generate"), ("3", "check"), ("4", "train"),
                      ("5", "report")]
    # the derivation, the check table, the proof
    assert "δ₁ = ∂L/∂Z₁ = (δ₂ W₂ᵀ) ⊙ (1 − A₁²)" in stdout
    assert re.search(r"^W1 +\(64, 32\) +\S+ +.* +central +pass$", stdout, re.M)
    assert "ok: 5 of 5 checks passed" in stdout
    assert "all formulas proved" in stdout
    # where it wrote what, and what to try next
    for name in FILES:
        assert str(out / name) in stdout
    for hint in ("--steps", "symgrad verify", "--method complex", "symgrad generate"):
        assert hint in stdout.split("what to try next:")[1]


def test_progress_bar_shows_loss_and_accuracy(full) -> None:
    _, _, stderr, _ = full
    final = stderr.split("\r")[-1]
    assert re.search(r"train: 100%\|.*\| 100/100 .*loss \d\.\d{4}, held-out accuracy \d+\.\d\d%",
                     final), stderr[-500:]


def test_held_out_accuracy_is_at_least_97_percent(full) -> None:
    _, stdout, _, _ = full
    assert accuracy_of(stdout) >= 97.0


def test_training_time_is_reported(full) -> None:
    """Measured, not asserted (benchmarks measure; tests assert properties)."""
    _, stdout, _, _ = full
    assert re.search(r"training took \d+\.\d+ s", stdout)


def test_files(full) -> None:
    _, stdout, _, out = full
    assert sorted(p.name for p in out.iterdir()) == sorted((*FILES, demo.MANIFEST))
    png = (out / "training_curves.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 20_000
    width, height = np.frombuffer(png[16:24], dtype=">u4")
    assert (width, height) == (1000, 420)
    module = load_module(out / "digits_mlp.py")
    params = module.load_params(out / "params.npz")
    with np.load(out / "digits.npz") as data:
        accuracy = np.mean(module.predict(params, data["X_val"]) == data["y_val"])
        assert data["X"].dtype == np.float32 and data["X"].shape == (1437, 64)
    assert 100 * accuracy == pytest.approx(accuracy_of(stdout), abs=0.005)


def test_report_renders_formulas_check_proof_and_result(full) -> None:
    _, stdout, _, out = full
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# symgrad demo: handwritten digits\n")
    for heading in ("## Result", "### Forward", "### Backward", "### Chain rule, step by step",
                    "### Scalar derivatives found by SymPy", "## Gradient check",
                    "## Proof by scalar expansion", "## Reproduce"):
        assert f"\n{heading}" in report, heading
    # LaTeX as GitHub renders it: display math in $$ blocks, inline math in $ … $
    assert report.count("$$\n\\begin{aligned}") >= 4
    assert r"\frac{\partial L}{\partial W_{1}} &= X^{\top} \delta_{1}" in report
    assert "![Loss and held-out accuracy per epoch](training_curves.png)" in report
    assert "[`digits_mlp.py`](digits_mlp.py)" in report
    assert f"**{accuracy_of(stdout):.2f}%** (" in report
    assert re.search(r"^\| `W1` \| 64×32 \| \S+ \| .* \| central \| pass \|$", report, re.M)
    assert "- proved: chain rule" in report
    assert "\\_" in report  # f_l in a claim does not start emphasis


def test_the_standalone_module_reproduces_the_training(full) -> None:
    """`python DIR/digits_mlp.py train DIR/digits.npz`: the same 100 epochs, numpy only."""
    _, stdout, _, out = full
    proc = subprocess.run(
        [sys.executable, str(out / "digits_mlp.py"), "train", str(out / "digits.npz"),
         "--save", str(out.parent / "again.npz")],
        capture_output=True, text=True, timeout=120, check=True)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("epoch 100/100")
    assert f"val_accuracy {accuracy_of(stdout) / 100:.4f}" in last
    with np.load(out / "params.npz") as a, np.load(out.parent / "again.npz") as b:
        for name in a.files:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6)


def test_epoch_by_epoch_training_equals_one_train_call() -> None:
    """The shared Generator keeps the shuffles of one call, so the bar costs nothing."""
    from symgrad.codegen import generate_source
    from symgrad.spec import load_spec

    module = load_module(generate_source(load_spec(demo.spec_path())))
    data = digits_split(np.float32)
    a, b = module.init_params(0, np.float32), module.init_params(0, np.float32)
    module.train(a, data["X_train"], data["Y_train"], epochs=4, seed=3, verbose=False)
    history, seconds = demo.train_with_progress(module, b, data, epochs=4, seed=3)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert len(history["loss"]) == len(history["val_accuracy"]) == 4 and seconds > 0


def test_without_matplotlib_and_tqdm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo extra is optional: no plot (said so), the module's own progress lines."""
    for name in ("matplotlib", "matplotlib.figure", "tqdm"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    code, stdout, stderr = run_cli("--out", str(tmp_path), "--epochs", "2")
    assert code == 0, stdout + stderr
    assert "matplotlib is not installed" in stdout and "symgrad[demo]" in stdout
    assert not (tmp_path / "training_curves.png").exists()
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "No plot: matplotlib is not installed" in report and "](training_curves.png)" not in report
    assert "epoch 2/2  loss" in stderr
    assert "after 2 epochs" in stdout


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.iterdir())}


def test_rerun_replaces_its_own_files(tmp_path: Path) -> None:
    assert run_cli("--out", str(tmp_path), "--epochs", "1")[0] == 0
    assert run_cli("--out", str(tmp_path), "--epochs", "1")[0] == 0
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden == [demo.MANIFEST]  # no temporary files


@pytest.mark.parametrize("args, line", [
    (["--epochs", "0"], "demo: --epochs: must be at least 1, got 0"),
    (["--epochs", "x"], "demo: --epochs: invalid int value: 'x'"),
    (["--ou", "x"], "demo: unrecognized arguments --ou x (did you mean --out?)"),
])
def test_bad_arguments(args: list[str], line: str, tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path / "out"), *args]) == 2
    assert capsys.readouterr() == ("", f"symgrad: error: {line}\n")
    assert list(tmp_path.iterdir()) == []


def test_out_is_a_file(tmp_path: Path, capsys) -> None:
    target = tmp_path / "taken"
    target.write_text("mine")
    assert main(["demo", "--out", str(target)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"symgrad: error: {target}: exists and is not a directory; give --out a directory")


def test_out_is_not_writable(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a non-root user sees 0o555
    assert main(["demo", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr() == ("", f"symgrad: error: {tmp_path / 'out' / demo.SPEC}: cannot "
                                   f"write: permission denied (the directory {tmp_path} is not "
                                   "writable)\n")
    assert list(tmp_path.iterdir()) == []


def test_checks_every_target_before_writing_anything(tmp_path: Path, capsys) -> None:
    """The user's files (and the demo's own, once edited) are listed, all of them, and
    nothing in DIR changes; --force overwrites them."""
    (tmp_path / "digits_mlp.py").write_text("# my own work\n")
    (tmp_path / "report.md").write_text("my notes\n")
    (tmp_path / "unrelated.txt").write_text("kept\n")
    (tmp_path / demo.MANIFEST).write_text("[1, 2]\n")  # not ours, though named so
    before = snapshot(tmp_path)
    code, out, err = run_cli("--out", str(tmp_path), "--epochs", "1")
    assert (code, out) == (2, "")
    assert err == (f"symgrad: error: {tmp_path}: would overwrite digits_mlp.py, report.md, "
                   f"{demo.MANIFEST}, which "
                   "symgrad did not write or which were edited since; use --force to "
                   "overwrite, or --out another directory\n")
    assert snapshot(tmp_path) == before
    assert run_cli("--out", str(tmp_path), "--epochs", "1", "--force")[0] == 0
    assert (tmp_path / "report.md").read_text(encoding="utf-8").startswith("# symgrad demo")
    assert (tmp_path / "unrelated.txt").read_text() == "kept\n"
    # the demo's own files, edited (as its output invites for digits.toml): kept
    with open(tmp_path / "digits.toml", "a", encoding="utf-8") as fh:
        fh.write("# my change\n")
    before = snapshot(tmp_path)
    code, _, err = run_cli("--out", str(tmp_path), "--epochs", "1")
    assert code == 2 and "would overwrite digits.toml, which symgrad did not write" in err
    assert snapshot(tmp_path) == before


def test_stopped_by_the_command_budget_leaves_only_whole_files(tmp_path: Path, capsys,
                                                               monkeypatch) -> None:
    """SYMGRAD_TIMEOUT stops a demo that would not finish, in one line, wherever it is;
    what it wrote is whole and recorded, so the next run replaces it."""
    import hashlib
    import json
    import time

    def train_for_ever(*args, **kwargs):
        while True:
            time.sleep(0.05)

    monkeypatch.setattr(demo, "train_with_progress", train_for_ever)  # never finishes
    monkeypatch.setenv("SYMGRAD_TIMEOUT", "0.5")
    assert main(["demo", "--out", str(tmp_path), "--epochs", "1"]) == 2
    assert capsys.readouterr().err.endswith(
        "symgrad: error: demo: stopped after 0.5 s, the time limit of one command "
        "(SYMGRAD_TIMEOUT=SECONDS changes it)\n")
    names = {p.name for p in tmp_path.iterdir()}
    assert not [n for n in names if n.endswith(".tmp")]
    if demo.MANIFEST in names:
        recorded = json.loads((tmp_path / demo.MANIFEST).read_text())["files"]
        for name, digest in recorded.items():
            assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest
    monkeypatch.delenv("SYMGRAD_TIMEOUT")
    monkeypatch.undo()
    assert run_cli("--out", str(tmp_path), "--epochs", "1")[0] == 0


@pytest.mark.slow
def test_suggestions_run_as_printed_and_are_safe(full) -> None:
    """Each "what to try next" command runs, exactly as printed, from where the demo ran,
    and writes nothing outside DIR (the repository's generated/digits_mlp.py included)."""
    _, stdout, _, out = full
    commands = [line.strip() for line in stdout.split("what to try next:\n")[1].splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert len(commands) == 5
    tracked = (ROOT / "generated" / "digits_mlp.py").read_bytes()
    cwd_before = sorted(os.listdir())
    for cmd in commands:
        proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
    assert (ROOT / "generated" / "digits_mlp.py").read_bytes() == tracked
    assert sorted(os.listdir()) == cwd_before
    assert sorted(p.name for p in out.iterdir()) == sorted((*FILES, demo.MANIFEST))


def test_symgrad_command_is_the_running_one(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """`symgrad` is printed only when it is the symgrad on PATH; else the path that was run."""
    script = tmp_path / "venv" / "bin" / "symgrad"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert demo.symgrad_command() == os.path.join("venv", "bin", "symgrad")
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert demo.symgrad_command() == "symgrad"
    monkeypatch.setattr(sys, "argv", [str(ROOT / "symgrad" / "__main__.py")])
    assert demo.symgrad_command() == f"{demo.python_command()} -m symgrad"
    assert shlex.split(demo.python_command())[0] in ("python", "python3", sys.executable) or (
        os.path.abspath(shlex.split(demo.python_command())[0]) == sys.executable)


DIR_NAMES = st.text(alphabet=st.sampled_from(list("-ab $'\"./_")), min_size=1, max_size=12) \
    .filter(lambda s: s.strip("./") and not s.startswith("/"))


@settings(max_examples=60, deadline=None)
@given(out=DIR_NAMES)
def test_every_suggestion_reads_its_paths_as_paths(out: str) -> None:
    """The class of F9: for any --out DIR (a leading '-', spaces, quotes, '$'), each printed
    command, split as the shell splits it, gives each path to the program as that path and
    never as an option: symgrad's own parser reads the spec, -o and the check target back
    exactly; python gets the module and train the data as plain arguments."""
    from symgrad.cli import build_parser

    parser = build_parser()
    spec, module, data = (str(Path(out) / n) for n in (demo.SPEC, demo.MODULE, demo.DATA))
    sg = shlex.split(demo.symgrad_command())
    for _, cmd in demo.next_steps(Path(out)):
        words = shlex.split(cmd)
        if words[:len(sg)] == sg:
            args = parser.parse_args(words[len(sg):])
            target = "target" if args.command == "check" else "spec"
            assert os.path.normpath(getattr(args, target)) == os.path.normpath(spec)
            if args.command == "generate":
                assert os.path.normpath(args.output) == os.path.normpath(module)
        else:  # python MODULE train DATA
            assert words[0] == shlex.split(demo.python_command())[0] and words[2] == "train"
            assert not words[1].startswith("-") and not words[3].startswith("-")
            assert os.path.normpath(words[1]) == os.path.normpath(module)
            assert os.path.normpath(words[3]) == os.path.normpath(data)


def test_a_dash_directory_is_printed_as_dot_slash() -> None:
    steps = [cmd for _, cmd in demo.next_steps(Path("-dash"))]
    assert steps[0].endswith(" derive ./-dash/digits.toml --steps")
    assert steps[-1].endswith(" generate ./-dash/digits.toml -o ./-dash/digits_mlp.py")
