"""The CuPy backend (issue 16): ``symgrad generate --backend cupy``.

A CuPy module is the numpy module with every numpy call in CuPy's spelling
(symgrad.backends.CUPY). Without a GPU it runs here on tests/cupy_standin.py, a stand-in
``cupy`` made of numpy that has only the functions CuPy's reference lists, with CuPy's
signatures, and refuses what CuPy refuses (numpy arrays in device ufuncs, take(mode=),
a ufunc's where=, setflags, __array_interface__): that checks the module's *logic* — the
calls exist as written, host and device are kept apart, the numbers are the numpy
module's (dense, layernorm with a residual, batchnorm, dropout, conv/max/avg pooling;
init, loss, gradients, inference, SGD's fused epoch and Adam, check_gradients) — not
CuPy's kernels. test_real_cupy_equals_numpy runs the same comparison on CuPy itself and
skips with a message without cupy or a CUDA device (benchmarks/gpu_check.sh runs it on a
GPU machine).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cupy_standin import standin

from symgrad.backends import CUPY_HOST, _dotted, cupy_module
from symgrad.codegen import derive, generate_source, load_module
from symgrad.errors import SymgradError
from symgrad.spec import spec_from_dict

ROOT = Path(__file__).resolve().parent.parent


def net(name, inputs, layers, loss="cross_entropy", **training):
    return {"network": {"name": name, "inputs": inputs}, "layer": layers,
            "loss": {"kind": loss}, "training": {"optimizer": "adam", **training}}


SPECS = {
    "dense": net("dense", 5, [{"units": 6, "activation": "tanh"},
                              {"units": 3, "activation": "softmax"}]),
    "layernorm": net("residual", 5, [{"units": 6, "activation": "relu"},
                                     {"type": "layernorm"},
                                     {"units": 6, "activation": "tanh"},
                                     {"type": "add", "inputs": ["A2", "A3"]},
                                     {"units": 3, "activation": "softmax"}]),
    "batchnorm_dropout": net("bn", 5, [{"units": 6}, {"type": "batchnorm", "activation": "relu"},
                                       {"type": "dropout", "p": 0.25},
                                       {"units": 2}], loss="mse"),
    "conv_pool": net("cnn", [6, 6, 2], [
        {"type": "conv2d", "filters": 3, "kernel": 3, "padding": 1, "activation": "relu"},
        {"type": "maxpool2d", "kernel": 3, "stride": 2, "padding": 1},
        {"type": "conv2d", "filters": 2, "kernel": 2, "activation": "tanh"},
        {"type": "avgpool2d", "kernel": 2},
        {"type": "flatten"}, {"units": 3, "activation": "softmax"}]),
}

_derived: dict[str, object] = {}


def derivation(name):
    if name not in _derived:
        _derived[name] = derive(spec_from_dict(SPECS[name], f"{name}.toml"))
    return _derived[name]


def modules(name, cupy=None):
    """(numpy module, CuPy module, CuPy source): the CuPy module on the stand-in, or on the
    ``cupy`` given."""
    d = derivation(name)
    source = generate_source(d, "cupy")
    if cupy is not None:
        return load_module(generate_source(d)), load_module(source), source
    with standin():
        return load_module(generate_source(d)), load_module(source), source


def data(module, n=12, seed=0):
    rng = np.random.default_rng(seed)
    shape = getattr(module, "INPUT_SHAPE", None) or (module.INPUTS,)
    X = rng.standard_normal((n, *shape))
    if module.__doc__.rstrip().endswith(" mse") or "; loss mse" in module.__doc__:
        return X, rng.standard_normal((n, module.OUTPUTS))
    return X, np.eye(module.OUTPUTS)[rng.integers(0, module.OUTPUTS, n)]


def host(value, cp):
    return cp.asnumpy(value) if isinstance(value, cp.ndarray) else np.asarray(value)


def compare(numpy_module, module, cp, rtol=1e-12) -> None:
    """module (on the device ``cp``) computes numpy_module's numbers."""

    def same(a, b):
        a, b = host(a, cp).astype(np.float64), np.asarray(b, dtype=np.float64)
        assert a.shape == b.shape
        assert np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(b), 1.0)), (a, b)

    params = numpy_module.init_params(3)
    device = module.init_params(3)
    assert all(isinstance(v, cp.ndarray) for v in device.values())
    for k in params:
        same(device[k], params[k])
    X, Y = data(numpy_module)
    loss, grads = numpy_module.loss_and_grad(params, X, Y)
    dloss, dgrads = module.loss_and_grad(device, X, Y)
    assert isinstance(dloss, float) and set(dgrads) == set(grads)
    assert all(isinstance(g, cp.ndarray) for g in dgrads.values())
    same(dloss, loss)
    for k in grads:
        same(dgrads[k], grads[k])
    same(module.loss(device, X, Y), numpy_module.loss(params, X, Y))
    same(module.forward(device, X), numpy_module.forward(params, X))
    same(module.predict(device, X), numpy_module.predict(params, X))
    for optimizer in ("sgd", "adam"):  # sgd: the fused transposed epoch (dense chains)
        mine = {k: v.copy() for k, v in device.items()}
        theirs = {k: v.copy() for k, v in params.items()}
        options = {"epochs": 2, "batch_size": 5, "optimizer": optimizer, "verbose": False,
                   "learning_rate": 0.05}
        same(module.train(mine, X, Y, X_val=X, Y_val=Y, **options)["loss"],
             numpy_module.train(theirs, X, Y, X_val=X, Y_val=Y, **options)["loss"])
        for k in theirs:  # parameters and batchnorm's running statistics
            same(mine[k], theirs[k])


