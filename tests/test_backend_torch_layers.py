"""The torch backend beyond dense layers (issue 16, part 2): batchnorm, dropout, conv2d,
max/average pooling and flatten.

Batchnorm: loss_and_grad, the inference forward/loss and full-batch training (parameters
and running statistics) equal to the numpy module's to rounding in float64, close in
float32; the running statistics as torch's own batch_norm updates them. Dropout: the masks
cannot be the numpy module's draws (another generator), so the contract is tested: the
same seed gives the same loss and gradient, the masks are Bernoulli(1 − p) scaled by
1/(1 − p) (the loss equals PyTorch eager on the masks redrawn from the seed), and the
gradient agrees with central differences of loss at the same seed. Convolutional networks
equal the numpy module's; the torch kernels equal torch's conv2d, max_pool2d (ties routed
to the first maximum, as its autograd does) and avg_pool2d. The generated modules
are ruff-clean and regenerate byte-identically; what the backend still refuses, exactly.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from symgrad.codegen import generate_source, load_module
from symgrad.errors import SymgradError
from symgrad.spec import spec_from_dict

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent


def net(layers, loss="cross_entropy", **training):
    return {"network": {"name": "layers_net", "inputs": 5}, "layer": layers,
            "loss": {"kind": loss}, "training": {"optimizer": "sgd", **training}}


BN = net([{"units": 6}, {"type": "batchnorm", "activation": "tanh"},
          {"units": 3, "activation": "softmax"}])
DROPOUT = net([{"units": 6, "activation": "relu"}, {"type": "dropout", "p": 0.3},
               {"units": 3, "activation": "softmax"}])
BOTH = spec_from_dict(net([{"units": 6}, {"type": "batchnorm", "activation": "relu"},
                           {"type": "dropout", "p": 0.25}, {"units": 2}], loss="mse"),
                      "both.toml")

_modules: dict[str, tuple] = {}


def modules(spec: dict, name: str):
    """(numpy module, torch module, torch source) of the spec, generated once."""
    if name not in _modules:
        s = spec_from_dict(spec, f"{name}.toml")
        source = generate_source(s, "torch")
        _modules[name] = (load_module(generate_source(s)), load_module(source), source)
    return _modules[name]


def as_torch(params, dtype=torch.float64):
    return {k: torch.tensor(v, dtype=dtype) for k, v in params.items()}


def close(a, b, rtol) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(b), 1.0)))


def data(n=10, inputs=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, inputs)), np.eye(classes)[rng.integers(0, classes, n)]


def perturbed(module, seed=1):
    rng = np.random.default_rng(seed)
    params = module.init_params(seed)
    return {k: v + 0.1 * rng.standard_normal(v.shape) if k in module.PARAM_SHAPES
            else (np.abs(v + 0.3 * rng.standard_normal(v.shape)) if k.startswith("var")
                  else v + 0.3 * rng.standard_normal(v.shape))
            for k, v in params.items()}


def test_batchnorm_equals_the_numpy_module() -> None:
    """Training mode (batch statistics) and inference mode (the running statistics in
    params) to rounding; full-batch training, parameters and running statistics, too."""
    numpy_module, t, _ = modules(BN, "bn")
    assert t.BUFFER_SHAPES == numpy_module.BUFFER_SHAPES == {"mean2": (6,), "var2": (6,)}
    params = perturbed(numpy_module)
    X, Y = data()
    loss, grads = numpy_module.loss_and_grad(params, X, Y)
    tloss, tgrads = t.loss_and_grad(as_torch(params), X, Y)
    assert set(tgrads) == set(t.PARAM_SHAPES)
    assert close(tloss, loss, 1e-12) and all(close(tgrads[k], g, 1e-10) for k, g in grads.items())
    assert close(t.loss(as_torch(params), X, Y), loss, 1e-12)
    assert close(t.forward(as_torch(params), X), numpy_module.forward(params, X), 1e-12)
    assert close(t.loss(as_torch(params), X, Y, training=False),
                 numpy_module.loss(params, X, Y, training=False), 1e-12)
    # (float32 with sgd only: b1, before the batchnorm, has a gradient of rounding noise,
    # which adam's normalized step amplifies to ±lr in either module)
    for dtype, rtol, optimizers in ((torch.float64, 1e-10, ("sgd", "adam")),
                                    (torch.float32, 2e-4, ("sgd",))):
        for optimizer in optimizers:
            mine = as_torch(params, dtype)
            theirs = {k: v.astype(np.float32 if dtype == torch.float32 else np.float64)
                      for k, v in params.items()}
            options = {"epochs": 3, "batch_size": 10, "optimizer": optimizer, "verbose": False}
            assert close(t.train(mine, X, Y, **options)["loss"],
                         numpy_module.train(theirs, X, Y, **options)["loss"], rtol)
            assert all(mine[k].dtype == dtype for k in mine)
            assert all(close(mine[k], theirs[k], rtol) for k in params)  # buffers too
    assert max(t.check_gradients().values()) < 1e-6


def test_running_statistics_are_torchs() -> None:
    """One training step's update of mean2, var2 equals torch.nn.functional.batch_norm's
    (momentum 0.1, the unbiased batch variance) on the batchnorm's input X W₁ + b₁."""
    _, t, _ = modules(BN, "bn")
    params = as_torch(perturbed(modules(BN, "bn")[0], seed=4))
    X, Y = (torch.tensor(a) for a in data(n=7, seed=4))
    mean, var = params["mean2"].clone(), params["var2"].clone()
    torch.nn.functional.batch_norm(X @ params["W1"] + params["b1"], mean, var, training=True,
                                   momentum=0.1, eps=1e-5)
    t.train(params, X, Y, epochs=1, batch_size=7, verbose=False, learning_rate=0.0)
    assert torch.allclose(params["mean2"], mean, rtol=1e-12, atol=1e-14)
    assert torch.allclose(params["var2"], var, rtol=1e-12, atol=1e-14)


