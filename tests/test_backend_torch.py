"""The torch backend (issue 16): ``symgrad generate --backend torch``.

The same networks as tests/test_codegen.py's table (sampled), generated for torch, against
the numpy module of the same spec: loss, gradients and training equal to rounding in
float64, close in float32; ruff-clean, deterministic; data-parallel training over two
processes (torchrun, gloo over 127.0.0.1) equal to one process; ``symgrad check`` on a
torch module; the spec's and the command line's refusals, exactly.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_codegen import TABLE, build_case, case_id, imported_modules, sample

from symgrad.backends import TORCH
from symgrad.codegen import generate_source, load_module
from symgrad.errors import SymgradError
from symgrad.spec import Layer, Spec, Training, spec_from_dict

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "rmsprop")
# every activation among the hidden ones (HIDDEN's even rows: no penalty), every loss and
# output (LOSSES, the deeper SHAPES), by a stride through the table
# (gelu_tanh's derivation alone takes 13 s: left to tests/test_codegen.py)
SAMPLE = [c for c in TABLE[:30:2] + TABLE[30::5] if c[0] != "gelu_tanh"]


def torch_module(case):
    b = build_case(case)
    return b, load_module(generate_source(b.derivation, "torch"))


def as_torch(params, dtype=None):
    return {k: torch.tensor(v, dtype=dtype) for k, v in params.items()}


def close(a, b, rtol) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(b), 1.0)))


@pytest.mark.parametrize("case", SAMPLE, ids=case_id)
def test_torch_module_equals_numpy_module(case) -> None:
    """loss_and_grad (float64: to rounding; float32: to float32's), forward, predict, and
    full-batch training with every optimizer (the order of the rows cannot matter)."""
    b, t = torch_module(case)
    params, X, Y = sample(b, n=6)
    loss, grads = b.module.loss_and_grad(params, X, Y)
    tloss, tgrads = t.loss_and_grad(as_torch(params), X, Y)
    assert close(tloss, loss, 1e-12)
    for k, g in grads.items():
        assert tgrads[k].dtype == torch.float64 and tgrads[k].shape == g.shape
        assert close(tgrads[k], g, 1e-10), k
    loss32, grads32 = t.loss_and_grad(as_torch(params, torch.float32), X, Y)
    assert all(g.dtype == torch.float32 for g in grads32.values())
    assert close(loss32, loss, 1e-4)
    assert all(close(grads32[k], g, 2e-3) for k, g in grads.items())
    assert close(t.forward(as_torch(params), X), b.module.forward(params, X), 1e-12)
    assert close(t.predict(as_torch(params), X), b.module.predict(params, X), 1e-12)
    assert close(t.loss(as_torch(params), X, Y), b.module.loss(params, X, Y), 1e-12)
    for optimizer in OPTIMIZERS[:: 1 if case is SAMPLE[0] else 2]:
        mine, theirs = as_torch(params), {k: v.copy() for k, v in params.items()}
        options = {"epochs": 2, "batch_size": 6, "optimizer": optimizer,
                   "learning_rate": 0.01, "verbose": False}
        h = t.train(mine, X, Y, **options)
        h_np = b.module.train(theirs, X, Y, **options)
        assert close(h["loss"], h_np["loss"], 1e-10), optimizer
        assert all(close(mine[k], theirs[k], 1e-10) for k in params), optimizer


DAG = {  # a residual skip, a concatenation with X, layernorm: every layer type it covers
    "network": {"name": "dag", "inputs": 5},
    "layer": [{"units": 6, "activation": "tanh"}, {"type": "layernorm"},
              {"units": 6, "activation": "relu"}, {"type": "add", "inputs": ["A1", "A3"]},
              {"type": "concat", "inputs": ["A4", "X"]},
              {"units": 3, "activation": "softmax"}],
    "loss": {"kind": "cross_entropy"}, "regularization": {"l2": 0.01},
}


def test_a_dag_with_layernorm_equals_the_numpy_module() -> None:
    spec = spec_from_dict(DAG, "dag.toml")
    numpy_module = load_module(generate_source(spec))
    t = load_module(generate_source(spec, "torch"))
    assert t.BUFFER_SHAPES == {} and set(t.PARAM_SHAPES) == set(numpy_module.PARAM_SHAPES)
    rng = np.random.default_rng(0)
    params = {k: v + 0.1 * rng.standard_normal(v.shape)
              for k, v in numpy_module.init_params(1).items()}
    X, Y = rng.standard_normal((9, 5)), np.eye(3)[rng.integers(0, 3, 9)]
    loss, grads = numpy_module.loss_and_grad(params, X, Y)
    tloss, tgrads = t.loss_and_grad(as_torch(params), X, Y)
    assert close(tloss, loss, 1e-12) and all(close(tgrads[k], g, 1e-10) for k, g in grads.items())
    assert close(t.forward(as_torch(params), X), numpy_module.forward(params, X), 1e-12)
    assert close(t.loss(as_torch(params), X, Y, training=False, seed=3), loss, 1e-12)
    assert close(t.loss_and_grad(as_torch(params), X, Y, seed=3)[0], loss, 1e-12)
    for optimizer in ("sgd", "adam"):
        mine, theirs = as_torch(params), {k: v.copy() for k, v in params.items()}
        options = {"epochs": 2, "batch_size": 9, "optimizer": optimizer, "verbose": False}
        assert close(t.train(mine, X, Y, **options)["loss"],
                     numpy_module.train(theirs, X, Y, **options)["loss"], 1e-10)
        assert all(close(mine[k], theirs[k], 1e-10) for k in params)
    assert max(t.check_gradients().values()) < 1e-6


def test_minibatches_are_sgd_on_loss_and_grad() -> None:
    """train's batches: the order of torch.Generator().manual_seed(seed), batch by batch,
    each an update by loss_and_grad of its rows (a last, smaller batch too)."""
    b, t = torch_module(("tanh", "softmax", "cross_entropy", 0.05))
    params, X, Y = sample(b, n=11)
    mine, ref = as_torch(params), as_torch(params)
    history = t.train(mine, X, Y, epochs=2, batch_size=4, optimizer="sgd",
                      learning_rate=0.1, verbose=False, seed=3)
    gen, losses = torch.Generator().manual_seed(3), []
    for _ in range(2):
        order, total = torch.randperm(11, generator=gen), 0.0
        for start in range(0, 11, 4):
            rows = order[start:start + 4]
            loss, grads = t.loss_and_grad(ref, torch.tensor(X)[rows], torch.tensor(Y)[rows])
            total += loss * len(rows)
            for k in ref:
                ref[k] -= 0.1 * grads[k]
        losses.append(total / 11)
    assert close(history["loss"], losses, 1e-12)
    assert all(close(mine[k], ref[k], 1e-12) for k in ref)


def test_the_torch_module_imports_torch_only_and_is_ruff_clean(tmp_path: Path) -> None:
    from test_generated import ruff

    for case in SAMPLE[::3]:
        source = generate_source(build_case(case).derivation, "torch")
        # torch at the top; numpy only where the script entry reads DATA.npz
        top = "\n".join(line for line in source.splitlines() if line.startswith("import "))
        assert imported_modules(top) - set(sys.stdlib_module_names) == {"torch"}
        assert imported_modules(source) - set(sys.stdlib_module_names) == {"torch", "numpy"}
        assert source.count("import numpy as np") == 1
        assert source == generate_source(build_case(case).derivation, "torch")  # deterministic
        (tmp_path / f"{case_id(case).replace('-', '_')}.py").write_text(source)
    # a long name (lines that hold it) and a DAG
    long = {**DAG, "network": {"name": "a_network_whose_long_name_fills_lines", "inputs": 5}}
    (tmp_path / "long.py").write_text(generate_source(spec_from_dict(long, "l.toml"), "torch"))
    config = ["--config", str(ROOT / "pyproject.toml")]
    for args in (["check", *config, str(tmp_path)], ["format", "--check", *config, str(tmp_path)]):
        proc = subprocess.run(ruff() + args, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_fast_step_is_written_with_torch_in_place_idioms() -> None:
    b, t = torch_module(("tanh", "softmax", "cross_entropy", 0.0))
    source = generate_source(b.derivation, "torch")
    step = source[source.index("def _step"):source.index("def _sgd")]
    assert "    # δ₁ = ∂L/∂Z₁ = (δ₂ W₂ᵀ) ⊙ (1 − A₁²)\n    torch.matmul(dZ2, W2.T, out=dZ1)\n" in step
    assert "    # ∂L/∂b₂ = 𝟏ᵀ δ₂\n    torch.mv(dZ2.T, ones, out=db2)\n" in step
    uses = [ast.unparse(n) for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "np"]
    assert uses == ["np.load"]  # the script entry's DATA.npz, nothing else
    assert "torch.empty((n, 4), **real)" in source  # the workspace, made on the device
    grad = source[source.index("def loss_and_grad"):source.index("def predict")]
    assert "    # ∂L/∂b₂ = 𝟏ᵀ δ₂\n    db2 = dZ2.sum(dim=0)\n" in grad


@pytest.mark.parametrize(("numpy_code", "torch_code"), [
    ("np.dot(X, W1, out=Z1)", "torch.matmul(X, W1, out=Z1)"),
    ("np.subtract(1.0, S2, out=S2)", "torch.neg(S2, out=S2).add_(1.0)"),
    ("np.maximum.reduce(Z, axis=1, keepdims=True, out=m)", "torch.amax(Z, dim=1, keepdim=True, out=m)"),
    ("np.add.reduce(E, axis=1, keepdims=True, out=s)", "torch.sum(E, dim=1, keepdim=True, out=s)"),
    ("A = np.exp(np.minimum(Z1, 0))", "A = torch.exp(torch.clamp(Z1, max=0))"),
    ("A = np.logaddexp(0, Z1)", "A = torch.logaddexp(Z1, Z1.new_zeros(()))"),
    ("np.copyto(A1, Z1, where=M1)", "torch.where(M1, Z1, A1, out=A1)"),
    ("D = np.where(A1 > 0, 1, 0.01).astype(A1.dtype)", "D = torch.where(A1 > 0, A1.new_full((), 1), 0.01)"),
    ("L = np.vdot(W, W) / N", "L = _vdot(W, W) / N"),
    ("S2.fill(0.01)", "S2.fill_(0.01)"),
    ("np.multiply(L2, W2, out=S3)", "torch.mul(W2, L2, out=S3)"),
])
def test_the_spelling_table(numpy_code, torch_code) -> None:
    from symgrad.backends import torch_code as spell

    assert spell([numpy_code]) == (torch_code,)


def test_a_call_the_table_lacks_is_refused() -> None:
    from symgrad.backends import torch_code as spell

    assert "np.einsum" not in TORCH
    with pytest.raises(SymgradError, match=r"^where: no torch spelling for np\.einsum yet"):
        spell(["A = np.einsum('ij->j', B)"], "where")


def test_backend_refusals() -> None:
    with pytest.raises(SymgradError) as e:
        Training(backend="tensorflow", where="s.toml: training")
    assert str(e.value) == ("s.toml: training.backend: unknown backend 'tensorflow'; use numpy, "
                            "torch, jax or cupy")
    # (batchnorm and dropout: tests/test_backend_torch_layers.py, with the refusal's text)
    lbfgs = Spec("net", 3, (Layer(2, "identity"),), loss="mse",
                 training=Training(optimizer="lbfgs", backend="torch"))
    # no longer refused: tests/test_backend_torch_second.py
    assert load_module(generate_source(lbfgs)).OPTIMIZERS[-2:] == ("newton_cg", "lbfgs")


def test_generate_and_check_on_the_command_line(tmp_path: Path, capsys) -> None:
    """symgrad generate --backend torch writes it; symgrad check MODULE.py checks it (float64
    numpy at the sandbox's boundary); --backend cupy is refused in one line."""
    from symgrad.cli import main

    spec = tmp_path / "small.toml"
    spec.write_text('[network]\nname = "small"\ninputs = 3\n[[layer]]\nunits = 4\n'
                    'activation = "tanh"\n[[layer]]\nunits = 2\nactivation = "softmax"\n'
                    '[loss]\nkind = "cross_entropy"\n')
    out = tmp_path / "small_torch.py"
    assert main(["generate", str(spec), "--backend", "mlx", "-o", str(out)]) == 2
    assert capsys.readouterr().err == ("symgrad: error: generate --backend: unknown backend "
                                       "'mlx'; use numpy, torch, jax or cupy\n")
    assert not out.exists()
    assert main(["generate", "--expr", "sum(X)", "--shape", "X=2,2", "--wrt", "X",
                 "--backend", "torch", "-o", str(out)]) == 2
    assert capsys.readouterr().err == ("symgrad: error: generate --backend: goes with a SPEC "
                                       "(expression modules are numpy only so far)\n")
    assert main(["generate", str(spec), "--backend", "torch", "-o", str(out)]) == 0
    assert "import torch\n" in out.read_text()
    capsys.readouterr()
    assert main(["check", str(out)]) == 0
    report = capsys.readouterr().out
    assert "W1" in report and "b2" in report and "FAIL" not in report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_train(path: Path, workdir: Path, device: str, timeout: float) -> None:
    """torchrun --nproc_per_node=2 PATH train workdir/data.npz on 127.0.0.1 (a free port):
    3 epochs of Adam in float64, batches of 4, lr 0.05, saved to workdir/two.pt; started in
    its own process group and killed with it past timeout (bounded, .ci/run-safe)."""
    options = ["--epochs", "3", "--batch-size", "4", "--optimizer", "adam", "--dtype", "float64",
               "--device", device, "--learning-rate", "0.05"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(path), "train",
               str(workdir / "data.npz"), *options, "--save", str(workdir / "two.pt")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, out + err


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path: Path) -> None:
    """torchrun --nproc_per_node=2 module.py train DATA.npz (gloo over 127.0.0.1): each process
    a shard of every batch, gradients all-reduced; the saved parameters are those of one
    process training on the whole batches (float64; batches of 4, 4 and 3 rows: unequal
    shards)."""
    b = build_case(("tanh", "softmax", "cross_entropy", 0.05))
    path = tmp_path / "net_torch.py"
    path.write_text(generate_source(b.derivation, "torch"))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((11, 3)), rng.integers(0, 3, 11)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    torchrun_train(path, tmp_path, "cpu", timeout=90)
    t = load_module(path)
    params = t.init_params(0, torch.float64)
    t.train(params, X, y, epochs=3, batch_size=4, optimizer="adam", learning_rate=0.05,
            verbose=False)
    two = t.load_params(tmp_path / "two.pt")
    assert all(close(two[k], params[k], 1e-12) for k in params)
    # and the shards matter: the same run without all_reduce would differ
    assert not all(close(two[k], t.init_params(0, torch.float64)[k], 1e-3) for k in params)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: the "
                    "torch backend's GPU path is checked where one is present")
def test_cuda_equals_cpu() -> None:
    b, t = torch_module(("relu", "softmax", "cross_entropy", 0.05))
    params, X, Y = sample(b, n=64)
    cpu, gpu = as_torch(params), {k: v.cuda() for k, v in as_torch(params).items()}
    h_cpu = t.train(cpu, X, Y, epochs=3, batch_size=16, optimizer="adam", verbose=False)
    h_gpu = t.train(gpu, torch.tensor(X).cuda(), torch.tensor(Y).cuda(), epochs=3,
                    batch_size=16, optimizer="adam", verbose=False)
    assert all(v.device.type == "cuda" for v in gpu.values())
    assert close(h_gpu["loss"], h_cpu["loss"], 1e-10)
    assert all(close(gpu[k].cpu(), cpu[k], 1e-9) for k in cpu)


# Every entry of the spelling table, as the lowering writes it (symgrad/ops, codegen's
# StepLowering), run on the same arrays in numpy and, translated, in torch.
_POSITIVE = ("log", "log1p", "sqrt", "reciprocal")
SPELLED = [
    "np.dot(A, B.T, out=O)", "np.dot(v, A, out=w)", "o = np.vdot(A, B)", "o = np.sum(A * B)",
    "np.add.reduce(A, axis=1, keepdims=True, out=c)",
    "np.maximum.reduce(A, axis=1, keepdims=True, out=c)", "np.add(A, 1.5, out=O)",
    "np.add(1.5, A, out=O)", "np.multiply(L2, A, out=O)", "np.multiply(A, M, out=O)",
    "np.subtract(1.0, A, out=O)", "np.subtract(A, B, out=O)", "np.divide(1.0, A, out=O)",
    "np.divide(A, B, out=O)", "np.negative(A, out=O)", "np.power(A, 3.0, out=O)",
    "o = np.maximum(A, 0)", "o = np.minimum(A, 0.0)", "o = np.maximum(A, B)",
    "o = np.minimum(-1, A)", "np.greater(A, 0.0, out=M)", "np.less_equal(A, 1.0, out=M)",
    "np.less(A, B, out=M)", "np.greater_equal(A, B, out=M)", "o = np.logaddexp(0, A)",
    "o = np.logaddexp(A, 0.5)", "np.logaddexp(A, B, out=O)", "np.copyto(O, A, where=M)",
    "np.copyto(O, 2.0, where=M)", "np.copyto(O, A)", "o = np.where(A > 0, 1, 0.01).astype(A.dtype)",
    "o = np.where(A > 0, A, A / 100)", "O.fill(0.25)", "o = A.sum(axis=0)",
    "o = A.max(axis=1, keepdims=True)", "o = A.min(axis=0)", "o = A.copy()",
    "np.dot(A, B.T, out=O)\nO += v[:3]",
    *(f"np.{f}(A, out=O)" for f in ("tanh", "exp", "expm1", "cos", "sin", "cosh", "sinh",
                                    "sign", "abs", "square", "arctan", *_POSITIVE)),
    *(f"o = np.{f}(A) * 2" for f in ("tanh", "exp", "log", "sqrt")),
]


@pytest.mark.parametrize("code", SPELLED, ids=lambda c: c.split("\n")[0][:40])
def test_the_spelling_is_the_numpy_code(code) -> None:
    """Property: for arrays hypothesis draws, numpy's statement and its torch spelling
    compute the same values (float64, to rounding; masks exactly)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    from symgrad.backends import torch_code as spell

    spelled = "\n".join(spell(code.split("\n"), vectors=frozenset({"v"})))
    positive = any(f"np.{f}(" in code for f in _POSITIVE)
    lo = 0.1 if positive else -4.0
    values = arrays(np.float64, (3, 4), elements=st.floats(lo, 4.0, width=64))

    @settings(max_examples=8, deadline=None, database=None)
    @given(values, values, st.lists(st.booleans(), min_size=12, max_size=12),
           arrays(np.float64, (3,), elements=st.floats(-4.0, 4.0)))
    def same(A, B, mask, v) -> None:
        if "out=O)\nO +=" in code or "np.dot(A, B.T" in code:
            B = B[:, :4]
        env = {"A": A, "B": B, "M": np.array(mask).reshape(3, 4), "v": v, "L2": 0.3,
               "O": np.zeros((3, 3) if "B.T" in code else (3, 4)), "c": np.zeros((3, 1)),
               "w": np.zeros(4)}
        t_env = {k: torch.tensor(x) if isinstance(x, np.ndarray) else x for k, x in env.items()}
        t_env["_vdot"] = lambda a, b: torch.vdot(a.reshape(-1), b.reshape(-1))
        with np.errstate(all="ignore"):
            exec(code, {"np": np}, env)  # noqa: S102 - the test's own statements
        exec(spelled, {"torch": torch}, t_env)  # noqa: S102
        for k in ("o", "O", "c", "M", "w"):
            if k in env:
                got, want = np.asarray(t_env[k]), np.asarray(env[k])
                assert got.shape == want.shape, (k, spelled)
                assert np.allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True), (k, spelled)

    same()


def test_the_backend_benchmark_runs(tmp_path: Path, monkeypatch) -> None:
    """benchmarks/backend_bench.py's contenders (generated torch, the Array API step) through
    training_bench's runner on the tiny workload: one timed epoch each, no timing asserted."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import backend_bench as bb
    import training_bench as tb

    tiny = tb.tiny_workload()
    relu = dataclasses.replace(tiny, layers=((tiny.layers[0][0], "relu"), *tiny.layers[1:]))
    res = tb.run_workload(relu, 1, tmp_path, bb.CONTENDERS, pause=0, preparers=bb.PREPARERS)
    timed = [r["contender"] for r in res["rows"] if "median" in r]
    skipped = {r["contender"]: r["status"] for r in res["rows"] if "median" not in r}
    # the Array API step needs array-api-compat (a benchmark's extra, not symgrad's)
    assert timed == [bb.GEN_TORCH, bb.ARRAY_API] or skipped == {
        bb.ARRAY_API: "skipped: array-api-compat not installed"}, res


def test_a_non_finite_epoch_stops_and_restores_its_start(capsys) -> None:
    """A blow-up (learning rate 1e30): the epoch's loss is not finite, so train() stops and
    params are those of the epoch's start (one host read per epoch: no per-batch check);
    distributed=True without a process group is refused."""
    b, t = torch_module(("relu", "identity", "mse", 0.0))
    params, X, Y = sample(b, n=12)
    mine = as_torch(params)
    h = t.train(mine, X, Y, epochs=3, batch_size=4, learning_rate=1e200, verbose=False)
    assert h["loss"] == [] and h["stopped"].startswith("non-finite loss (")
    assert h["stopped"].endswith("in epoch 1: stopped, keeping the parameters from the start "
                                 "of that epoch")
    assert all(torch.equal(mine[k], torch.tensor(params[k])) for k in params)
    assert capsys.readouterr().err == f"train: {h['stopped']}\n"
    with pytest.raises(RuntimeError, match="distributed=True needs a torch.distributed process "
                       "group: run under torchrun"):
        t.train(mine, X, Y, epochs=1, distributed=True)