@pytest.mark.parametrize("name", list(SPECS))
def test_the_cupy_module_computes_the_numpy_modules_numbers(name) -> None:
    numpy_module, module, _ = modules(name)
    with standin() as cp:
        compare(numpy_module, module, cp)
        errors = module.check_gradients()
    assert max(errors.values()) < 1e-6


def test_hvp_gnvp_and_second_order_training() -> None:
    """generate --hvp --backend cupy (a CNN: max pooling's tangent gathers at its arg
    maxima) gives the numpy module's H V and G V; newton_cg trains as the numpy module."""
    d = derivation("conv_pool")
    numpy_module = load_module(generate_source(d, products=True))
    rng = np.random.default_rng(4)
    V = {k: rng.standard_normal(s) for k, s in numpy_module.PARAM_SHAPES.items()}
    params, (X, Y) = numpy_module.init_params(2), data(numpy_module, n=5)
    spec = {**SPECS["dense"], "training": {"optimizer": "newton_cg"}}
    second = derive(spec_from_dict(spec, "newton.toml"))
    with standin() as cp:
        module = load_module(generate_source(d, "cupy", products=True))
        device = module.init_params(2)
        for product in ("hvp", "gnvp"):
            mine, theirs = (getattr(m, product)(p, X, Y, V) for m, p in
                            ((module, device), (numpy_module, params)))
            assert all(np.allclose(cp.asnumpy(mine[k]), theirs[k], rtol=1e-12, atol=1e-14)
                       for k in theirs), product
        numpy_newton = load_module(generate_source(second))
        newton = load_module(generate_source(second, "cupy"))
        X, Y = data(numpy_newton)
        assert newton.train(newton.init_params(1), X, Y, epochs=2, verbose=False)["loss"] == \
            pytest.approx(numpy_newton.train(numpy_newton.init_params(1), X, Y, epochs=2,
                                             verbose=False)["loss"], rel=1e-12)


def test_dropout_masks_are_the_numpy_modules_for_a_seed() -> None:
    """The masks are drawn on the host by numpy's generator (the same draws), so a seed
    gives the numpy module's training-mode loss; another seed another loss."""
    numpy_module, module, _ = modules("batchnorm_dropout")
    params = numpy_module.init_params(1)
    X, Y = data(numpy_module, n=9, seed=1)
    with standin():
        device = module.init_params(1)
        for seed in (0, 5):
            assert module.loss(device, X, Y, seed=seed) == pytest.approx(
                numpy_module.loss(params, X, Y, seed=seed), rel=1e-13)
        assert module.loss(device, X, Y, seed=0) != pytest.approx(
            module.loss(device, X, Y, seed=5), rel=1e-6)