def test_dropout_contract() -> None:
    """The same seed, the same loss and gradient (loss and loss_and_grad alike); another
    seed, others; the masks Bernoulli(1 − p), kept entries scaled by 1/(1 − p): the loss is
    PyTorch eager's on the masks redrawn from the seed; inference has no dropout."""
    numpy_module, t, _ = modules(DROPOUT, "dropout")
    params = as_torch(perturbed(numpy_module))
    X, Y = (torch.tensor(a) for a in data(n=40))
    l3, g3 = t.loss_and_grad(params, X, Y, seed=3)
    again, g_again = t.loss_and_grad(params, X, Y, seed=3)
    assert l3 == again and all(torch.equal(g3[k], g_again[k]) for k in g3)
    assert t.loss(params, X, Y, seed=3) == pytest.approx(l3, rel=1e-14)
    assert t.loss(params, X, Y, seed=4) != pytest.approx(l3, rel=1e-6)
    M = t._keep(torch.Generator().manual_seed(3), (40, 6), 0.3)
    A1 = torch.relu(X @ params["W1"] + params["b1"])
    Z = (A1 * M / 0.7) @ params["W3"] + params["b3"]
    eager = -(Y * torch.log_softmax(Z, dim=1)).sum() / 40
    assert float(eager) == pytest.approx(l3, rel=1e-12)
    no_dropout = (A1 @ params["W3"] + params["b3"]).softmax(dim=1)
    assert torch.allclose(t.forward(params, X), no_dropout, rtol=1e-12)
    many = t._keep(torch.Generator().manual_seed(0), (400, 500), 0.3).double()
    assert abs(float(many.mean()) - 0.7) < 4 * (0.21 / 200_000) ** 0.5  # Bernoulli(0.7)
    assert max(t.check_gradients().values()) < 1e-6


