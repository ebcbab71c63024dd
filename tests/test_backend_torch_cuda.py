"""The torch backend on a CUDA device (issue 16): the paths a GPU takes, against the same
module on the CPU — convolution and pooling, batchnorm's running statistics, dropout's
masks from a CUDA generator, H V and G V, float32, and data-parallel training over NCCL
(two GPUs). Every test here skips with a message without CUDA (the project passes its
tests without a GPU); tests/test_backend_torch.py::test_cuda_equals_cpu is the dense
case, and benchmarks/gpu_check.sh runs this file on a GPU machine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from symgrad.codegen import generate_source, load_module
from symgrad.spec import spec_from_dict

torch = pytest.importorskip("torch")

from test_backend_torch import torchrun_train  # noqa: E402  (torch first: skip without it)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this "
                          "machine: the torch backend's GPU paths are checked where one is "
                          "present (benchmarks/gpu_check.sh)")
two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                              reason="data-parallel training over NCCL needs two CUDA devices")


def net(inputs, layers, loss="cross_entropy", optimizer="adam"):
    return {"network": {"name": "cuda_net", "inputs": inputs}, "layer": layers,
            "loss": {"kind": loss}, "training": {"optimizer": optimizer}}


CNN = net([7, 7, 2], [
    {"type": "conv2d", "filters": 3, "kernel": 3, "padding": 1, "activation": "identity"},
    {"type": "batchnorm", "activation": "relu"},
    {"type": "maxpool2d", "kernel": 3, "stride": 2, "padding": 1},
    {"type": "conv2d", "filters": 2, "kernel": 2, "stride": 2, "activation": "tanh"},
    {"type": "avgpool2d", "kernel": 2}, {"type": "flatten"},
    {"units": 3, "activation": "softmax"}])
BN_DROPOUT = net(5, [{"units": 6}, {"type": "batchnorm", "activation": "relu"},
                     {"type": "dropout", "p": 0.25}, {"units": 3, "activation": "softmax"}])


def module(spec, products=False):
    return load_module(generate_source(spec_from_dict(spec, "cuda_net.toml"), "torch",
                                       products=products))


def close(a, b, rtol) -> bool:
    a, b = (torch.as_tensor(x).detach().cpu().double().numpy() for x in (a, b))
    return bool(np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(b), 1.0)))


def on(params, device):
    return {k: v.to(device) for k, v in params.items()}


def images(n=6, seed=2):
    rng = np.random.default_rng(seed)
    return (torch.tensor(rng.standard_normal((n, 7, 7, 2))),
            torch.tensor(np.eye(3)[rng.integers(0, 3, n)]))


@cuda
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-4)])
def test_a_cnn_with_batchnorm_on_cuda_equals_cpu(dtype, rtol) -> None:
    """conv2d, batchnorm on a map, max and average pooling, flatten: loss_and_grad and
    training (parameters and running statistics) on CUDA equal the CPU's."""
    t = module(CNN)
    params = t.init_params(1, dtype)
    X, Y = (a.to(dtype) for a in images())
    loss, grads = t.loss_and_grad(params, X, Y)
    gloss, ggrads = t.loss_and_grad(on(params, "cuda"), X.cuda(), Y.cuda())
    assert all(g.device.type == "cuda" and g.dtype == dtype for g in ggrads.values())
    assert close(gloss, loss, rtol) and all(close(ggrads[k], grads[k], rtol) for k in grads)
    cpu, gpu = {k: v.clone() for k, v in params.items()}, on(params, "cuda")
    options = {"epochs": 2, "batch_size": 3, "optimizer": "sgd", "verbose": False,
               "learning_rate": 0.01}
    assert close(t.train(gpu, X.cuda(), Y.cuda(), **options)["loss"],
                 t.train(cpu, X, Y, **options)["loss"], rtol)
    assert all(gpu[k].device.type == "cuda" for k in gpu)
    assert all(close(gpu[k], cpu[k], rtol) for k in cpu)  # buffers (mean, var) too


@cuda
def test_dropout_on_cuda_keeps_its_contract() -> None:
    """The masks come from a torch.Generator on the CUDA device: the same seed, the same
    loss and gradient; another seed, another loss; the gradient is the central difference
    of the loss at that seed (float64)."""
    t = module(BN_DROPOUT)
    params = on(t.init_params(0, torch.float64), "cuda")
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.standard_normal((16, 5)), device="cuda")
    Y = torch.tensor(np.eye(3)[rng.integers(0, 3, 16)], device="cuda")
    loss, grads = t.loss_and_grad(params, X, Y, seed=3)
    again, grads_again = t.loss_and_grad(params, X, Y, seed=3)
    assert loss == again and all(torch.equal(grads[k], grads_again[k]) for k in grads)
    assert t.loss(params, X, Y, seed=3) == pytest.approx(loss, rel=1e-13)
    assert t.loss(params, X, Y, seed=4) != pytest.approx(loss, rel=1e-6)
    W, h = params["W4"], 1e-6
    for i in range(3):
        up, down = ({**params, "W4": W + sign * h * torch.eye(1, W.numel(), i, device="cuda",
                                                              dtype=W.dtype).reshape(W.shape)}
                    for sign in (1, -1))
        numeric = (t.loss(up, X, Y, seed=3) - t.loss(down, X, Y, seed=3)) / (2 * h)
        assert float(grads["W4"].reshape(-1)[i]) == pytest.approx(numeric, rel=1e-6, abs=1e-9)


@cuda
def test_hvp_and_gnvp_on_cuda_equal_cpu() -> None:
    """generate --hvp --backend torch: H V and G V on CUDA equal the CPU's (a CNN: max
    pooling's tangent gathers at the arg maxima on the device)."""
    spec = {**CNN, "layer": [layer for layer in CNN["layer"] if layer.get("type") != "batchnorm"]}
    t = module(spec, products=True)
    params = t.init_params(2, torch.float64)
    X, Y = images(n=4, seed=5)
    rng = np.random.default_rng(5)
    V = {k: rng.standard_normal(s) for k, s in t.PARAM_SHAPES.items()}
    for product in ("hvp", "gnvp"):
        cpu = getattr(t, product)(params, X, Y, V)
        gpu = getattr(t, product)(on(params, "cuda"), X.cuda(), Y.cuda(), V)
        assert all(gpu[k].device.type == "cuda" for k in gpu)
        assert all(close(gpu[k], cpu[k], 1e-9) for k in cpu), product


@two_gpus
def test_torchrun_over_nccl_equals_one_process(tmp_path: Path) -> None:
    """torchrun --nproc_per_node=2 module.py train DATA.npz --device cuda: NCCL, one GPU a
    process, each a shard of every batch; the saved parameters are one process's on the
    whole batches (float64, to rounding: NCCL sums in its own order)."""
    path = tmp_path / "net_torch.py"
    spec = net(3, [{"units": 5, "activation": "tanh"}, {"units": 3, "activation": "softmax"}])
    path.write_text(generate_source(spec_from_dict(spec, "net.toml"), "torch"))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((11, 3)), rng.integers(0, 3, 11)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    torchrun_train(path, tmp_path, "cuda", timeout=180)
    t = load_module(path)
    params = t.init_params(0, torch.float64)
    t.train(params, X, y, epochs=3, batch_size=4, optimizer="adam", learning_rate=0.05,
            verbose=False)
    two = t.load_params(tmp_path / "two.pt")
    assert all(close(two[k], params[k], 1e-10) for k in params)
