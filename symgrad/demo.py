"""demo: the whole mission on the embedded digits data set (``symgrad demo``).

    symgrad demo [--out DIR] [--epochs E]

1. derive   the backpropagation formulas of examples/digits.toml (64 → 32 tanh → 10
            softmax, cross-entropy) and print them;
2. generate DIR/digits_mlp.py, the standalone numpy module;
3. check    its gradient against central differences of its own loss (float64, small
            random data) and prove the formulas by scalar expansion;
4. train    it in float32 on the fixed stratified 80/20 split of the UCI digits, with a
            progress bar, and report the held-out accuracy;
5. report   DIR/training_curves.png (matplotlib, the ``demo`` extra: skipped with a
            message when it is missing) and DIR/report.md (the derivation in LaTeX, the
            check, the proof and the result; renders on GitHub).

Training drives the generated ``train()`` one epoch at a time (``verbose=False``) so the
bar can show the loss and the held-out accuracy; it passes one ``numpy.random.Generator``
as the seed of every call, so the epochs see the same shuffles as one call
``train(params, X, Y, seed=SEED)`` would, and for SGD (no optimizer state) the result is
identical to it: ``python DIR/digits_mlp.py train DIR/digits.npz`` reproduces it with
numpy alone.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import symgrad
from symgrad.cli import command
from symgrad.errors import SymgradError

__all__ = ["DemoResult", "cmd_demo", "run_demo", "spec_path"]

MODULE = "digits_mlp.py"
PLOT = "training_curves.png"
REPORT = "report.md"
DATA = "digits.npz"
PARAMS = "params.npz"
SPEC = "digits.toml"


def spec_path() -> Path:
    """examples/digits.toml: inside the installed package (a wheel), else the repository's."""
    here = Path(symgrad.__file__).resolve().parent
    packaged = here / "examples" / SPEC
    return packaged if packaged.is_file() else here.parent / "examples" / SPEC