def test_dropout_gradient_with_the_masks_fixed() -> None:
    """Central differences of loss(seed=s) (the masks of loss_and_grad(seed=s)) against
    the gradient, every entry of every parameter, for a net with batchnorm and dropout."""
    t = load_module(generate_source(BOTH, "torch"))
    params = {k: v.double() for k, v in t.init_params(2).items()}
    gen = torch.Generator().manual_seed(5)
    for k in t.PARAM_SHAPES:
        params[k] += 0.1 * torch.randn(params[k].shape, generator=gen, dtype=torch.float64)
    X = torch.randn((9, 5), generator=gen, dtype=torch.float64)
    Y = torch.randn((9, 2), generator=gen, dtype=torch.float64)
    _, grads = t.loss_and_grad(params, X, Y, seed=7)
    h = 1e-6
    for name in t.PARAM_SHAPES:
        flat = params[name].view(-1)
        for i in range(flat.numel()):
            v = float(flat[i])
            flat[i] = v + h
            up = t.loss(params, X, Y, seed=7)
            flat[i] = v - h
            down = t.loss(params, X, Y, seed=7)
            flat[i] = v
            assert (up - down) / (2 * h) == pytest.approx(float(grads[name].view(-1)[i]),
                                                          rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_training_with_batchnorm_and_dropout(dtype) -> None:
    """A few epochs in minibatches: the loss falls, stays finite, in dtype; the running
    statistics move; the same seed trains to the same parameters; batches of 1 refused."""
    t = load_module(generate_source(BOTH, "torch"))
    gen = torch.Generator().manual_seed(0)
    X = torch.randn((64, 5), generator=gen, dtype=torch.float64)
    Y = X[:, :2] * 0.5 - X[:, 2:4]
    runs = []
    for _ in range(2):
        params = t.init_params(1, dtype)
        history = t.train(params, X, Y, epochs=8, batch_size=16, learning_rate=0.05,
                          verbose=False, seed=2)
        runs.append(params)
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert all(p.dtype == dtype for p in params.values())
    assert not torch.equal(params["mean2"], torch.zeros(6, dtype=dtype))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in params)
    with pytest.raises(ValueError, match="^batchnorm trains on batches of at least 2 samples, "
                                         "not 1: raise batch_size$"):
        t.train(params, X, Y, epochs=1, batch_size=1, verbose=False)
    del params["var2"]
    with pytest.raises(ValueError, match=r"^params lacks var2: inference mode needs batchnorm"):
        t.forward(params, X)