def test_the_module_is_cupy_with_numpy_on_the_host_only(tmp_path: Path) -> None:
    """Imports cupy (and numpy, for files and generators); every numpy name left is a
    host one (CUPY_HOST); ruff-clean; deterministic; the numpy module unchanged."""
    d = derivation("conv_pool")
    source = generate_source(d, "cupy")
    assert source == generate_source(d, "cupy")
    assert generate_source(d, "numpy") == generate_source(d) != source
    tree = ast.parse(source)
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {"cupy", "numpy"} <= imports <= {"cupy", "cupyx", "numpy", "argparse", "os", "sys",
                                            "tempfile"}
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    left = {_dotted(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
            and id(n) not in inner and _dotted(n).startswith("np.")}
    assert left <= CUPY_HOST | {"np.savez", "np.sqrt"}, left - CUPY_HOST  # (sqrt: of numbers)
    assert "a = np.sqrt(6.0 / (fan_in + fan_out))" in source
    assert "a CuPy training module" in source.split("\n", 3)[1]
    assert "cp.lib.stride_tricks.sliding_window_view(X, (kh, kw), axis=(1, 2))" in source
    path = tmp_path / "cnn_cupy.py"
    path.write_text(source)
    ruff = [str(ROOT / ".venv" / "bin" / "ruff")] if (ROOT / ".venv/bin/ruff").exists() \
        else [sys.executable, "-m", "ruff"]
    proc = subprocess.run([*ruff, "check", "--config", str(ROOT / "pyproject.toml"), str(path)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


SPELLED = [
    ("np.add.reduce(Y, axis=1, keepdims=True, out=s)",
     "cp.sum(Y, axis=1, keepdims=True, out=s)"),
    ("np.maximum.reduce(Z, axis=0, out=m)", "cp.amax(Z, axis=0, out=m)"),
    ("np.add(T, D[:, r], out=T, where=B[:, r])",
     "cp.copyto(T, cp.add(T, D[:, r]), where=B[:, r])"),
    ("np.add.at(G, idx, V)", "cupyx.scatter_add(G, idx, V)"),
    ('X.take(idx, axis=0, out=ws["X"], mode="clip")', 'X.take(idx, axis=0, out=ws["X"])'),
    ("W = rng.uniform(-a, a, size=(3, 4))", "W = cp.asarray(rng.uniform(-a, a, size=(3, 4)))"),
    ('noise.random(out=ws["U3"])', 'ws["U3"].set(noise.random(ws["U3"].shape))'),
    ("np.savez(file, **params)", "np.savez(file, **{k: cp.asnumpy(v) for k, v in params.items()})"),
    ("a = np.sqrt(6.0 / (fan_in + fan_out))", "a = np.sqrt(6.0 / (fan_in + fan_out))"),
    ("if not isinstance(v, np.ndarray) or not v.flags.writeable:",
     "if not isinstance(v, cp.ndarray) or not True:"),
    ('start = v.__array_interface__["data"][0]', 'start = v.__cuda_array_interface__["data"][0]'),
    ('x = {"a": np.exp(Z), "b": f"{np.dtype(t).name} {np.tanh(Z).sum()}"}',
     'x = {"a": cp.exp(Z), "b": f"{np.dtype(t).name} {cp.tanh(Z).sum()}"}'),
]


@pytest.mark.parametrize("numpy_code,cupy_code", SPELLED)
def test_the_spelling_table(numpy_code, cupy_code) -> None:
    head = "import numpy as np\n"
    block = "\n    pass" if numpy_code.endswith(":") else ""
    spelled = cupy_module(f"{head}{numpy_code}{block}\n")
    body = spelled.split("import numpy as np\n", 1)[1].split("\n")[0]
    assert body == cupy_code
    assert spelled.startswith("import cupy as cp\n" + ("import cupyx\n" if "cupyx" in cupy_code
                                                        else ""))


def test_a_read_only_flag_is_left_out_and_an_unknown_call_refused() -> None:
    assert cupy_module("import numpy as np\n\n\ndef f(x):\n    x.setflags(write=False)\n"
                       "    return x\n") == ("import cupy as cp\nimport numpy as np\n\n\n"
                                            "def f(x):\n    return x\n")
    with pytest.raises(SymgradError) as e:
        cupy_module("import numpy as np\nF = np.fft.rfft(x)\n")
    assert str(e.value) == ("cupy backend: no CuPy spelling for np.fft.rfft yet "
                            "(symgrad.backends.CUPY, the CuPy backend's spelling table)")


def test_the_standin_refuses_what_cupy_refuses() -> None:
    """The stand-in is worth its name: host arrays in device ufuncs, take(mode=), where=,
    setflags and __array_interface__ fail as they do on CuPy."""
    with standin() as cp:
        a = cp.zeros((2, 3))
        with pytest.raises(TypeError):
            cp.add(a, np.ones((2, 3)))
        with pytest.raises(TypeError):
            a + np.ones((2, 3))
        with pytest.raises(TypeError):
            cp.add(a, a, out=a, where=a > 0)
        with pytest.raises(TypeError):
            a.take(cp.arange(2), axis=0, mode="clip")
        with pytest.raises(AttributeError):
            a.setflags(write=False)
        with pytest.raises(AttributeError):
            a.__array_interface__  # noqa: B018
        assert not hasattr(cp, "errstate") and not hasattr(cp, "add_at")
        assert type(cp.sum(a)) is cp.ndarray and float(cp.sum(a)) == 0.0  # 0-d, as CuPy's


def test_generate_and_check_on_the_command_line(tmp_path: Path, capsys) -> None:
    """generate --backend cupy and [training] backend = "cupy" write the CuPy module;
    symgrad check MODULE.py checks it (the sandbox copies its arrays to the host), here on
    the stand-in, installed as cupy for the checking process."""
    from symgrad.cli import main

    spec = tmp_path / "small.toml"
    text = ('[network]\nname = "small"\ninputs = 3\n[[layer]]\nunits = 4\nactivation = "tanh"\n'
            '[[layer]]\nunits = 2\nactivation = "softmax"\n[loss]\nkind = "cross_entropy"\n')
    spec.write_text(text)
    out = tmp_path / "small_cupy.py"
    assert main(["generate", str(spec), "--backend", "cupy", "-o", str(out)]) == 0
    assert "import cupy as cp\n" in out.read_text()
    (tmp_path / "in_training.toml").write_text(text + '[training]\nbackend = "cupy"\n')
    assert main(["generate", str(tmp_path / "in_training.toml"), "-o", "-"]) == 0
    assert capsys.readouterr().out.split("\n", 1)[1] == out.read_text().split("\n", 1)[1]
    site = tmp_path / "site"
    for name in ("cupy", "cupyx"):
        (site / name).mkdir(parents=True)
        (site / name / "__init__.py").write_text(
            f"import sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\nimport cupy_standin\n"
            "sys.modules.update(cupy_standin.modules())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    proc = subprocess.run([sys.executable, "-m", "symgrad", "check", str(out)], env=env,
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "W1" in proc.stdout and "b2" in proc.stdout and "FAIL" not in proc.stdout


def _real_cupy():
    try:
        import cupy
    except ImportError:
        pytest.skip("cupy is not installed: the CuPy backend runs on the stand-in here "
                    "(benchmarks/gpu_check.sh installs cupy-cuda12x on a GPU machine)")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no device")
    except Exception as e:  # noqa: BLE001 - CUDA's errors are its own classes
        pytest.skip(f"no CUDA device for cupy ({type(e).__name__}): the CuPy backend is "
                    "checked on a GPU where one is present")
    return cupy


@pytest.mark.parametrize("name", list(SPECS))
def test_real_cupy_equals_numpy(name) -> None:
    """On CuPy itself (a CUDA device): the numpy module's numbers to rounding (CuPy's
    kernels sum in other orders than numpy's)."""
    cp = _real_cupy()
    numpy_module, module, _ = modules(name, cupy=cp)
    compare(numpy_module, module, cp, rtol=1e-9)
    assert max(module.check_gradients().values()) < 1e-6