@dataclass
class DemoResult:
    """What the demo measured and wrote."""

    out: Path
    accuracy: float = float("nan")
    correct: int = 0
    total: int = 0
    train_seconds: float = 0.0
    history: dict[str, list[float]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # path -> what it holds
    check_ok: bool = False
    proof_ok: bool = False
    stopped: str = ""


# ==========================================================================================
# Output
# ==========================================================================================


def _say(text: str = "") -> None:
    print(text, flush=True)


def _section(number: int, title: str) -> None:
    _say()
    _say(f"[{number}/5] {title}")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write data to path through a temporary file in the same directory (never half-written)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _savez(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    _write_atomic(path, buf.getvalue())


# ==========================================================================================
# Training with a progress bar
# ==========================================================================================


def _progress_bar(total: int):
    """A tqdm bar on stderr, or None when tqdm (the ``demo`` extra) is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="epoch", desc="train", file=sys.stderr, dynamic_ncols=True,
                mininterval=0.1, leave=True)


def train_with_progress(module, params: dict[str, np.ndarray], data: dict[str, np.ndarray],
                        *, epochs: int, seed: int) -> tuple[dict[str, Any], float]:
    """Train ``params`` in place with the module's ``train()``; return (history, seconds).

    With SGD, one epoch per call (a shared Generator as the seed keeps the shuffles of a
    single call), updating a progress bar; an optimizer with state (momentum, Adam, …)
    would lose it between calls, so it gets one call and the module's own progress line.
    """
    X, Y, X_val, Y_val = data["X_train"], data["Y_train"], data["X_test"], data["Y_test"]
    bar = _progress_bar(epochs) if module.OPTIMIZER == "sgd" else None
    if bar is None:
        start = time.perf_counter()
        history = module.train(params, X, Y, epochs=epochs, seed=seed, X_val=X_val,
                               Y_val=Y_val, verbose=True)
        return history, time.perf_counter() - start
    rng = np.random.default_rng(seed)  # train() calls default_rng(rng): the same Generator
    history: dict[str, Any] = {"loss": [], "val_loss": [], "val_accuracy": []}
    seconds = 0.0
    with bar:
        for _ in range(epochs):
            start = time.perf_counter()
            h = module.train(params, X, Y, epochs=1, seed=rng, X_val=X_val, Y_val=Y_val,
                             verbose=False)
            seconds += time.perf_counter() - start
            for key in ("loss", "val_loss", "val_accuracy"):
                history[key] += h[key]
            if "stopped" in h:
                history["stopped"] = h["stopped"]
                break
            bar.set_postfix_str(f"loss {h['loss'][-1]:.4f}, held-out accuracy "
                                f"{h['val_accuracy'][-1]:.2%}", refresh=False)
            bar.update(1)
    return history, seconds


# ==========================================================================================
# The plot and the report
# ==========================================================================================


def plot_curves(history: dict[str, list[float]], title: str) -> bytes | None:
    """The loss and accuracy curves as PNG bytes; None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, history["loss"], label="training (mean over the epoch)")
    loss_ax.plot(epochs, history["val_loss"], label="held out (after the epoch)")
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy loss (log scale)")
    loss_ax.set_title("Loss")
    loss_ax.legend()
    loss_ax.grid(True, which="both", alpha=0.3)
    acc = 100 * np.asarray(history["val_accuracy"])
    acc_ax.plot(epochs, acc, color="C2", label="held out")
    acc_ax.axhline(acc[-1], color="C2", linestyle=":", linewidth=1)
    acc_ax.annotate(f"{acc[-1]:.2f}% after epoch {len(acc)}", (epochs[-1], acc[-1]),
                    textcoords="offset points", xytext=(0, -14), ha="right")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("held-out accuracy (%)")
    acc_ax.set_title("Accuracy on the 360 held-out images")
    acc_ax.set_ylim(max(0.0, min(acc.min(), 90.0) - 1), 100)
    acc_ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _check_table(report) -> str:
    lines = ["| parameter | shape | max relative error | worst entry | method | result |",
             "|---|---|---|---|---|---|"]
    for r in report.rows:
        shape = "×".join(map(str, r.shape)) or "scalar"
        lines.append(f"| `{r.name}` | {shape} | {r.error_text} | {r.worst} | {r.method} | "
                     f"{'pass' if r.ok else '**FAIL**'} |")
    return "\n".join(lines)


def render_report(*, spec, derivation, check, proof, result: DemoResult, summary: str,
                  data_sizes: tuple[int, int], plot: bool) -> str:
    """The Markdown report (GitHub's math: ``$…$`` and ``$$…$$``)."""
    t = spec.training
    n_train, n_test = data_sizes
    lines = [
        "# symgrad demo: handwritten digits",
        "",
        f"symgrad {symgrad.__version__} derived the backpropagation formulas of `{spec.name}` "
        f"({summary}) symbolically, generated the numpy module [`{MODULE}`]({MODULE}), "
        "checked its gradient, proved the formulas by scalar expansion, and trained it on "
        f"the UCI handwritten digits ({n_train:,} training images, {n_test} held out; "
        "8×8 pixels scaled to [0, 1]).",
        "",
        "## Result",
        "",
        "| | |",
        "|:--|:--|",
        f"| held-out accuracy | **{result.accuracy:.2%}** ({result.correct} of {result.total} "
        "images) |",
        f"| final training loss | {result.history['loss'][-1]:.4f} (mean over the last epoch) |",
        f"| final held-out loss | {result.history['val_loss'][-1]:.4f} |",
        f"| training | {len(result.history['loss'])} epochs of {t.optimizer.upper()}, "
        f"$\\eta = {t.learning_rate:g}$, batch {t.batch_size}, float32, seed {t.seed}: "
        f"{result.train_seconds:.2f} s |",
        f"| gradient check | {'passed' if check.ok else '**failed**'} "
        f"({check.method}, tolerance {check.tol:g}) |",
        f"| proof by scalar expansion | {'all formulas proved' if proof.ok else '**failed**'} |",
    ]
    if result.stopped:
        lines += ["", f"**Training stopped:** {result.stopped}"]
    lines.append("")
    if plot:
        lines += [f"![Loss and held-out accuracy per epoch]({PLOT})", ""]
    else:
        lines += ["(No plot: matplotlib is not installed; `pip install 'symgrad[demo]'`.)", ""]
    lines += [derivation.markdown(steps=True).rstrip(), ""]
    lines += [
        "## Gradient check",
        "",
        f"The module's `loss_and_grad` against {check.method} differences of its own `loss`: "
        f"float64, {check.samples} random samples, seed {check.seed}. Relative error "
        r"$|a - n| / \max(|a|, |n|, 10^{-12})$ per entry; the table shows the worst entry.",
        "",
        _check_table(check),
        "",
    ]
    lines += [f"Note: {n}" for n in check.notes]
    lines += [
        "## Proof by scalar expansion",
        "",
        "The matrix formulas are proved on a tiny instance with the activation and the loss "
        "left abstract (every entry's derivative expanded and compared), then each scalar "
        "derivative is proved once:",
        "",
    ]
    for c in proof.claims:
        detail = f" — {c.detail}" if c.detail else ""
        item = f"{c.what}{detail}".replace("_", r"\_")
        lines.append(f"- {'proved' if c.ok else '**not proved**'}: {item}")
    lines += [
        "",
        "## Reproduce",
        "",
        "```sh",
        *_commented([
            ("symgrad demo --out DIR", "this report, from scratch"),
            (f"python {MODULE} train {DATA}", "the same training, numpy only"),
            (f"symgrad check {SPEC} --method complex", "the complex-step check"),
            (f"symgrad derive {SPEC} --steps --format markdown", "this derivation"),
        ]),
        "```",
        "",
    ]
    return "\n".join(lines)


def _commented(commands: list[tuple[str, str]]) -> list[str]:
    width = max(len(cmd) for cmd, _ in commands)
    return [f"{cmd.ljust(width)}  # {what}" for cmd, what in commands]


# ==========================================================================================
# The demo
# ==========================================================================================


def run_demo(out: str | Path = "demo-out", epochs: int | None = None) -> DemoResult:
    """Run the demo, printing as it goes; write its files into ``out``."""
    from symgrad.check import check_module
    from symgrad.codegen import generate, load_module
    from symgrad.crosscheck import prove
    from symgrad.datasets import digits_split
    from symgrad.derive import derive
    from symgrad.spec import load_spec

    if epochs is not None and epochs < 1:
        raise SymgradError("demo: --epochs", f"must be at least 1, got {epochs}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SymgradError(str(out), "exists and is not a directory; give --out a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SymgradError(str(out), f"cannot create the directory: {e.strerror}") from None
    result = DemoResult(out)

    spec = load_spec(spec_path())
    t = spec.training
    epochs = t.epochs if epochs is None else epochs
    data = digits_split(np.float32)
    n_train, n_test = len(data["y_train"]), len(data["y_test"])
    _say("symgrad demo: derive, generate, check and train a network on the UCI handwritten "
         f"digits\n({n_train + n_test:,} 8×8 images: {n_train:,} to train on, {n_test} held out)")

    _section(1, "derive: the backpropagation formulas of examples/digits.toml")
    derivation = derive(spec)
    text = derivation.text()
    summary = text.splitlines()[0].split(": ", 1)[-1]
    _say(text.rstrip())

    _section(2, "generate: the training module (numpy only; each line carries its formula)")
    spec_copy = out / SPEC
    _write_atomic(spec_copy, spec_path().read_bytes())
    result.files[str(spec_copy)] = "the network spec (edit it, then symgrad generate)"
    module_path = generate(spec, out / MODULE)
    result.files[str(module_path)] = "the generated numpy module (standalone)"
    n_lines = module_path.read_text(encoding="utf-8").count("\n")
    _say(f"wrote {module_path} ({n_lines} lines): INPUTS, OUTPUTS, PARAM_SHAPES, init_params, "
         "forward, loss, loss_and_grad, predict, train, check_gradients")

    _section(3, "check: the module's gradient against differences of its own loss; "
                "a proof of the formulas")
    module = load_module(module_path)
    check = check_module(module)
    check.target = str(module_path)
    _say(check.text().rstrip())
    result.check_ok = check.ok
    _say()
    proof = prove(spec, spot=False)  # the numeric check above already spot-checks
    _say(proof.text().rstrip())
    result.proof_ok = proof.ok
    if not (check.ok and proof.ok):
        _say("\nsymgrad demo: the gradient check or the proof failed; not training")
        return result

    _section(4, f"train: {epochs} epochs of {t.optimizer.upper()} (η = {t.learning_rate:g}, "
                f"batch {t.batch_size}) in float32, seed {t.seed}")
    params = module.init_params(t.seed, np.float32)
    history, seconds = train_with_progress(module, params, data, epochs=epochs, seed=t.seed)
    result.history, result.train_seconds = history, seconds
    result.stopped = history.get("stopped", "")
    predicted = module.predict(params, data["X_test"])
    result.correct = int(np.sum(predicted == data["y_test"]))
    result.total = n_test
    result.accuracy = result.correct / n_test
    _say(f"held-out accuracy: {result.accuracy:.2%} ({result.correct} of {n_test} images), "
         f"after {len(history['loss'])} epochs; training took {seconds:.2f} s")
    if result.stopped:
        _say(f"training stopped: {result.stopped}")

    _section(5, "report")
    data_path = out / DATA
    _savez(data_path, X=data["X_train"], y=data["y_train"], X_val=data["X_test"],
           y_val=data["y_test"])
    result.files[str(data_path)] = "the digits split (X, y, X_val, y_val; X scaled by 1/16)"
    params_path = out / PARAMS
    _savez(params_path, **params)
    result.files[str(params_path)] = f"the trained parameters (load_params in {MODULE})"
    title = (f"{spec.name}: {summary.split(';')[0]}, {t.optimizer.upper()} "
             f"η = {t.learning_rate:g}, batch {t.batch_size}, float32")
    png = plot_curves(history, title) if history["loss"] else None
    plot_path = out / PLOT
    if png is None:
        _say("matplotlib is not installed, so there is no plot (pip install 'symgrad[demo]')")
    else:
        _write_atomic(plot_path, png)
        result.files[str(plot_path)] = "training and held-out loss, held-out accuracy per epoch"
    report_path = out / REPORT
    report = render_report(spec=spec, derivation=derivation, check=check, proof=proof,
                           result=result, summary=summary, data_sizes=(n_train, n_test),
                           plot=png is not None)
    _write_atomic(report_path, report.encode("utf-8"))
    result.files[str(report_path)] = "the derivation (LaTeX), the check, the proof, the result"

    width = max(len(p) for p in result.files)
    _say("wrote:")
    for path, what in result.files.items():
        _say(f"  {path.ljust(width)}  {what}")
    _next_steps(out)
    return result


def _next_steps(out: Path) -> None:
    spec, module, data = out / SPEC, out / MODULE, out / DATA
    steps = [
        ("each chain-rule step, and the scalar derivatives SymPy found",
         f"symgrad derive {spec} --steps"),
        ("check a gradient you derived by hand (here ∂L/∂W₁ = Xᵀ δ₁)",
         f'symgrad verify {spec} --wrt W1 "X.T @ dZ1"'),
        ("the gradient check by the complex step (exact to rounding, through the derivation)",
         f"symgrad check {spec} --method complex"),
        ("the same training with numpy alone", f"python {module} train {data}"),
        ("your own network: edit the layers, activations (any expression in x) and the loss",
         f"cp {spec} my_net.toml && symgrad generate my_net.toml"),
    ]
    _say("\nwhat to try next:")
    for what, cmd in steps:
        _say(f"  # {what}\n  {cmd}")


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(args.out, args.epochs)
    if not (result.check_ok and result.proof_ok) or result.stopped:
        return 1
    return 0