def test_generated_modules_are_ruff_clean_and_deterministic(tmp_path: Path) -> None:
    from test_generated import ruff

    for name, spec in (("bn", BN), ("dropout", DROPOUT), ("cnn_maxpool2d_True", cnn("maxpool2d", True))):
        source = modules(spec, name)[2]
        assert generate_source(spec_from_dict(spec, f"{name}.toml"), "torch") == source
        (tmp_path / f"{name}.py").write_text(source)
        assert "import numpy" not in source.split("def _main")[0]
    products = generate_source(spec_from_dict(BN, "bn.toml"), "torch", products=True)
    assert "def hvp(params, X, Y, V, *, seed=0):" in products and "def gnvp(" in products
    (tmp_path / "bn_products.py").write_text(products)
    config = ["--config", str(ROOT / "pyproject.toml")]
    for args in (["check", *config, str(tmp_path)], ["format", "--check", *config, str(tmp_path)]):
        proc = subprocess.run(ruff() + args, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def cnn(pool, batchnorm=False):
    return {"network": {"name": "cnn", "inputs": [7, 7, 2]},
            "layer": [{"type": "conv2d", "filters": 3, "kernel": 3, "padding": 1,
                       "activation": "identity" if batchnorm else "relu"},
                      *([{"type": "batchnorm", "activation": "relu"}] if batchnorm else []),
                      {"type": pool, "kernel": 3, "stride": 2, "padding": 1},
                      {"type": "conv2d", "filters": 2, "kernel": 2, "stride": 2,
                       "activation": "tanh"},
                      {"type": "flatten"}, {"units": 3, "activation": "softmax"}],
            "loss": {"kind": "cross_entropy"}, "training": {"optimizer": "adam"}}


@pytest.mark.parametrize("pool,batchnorm", [("maxpool2d", False), ("avgpool2d", False),
                                            ("maxpool2d", True)])
def test_convolutional_networks_equal_the_numpy_module(pool, batchnorm) -> None:
    """conv2d (padding; stride), max/average pooling with overlapping padded windows,
    batchnorm on a map, flatten: loss_and_grad, forward on images and on their rows, and
    full-batch training (float64 to rounding, float32 close) equal to the numpy module's."""
    numpy_module, t, _ = modules(cnn(pool, batchnorm), f"cnn_{pool}_{batchnorm}")
    assert t.INPUT_SHAPE == (7, 7, 2)
    params = perturbed(numpy_module)
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((6, 7, 7, 2)), np.eye(3)[rng.integers(0, 3, 6)]
    loss, grads = numpy_module.loss_and_grad(params, X, Y)
    tloss, tgrads = t.loss_and_grad(as_torch(params), X, Y)
    assert close(tloss, loss, 1e-12) and all(close(tgrads[k], g, 1e-10) for k, g in grads.items())
    assert close(t.forward(as_torch(params), X.reshape(6, -1)), numpy_module.forward(params, X),
                 1e-12)
    # (adam with batchnorm: b1's gradient is rounding noise, see the dense case)
    for dtype, rtol, optimizer in ((torch.float64, 1e-10, "sgd" if batchnorm else "adam"),
                                   (torch.float32, 1e-4, "sgd")):
        mine = as_torch(params, dtype)
        theirs = {k: v.astype(np.float32 if dtype == torch.float32 else np.float64)
                  for k, v in params.items()}
        options = {"epochs": 2, "batch_size": 6, "optimizer": optimizer, "verbose": False,
                   "learning_rate": 0.01}
        assert close(t.train(mine, X, Y, **options)["loss"],
                     numpy_module.train(theirs, X, Y, **options)["loss"], rtol)
        assert all(close(mine[k], theirs[k], rtol) for k in params)
    if not batchnorm:
        assert max(t.check_gradients().values()) < 1e-6


def test_the_torch_kernels() -> None:
    """im2col times the HWIO weights is torch's conv2d and col2im its adjoint; max pooling
    is torch's max_pool2d and routes the gradient to the first maximum on ties, as its
    autograd does; average pooling is avg_pool2d (count_include_pad) with its gradient."""
    _, t, _ = modules(cnn("maxpool2d"), "cnn_maxpool2d_False")
    _, ta, _ = modules(cnn("avgpool2d"), "cnn_avgpool2d_False")
    gen = torch.Generator().manual_seed(0)
    F = torch.nn.functional
    for hw, kernel, stride, padding in (((7, 7), (3, 3), (2, 2), (1, 1)),
                                        ((6, 5), (2, 3), (1, 2), (0, 1)),
                                        ((4, 4), (2, 2), (2, 2), (0, 0))):
        N, C = 3, 2
        A = torch.randn((N * hw[0] * hw[1], C), generator=gen, dtype=torch.float64)
        nchw = A.view(N, *hw, C).permute(0, 3, 1, 2)
        W = torch.randn((*kernel, C, 4), generator=gen, dtype=torch.float64)
        Z = t.im2col(A, hw, kernel, stride, padding) @ W.reshape(-1, 4)
        ref = F.conv2d(nchw, W.permute(3, 2, 0, 1), stride=stride, padding=padding)
        assert torch.allclose(Z, ref.permute(0, 2, 3, 1).reshape(-1, 4), rtol=1e-12)
        P = torch.randn(Z.shape[0], kernel[0] * kernel[1] * C, generator=gen,
                        dtype=torch.float64)
        assert torch.vdot(t.im2col(A, hw, kernel, stride, padding).view(-1), P.view(-1)) \
            == pytest.approx(float(torch.vdot(A.view(-1),
                                              t.col2im(P, hw, kernel, stride, padding).view(-1))),
                             rel=1e-12)
        ties = torch.randint(0, 3, A.shape, generator=gen).double()  # many equal maxima
        leaf = ties.view(N, *hw, C).permute(0, 3, 1, 2).clone().requires_grad_()
        pooled_ref = F.max_pool2d(leaf, kernel, stride, padding)
        G = torch.randn(pooled_ref.shape, generator=gen, dtype=torch.float64)
        pooled_ref.backward(G)
        pooled, arg = t.maxpool(ties, hw, kernel, stride, padding)
        assert torch.equal(pooled, pooled_ref.detach().permute(0, 2, 3, 1).reshape(-1, C))
        back = t.maxpool_back(G.permute(0, 2, 3, 1).reshape(-1, C), arg, hw, kernel, stride,
                              padding)
        assert torch.allclose(back, leaf.grad.permute(0, 2, 3, 1).reshape(-1, C), rtol=1e-12)
        leaf.grad = None
        avg_ref = F.avg_pool2d(leaf, kernel, stride, padding)
        avg_ref.backward(G)
        assert torch.allclose(ta.avgpool(ties, hw, kernel, stride, padding),
                              avg_ref.detach().permute(0, 2, 3, 1).reshape(-1, C), rtol=1e-12)
        assert torch.allclose(ta.avgpool_back(G.permute(0, 2, 3, 1).reshape(-1, C), hw, kernel,
                                              stride, padding),
                              leaf.grad.permute(0, 2, 3, 1).reshape(-1, C), rtol=1e-12)


def test_what_the_torch_backend_still_refuses() -> None:
    lbfgs = spec_from_dict(net([{"units": 3}, {"type": "layernorm"}, {"units": 2}], "mse",
                               optimizer="lbfgs"), "l.toml")
    # lbfgs on a DAG is no longer refused (tests/test_backend_torch_second.py); batch
    # statistics are, by the spec, for the numpy backend alike
    assert "lbfgs" in load_module(generate_source(lbfgs, "torch")).OPTIMIZERS
    with pytest.raises(SymgradError) as e:
        spec_from_dict(net([{"units": 3}, {"type": "batchnorm"}, {"units": 2}], "mse",
                           optimizer="lbfgs", backend="torch"), "l.toml")
    assert str(e.value) == (
        "l.toml: layer[2].type: lbfgs needs a loss that stays the same from one evaluation to "
        "the next, and batchnorm's is not (batch statistics, random masks); use a first-order "
        "optimizer such as adam")


def test_the_w5_row_runs(tmp_path: Path, monkeypatch) -> None:
    """backend_bench's conv row (the generated torch module beside PyTorch eager and the
    numpy module) on conv_bench's tiny T5: one timed epoch each, no timing asserted."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import backend_bench as bb
    import conv_bench as cb
    import training_bench as tb

    names = ("generated f32", "PyTorch eager", bb.GEN_TORCH)
    res = tb.run_workload(cb.tiny_workloads()["T5"], 1, tmp_path, names, pause=0,
                          preparers={**cb.PREPARERS, bb.GEN_TORCH: bb.prep_generated_torch})
    assert [r["contender"] for r in res["rows"] if "median" in r] == list(names), res


@pytest.mark.parametrize("name,spec", [("bn", BN), ("dag", net(
    [{"units": 4, "activation": "tanh"}, {"type": "layernorm"},
     {"units": 3, "activation": "softmax"}]))])
def test_hvp_and_gnvp_equal_the_numpy_module(name, spec) -> None:
    """generate --hvp --backend torch: hvp (H V) and gnvp (G V) equal the numpy module's
    (batchnorm: in training mode, batch statistics), and H V equals the central difference
    of loss_and_grad's gradient along V."""
    s = spec_from_dict(spec, f"{name}.toml")
    numpy_module = load_module(generate_source(s, products=True))
    t = load_module(generate_source(s, "torch", products=True))
    params = perturbed(numpy_module)
    rng = np.random.default_rng(3)
    X, Y = data(n=8)
    V = {k: rng.standard_normal(v) for k, v in numpy_module.PARAM_SHAPES.items()}
    tp = as_torch(params)
    for product in ("hvp", "gnvp"):
        mine = getattr(t, product)(tp, X, Y, V)
        theirs = getattr(numpy_module, product)(params, X, Y, V)
        assert set(mine) == set(t.PARAM_SHAPES)
        assert all(close(mine[k], theirs[k], 1e-10) for k in theirs), product
    h = 1e-5
    up, down = ({k: p + sign * h * torch.tensor(V[k]) if k in V else p for k, p in tp.items()}
                for sign in (1, -1))
    up, down = t.loss_and_grad(up, X, Y)[1], t.loss_and_grad(down, X, Y)[1]
    HV = t.hvp(tp, X, Y, V)
    assert all(close(HV[k], (up[k] - down[k]) / (2 * h), 1e-6) for k in V)
    with pytest.raises(ValueError, match="^V must be a dict with the keys of PARAM_SHAPES: "):
        t.hvp(tp, X, Y, {})


def test_hvp_and_gnvp_of_a_convolutional_network() -> None:
    """generate --hvp --backend torch on a CNN (max pooling's tangent gathers at the arg
    maxima: torch.take_along_dim): H V and G V equal the numpy module's; ruff check clean."""
    s = spec_from_dict(cnn("maxpool2d"), "cnn.toml")
    numpy_module = load_module(generate_source(s, products=True))
    source = generate_source(s, "torch", products=True)
    t = load_module(source)
    params = perturbed(numpy_module)
    rng = np.random.default_rng(5)
    X, Y = rng.standard_normal((4, 7, 7, 2)), np.eye(3)[rng.integers(0, 3, 4)]
    V = {k: rng.standard_normal(v) for k, v in numpy_module.PARAM_SHAPES.items()}
    for product in ("hvp", "gnvp"):
        mine = getattr(t, product)(as_torch(params), X, Y, V)
        theirs = getattr(numpy_module, product)(params, X, Y, V)
        assert all(close(mine[k], theirs[k], 1e-10) for k in theirs), product
    from test_generated import ruff

    proc = subprocess.run([*ruff(), "check", "--config",
                           str(ROOT / "pyproject.toml"), "--stdin-filename", "cnn.py", "-"],
                          input=source, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
