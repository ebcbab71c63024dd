"""Smoke test of the benchmark harness (benchmarks/): the code paths of ``make bench``
on tiny sizes, one repetition, no installs. No timing assertions."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCH))
    try:
        yield {
            name: importlib.import_module(name)
            for name in ("bench_common", "derive_bench", "training_bench", "profile_generated",
                         "conv_bench", "run")
        }
    finally:
        sys.path[:] = [p for p in sys.path if p != str(BENCH)]


def _table_rows(table: str) -> list[str]:
    """The data rows of a text table (the lines after the dashed rule)."""
    lines = table.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.replace(" ", "")) == {"-"})
    return [line for line in lines[rule + 1:] if line.strip()]


def test_run_tiny_workload_writes_table_and_json(bench, tmp_path, capsys, monkeypatch):
    tb = bench["training_bench"]
    real = tb.has_module
    # torch reported as missing: exercises the "skipped" path without importing it
    monkeypatch.setattr(tb, "has_module", lambda m: m != "torch" and real(m))
    out_json = tmp_path / "latest.json"
    rc = bench["run"].main([
        "--tiny", "--no-install", "--reps", "1", "--pause", "0", "--no-derive",
        "--contenders", "numpy,generated,torch", "--json", str(out_json),
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert str(out_json) in printed

    data = json.loads(out_json.read_text(encoding="utf-8"))
    (workload,) = data["workloads"]
    rows = {r["contender"]: r for r in workload["rows"]}
    assert set(rows) == {"GEMM floor", "hand-written numpy", "generated f32", "generated f64",
                         "PyTorch eager"}
    for name in ("GEMM floor", "hand-written numpy"):
        assert rows[name]["n"] == 1 and rows[name]["median"] > 0
    assert rows["GEMM floor"]["ratio_floor"] == pytest.approx(1.0)
    assert rows["PyTorch eager"]["status"].startswith("skipped")

    table_rows = _table_rows(workload["table"])
    assert len(table_rows) == 5
    assert any(r.startswith("hand-written numpy") for r in table_rows)
    assert workload["table"] in printed


def test_hand_written_reference_learns(bench):
    """The numpy reference is a correct SGD step: the loss goes down on a tiny problem."""
    tb = bench["training_bench"]
    w = tb.tiny_workload()
    data = tb.make_data(w)
    net = tb.NumpyMLP(w, data)

    def loss() -> float:
        a = data.X
        for i, (W, b) in enumerate(zip(net.W, net.b, strict=True)):
            z = a @ W + b
            a = np.tanh(z) if i < len(net.W) - 1 else z
        a = a - a.max(axis=1, keepdims=True)
        logp = a - np.log(np.exp(a).sum(axis=1, keepdims=True))
        return float(-(data.Y * logp).sum(axis=1).mean())

    before = loss()
    for _ in range(20):
        net.epoch()
    assert loss() < before


def test_derive_bench_tiny(bench):
    db = bench["derive_bench"]
    res = db.run(runs=1, cases=[db.Case("depth2", 2, 4)], generate=False, profile="never",
                 log=lambda _: None, warmup=False, baselines=False)
    assert "median" in res["derive"]["depth2"], res["derive"]["depth2"]
    assert _table_rows(res["table"].split("\n", 1)[1])
    json.dumps(res)  # JSON-able


def test_full_central_difference_on_a_known_gradient(bench):
    """The gradient-check cost helper compares every entry; a right gradient passes."""
    import types

    def loss(params, X, Y):
        return float(0.5 * (params["W1"] ** 2).sum() + (params["b1"] ** 3).sum())

    def loss_and_grad(params, X, Y):
        return loss(params, X, Y), {"W1": params["W1"].copy(), "b1": 3 * params["b1"] ** 2}

    mod = types.SimpleNamespace(loss=loss, loss_and_grad=loss_and_grad)
    rng = np.random.default_rng(0)
    params = {"W1": rng.standard_normal((3, 2)), "b1": rng.standard_normal(2)}
    assert bench["run"].full_central_difference(mod, params, None, None) < 1e-6


def test_profile_generated_tiny(bench, tmp_path):
    tb, pg = bench["training_bench"], bench["profile_generated"]
    res = pg.profile_generated(tb.tiny_workload(), tmp_path, epochs=1)  # Skipped is a failure here
    assert res["matmul_s"] > 0 and "matmul" in res["by_category"]
    assert res["statements"] and all(r["seconds"] >= 0 for r in res["statements"])
    assert _table_rows(pg.format_profile(res))
    json.dumps(res)


# --------------------------------------------------------------------------
# W6 (issue 11): batchnorm and a residual skip
# --------------------------------------------------------------------------


def _bn_residual_loss(P, xb, yb, eps=1e-5):
    """W6's training-mode loss, written plainly (float64): the reference."""
    def bn(z, gamma, beta):
        mu = z.mean(axis=0)
        var = ((z - mu) ** 2).mean(axis=0)
        return gamma * (z - mu) / np.sqrt(var + eps) + beta

    a2 = np.maximum(bn(xb @ P["W1"] + P["b1"], P["gamma2"], P["beta2"]), 0)
    a4 = np.maximum(bn(a2 @ P["W3"] + P["b3"], P["gamma4"], P["beta4"]), 0)
    z = (a2 + a4) @ P["W6"] + P["b6"]
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-(yb * logp).sum(axis=1).mean())


def test_w6_spec_is_the_issue_network(bench):
    """W6's spec: dense 256 → batchnorm relu → dense 256 → batchnorm relu → add [A2, A4]
    → dense 10 softmax; its parameters are those the hand-written contender trains."""
    import tomllib

    from symgrad.spec import spec_from_dict

    tb = bench["training_bench"]
    w = tb.make_workloads()["W6"]
    assert (w.n, w.batch_size, w.sizes) == (12_000, 128, (784, 256, 256, 10))
    assert w.title.startswith("W6: 784-256-BN-relu-256-BN-relu-(add skip)-10, softmax+CE")
    spec = spec_from_dict(tomllib.loads(w.toml()))
    assert [layer.type for layer in spec.layers] == [
        "dense", "batchnorm", "dense", "batchnorm", "add", "dense"]
    assert spec.layers[4].inputs == ("A2", "A4")
    assert spec.param_shapes() == {
        "W1": (784, 256), "b1": (256,), "gamma2": (256,), "beta2": (256,),
        "W3": (256, 256), "b3": (256,), "gamma4": (256,), "beta4": (256,),
        "W6": (256, 10), "b6": (10,)}
    assert spec.buffer_shapes() == {"mean2": (256,), "var2": (256,), "mean4": (256,),
                                    "var4": (256,)}
    assert tb.make_workloads(quick=True)["W6"].n == 2_048


def test_hand_written_bn_residual_gradient_and_running_statistics(bench):
    """One step of the hand-written W6 (in-place batchnorm backward, η = 1) moves every
    parameter by its gradient: central differences of the plain loss; the running
    statistics follow torch (momentum 0.1, unbiased variance)."""
    import dataclasses

    tb = bench["training_bench"]
    w = dataclasses.replace(tb.tiny_workloads()["T6"], learning_rate=1.0)
    data = tb.make_data(w)
    net = tb.NumpyBNResidual(w, data, dtype=np.float64)
    rng = np.random.default_rng(1)
    for g in (*net.gamma, *net.beta):  # away from γ = 1, β = 0
        g += rng.standard_normal(g.shape) * 0.3
    P = {n: getattr(net, n) for n in ("W1", "b1", "W3", "b3", "W6", "b6")}
    P.update(gamma2=net.gamma[0], beta2=net.beta[0], gamma4=net.gamma[1], beta4=net.beta[1])
    X, Y = data.as_dtype(np.float64)
    idx = np.arange(40, 40 + w.batch_size)
    xb, yb = X[idx], Y[idx]
    before = {k: v.copy() for k, v in P.items()}
    numeric = {}
    for k, v in P.items():
        g, flat = np.zeros_like(v), v.reshape(-1)
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + 1e-6
            plus = _bn_residual_loss(P, xb, yb)
            flat[i] = old - 1e-6
            minus = _bn_residual_loss(P, xb, yb)
            flat[i] = old
            g.reshape(-1)[i] = (plus - minus) / 2e-6
        numeric[k] = g
    net.step(idx, net.buf)
    scale = max(float(np.abs(g).max()) for g in numeric.values())
    for k in P:
        np.testing.assert_allclose(before[k] - P[k], numeric[k], rtol=0, atol=1e-7 * scale,
                                   err_msg=k)
    z1 = xb @ before["W1"] + before["b1"]
    np.testing.assert_allclose(net.running_mean[0], 0.1 * z1.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(net.running_var[0], 0.9 + 0.1 * z1.var(axis=0, ddof=1),
                               atol=1e-12)
    # the last, partial batch runs on views of the same buffers
    net.epoch()
    assert all(np.isfinite(p).all() for p in P.values())


def test_run_tiny_bn_residual_workload(bench, tmp_path, capsys):
    """`run.py --tiny --workloads T6`: W6's shape through the runner, every numpy
    contender and the generated module timed; an unknown workload is refused."""
    out_json = tmp_path / "t6.json"
    rc = bench["run"].main([
        "--tiny", "--workloads", "T6", "--no-install", "--reps", "1", "--pause", "0",
        "--no-derive", "--contenders", "numpy,generated", "--json", str(out_json),
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    (workload,) = json.loads(out_json.read_text(encoding="utf-8"))["workloads"]
    assert workload["title"].startswith("T6: 16-8-BN-relu-8-BN-relu-(add skip)-4")
    rows = {r["contender"]: r for r in workload["rows"]}
    for name in ("GEMM floor", "hand-written numpy", "generated f32", "generated f64"):
        assert rows[name].get("n") == 1 and rows[name]["median"] > 0, rows[name]
    assert workload["table"] in printed
    with pytest.raises(SystemExit, match="unknown workload 'W9'; use W1, W2, W3, W4, W5, W6"):
        bench["run"].main(["--no-install", "--no-derive", "--workloads", "W9"])


def test_w6_goals_state_jax_beside(bench):
    """W6's goals: ≤ 1.5× the floor, faster than hand-written numpy and PyTorch eager;
    JAX jit step's ratio stated beside them, no goal."""
    run = bench["run"]
    rows = [
        {"contender": "GEMM floor", "times": [1.0, 1.0]},
        {"contender": "generated f32", "times": [1.4, 1.2], "median": 1.3, "ratio_floor": 1.3},
        {"contender": "hand-written numpy", "times": [2.0, 2.0]},
        {"contender": "PyTorch eager", "times": [1.0, 1.0]},
        {"contender": "JAX jit step", "times": [2.0, 1.0]},
    ]
    goals = run.evaluate_goals([{"workload": "W6", "rows": rows}])
    text = run.format_goals(goals)
    assert text.splitlines()[1:] == [
        "  [ok    ] W6: ≤ 1.5× GEMM floor: 1.30×",
        "  [ok    ] W6: faster than hand-written numpy: generated/hand-written numpy = 0.65",
        "  [MISSED] W6: faster than PyTorch eager: generated/PyTorch eager = 1.30",
        "  [info  ] W6: beside JAX jit step (no goal): generated/JAX jit step = 0.95",
    ]


def test_layers_accuracy_one_seed(bench, capsys, tmp_path):
    """benchmarks/layers_accuracy.py: the generated modules of the two digits examples
    trained with their own [training]; seed 0 of the dense one is the demo's 97.22%
    (350 of 360), and the batchnorm + dropout one reaches at least that."""
    la = importlib.import_module("layers_accuracy")  # benchmarks/ is on sys.path (bench)
    out_json = tmp_path / "acc.json"
    assert la.main(["--seeds", "1", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    bn, dense = json.loads(out_json.read_text(encoding="utf-8"))
    assert (bn["spec"], dense["spec"]) == ("examples/digits_bn_dropout.toml",
                                           "examples/digits.toml")
    assert dense["runs"][0]["correct"] == 350 and dense["held_out"] == 360
    assert bn["runs"][0]["accuracy"] >= dense["runs"][0]["accuracy"]
    rows = _table_rows(printed.split("\n\n")[0])
    assert [r.split()[0] for r in rows] == [bn["spec"], dense["spec"]]
    assert rows[1].endswith("97.22%  97.22% ± 0.00%")
    assert "examples/digits_bn_dropout.toml reaches the dense example's 97.2%" in printed


def test_generated_w6_module_is_the_hand_written_network(bench, tmp_path):
    """The generated module of W6's spec (at T6's sizes) computes what the hand-written
    contender trains: from the same parameters, its loss_and_grad on one batch is the
    hand-written step (η = 1), and train() moves the running statistics the same way."""
    import dataclasses

    tb = bench["training_bench"]
    w = dataclasses.replace(tb.tiny_workloads()["T6"], learning_rate=1.0)
    data = tb.make_data(w)
    net = tb.NumpyBNResidual(w, data, dtype=np.float64)
    rng = np.random.default_rng(2)
    for g in (*net.gamma, *net.beta):
        g += rng.standard_normal(g.shape) * 0.3
    mod = tb.generated_module(tb.Context(w, data, tmp_path))
    params = mod.init_params(seed=0, dtype=np.float64)
    ours = {n: getattr(net, n) for n in ("W1", "b1", "W3", "b3", "W6", "b6")}
    ours.update(gamma2=net.gamma[0], beta2=net.beta[0], gamma4=net.gamma[1],
                beta4=net.beta[1], mean2=net.running_mean[0], var2=net.running_var[0],
                mean4=net.running_mean[1], var4=net.running_var[1])
    assert set(params) == set(ours)
    for k, v in ours.items():
        params[k][...] = v
    X, Y = data.as_dtype(np.float64)
    idx = np.arange(w.batch_size)
    _, grads = mod.loss_and_grad(params, X[idx], Y[idx])
    before = {k: v.copy() for k, v in ours.items()}
    net.step(idx, net.buf)
    for k in grads:
        np.testing.assert_allclose(before[k] - ours[k], grads[k], rtol=1e-9, atol=1e-12,
                                   err_msg=k)
    mod.train(params, X[idx], Y[idx], epochs=1, batch_size=w.batch_size,
              learning_rate=1.0, optimizer="sgd", verbose=False)
    for k in ours:  # one batch, shuffled: the same step, the same running statistics
        np.testing.assert_allclose(params[k], ours[k], rtol=1e-9, atol=1e-12, err_msg=k)


# --------------------------------------------------------------------------
# W4/W5 (issue 12): the CNNs
# --------------------------------------------------------------------------


def test_conv_workloads_are_the_issue_networks(bench):
    """W4 is the digits CNN, W5 the CIFAR-sized one, as issue 12 defines them; the W5 spec
    the generated contender loads is W5's own toml(), and symgrad reads both as the
    networks the numpy, torch and JAX contenders train (parameters numbered by layer)."""
    import tomllib

    from symgrad.spec import spec_from_dict

    cb = bench["conv_bench"]
    w4, w5 = cb.make_workloads()["W4"], cb.make_workloads()["W5"]
    assert (w4.image, w4.convs, w4.outputs, w4.n, w4.batch_size, w4.data) == (
        (8, 8, 1), (16,), 10, 1_437, 32, "digits")
    assert (w5.image, w5.convs, w5.outputs, w5.n, w5.batch_size) == (
        (32, 32, 3), (32, 64), 10, 2_048, 64)
    assert w5.title.startswith("W5: 32×32×3 → conv3×3×32 relu → pool2 → conv3×3×64 relu")
    committed = (cb.ROOT / w5.spec).read_text(encoding="utf-8")
    assert "\n".join(ln for ln in committed.splitlines() if not ln.startswith("#")) + "\n" \
        == w5.toml()
    spec = spec_from_dict(tomllib.loads(w5.toml()))
    assert [layer.type for layer in spec.layers] == [
        "conv2d", "maxpool2d", "conv2d", "maxpool2d", "flatten", "dense"]
    shapes = {k: v.shape for k, v in cb.init_params(w5).items()}
    assert spec.param_shapes() == shapes == {
        "W1": (3, 3, 3, 32), "b1": (32,), "W3": (3, 3, 32, 64), "b3": (64,),
        "W6": (4096, 10), "b6": (10,)}
    assert spec_from_dict(tomllib.loads(w4.toml())).param_shapes() == {
        k: v.shape for k, v in cb.init_params(w4).items()}


def test_run_tiny_conv_workloads(bench, tmp_path, capsys, monkeypatch):
    """`run.py --tiny --workloads T4,T5`: W4's and W5's shapes through the runner (the
    floor, hand-written numpy and the conv kernels timed; torch and JAX reported missing,
    their import and compilation would take seconds), and the trajectory check: from the
    same parameters over the same batches hand-written numpy and the kernels compute the
    same epoch-1 losses."""
    tb, cb = bench["training_bench"], bench["conv_bench"]
    real = tb.has_module
    for mod in (tb, cb):
        monkeypatch.setattr(mod, "has_module", lambda m: m not in ("jax", "torch") and real(m))
    out_json = tmp_path / "conv.json"
    rc = bench["run"].main([
        "--tiny", "--workloads", "T4,T5", "--no-install", "--reps", "1", "--pause", "0",
        "--no-derive", "--contenders", "numpy,kernels,torch,jax", "--json", str(out_json),
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    results = json.loads(out_json.read_text(encoding="utf-8"))
    assert [w["workload"] for w in results["workloads"]] == ["T4", "T5"]
    for w in results["workloads"]:
        rows = {r["contender"]: r for r in w["rows"]}
        assert list(rows) == ["GEMM floor", "hand-written numpy", "numpy + conv kernels",
                              "PyTorch eager", "JAX jit step"]
        for name in ("GEMM floor", "hand-written numpy", "numpy + conv kernels"):
            assert rows[name].get("n") == 1 and rows[name]["median"] > 0, rows[name]
        assert rows["PyTorch eager"]["status"] == "skipped: torch not installed"
        assert w["table"] in printed and len(w["load_average"]) == 3
        traj = {r["contender"]: r for r in w["trajectory"]["rows"]}
        assert traj["numpy + conv kernels"]["max_rel_diff"] < 1e-6, traj
        assert len(traj["numpy + conv kernels"]["losses"]) == w["trajectory"]["batches"] == 5
        assert traj["PyTorch eager"]["status"] == "skipped: torch not installed"
        assert "generated f32" not in traj  # not a contender of this run
        assert cb.format_trajectory(w["trajectory"]) in printed
    assert "load average at start: " in printed


def test_conv_trajectories_agree_with_torch(bench, tmp_path, monkeypatch):
    """T5 (W5's two conv layers: col2im and both poolings on the path): hand-written numpy,
    the conv kernels and PyTorch eager, from the same parameters over the same batches,
    compute the same epoch-1 losses to float32 rounding, and they go down. (JAX hidden:
    its compilation would take seconds; `make bench` compares it.)"""
    tb, cb = bench["training_bench"], bench["conv_bench"]
    real = cb.has_module
    monkeypatch.setattr(cb, "has_module", lambda m: m != "jax" and real(m))
    w = cb.tiny_workloads()["T5"]
    res = cb.trajectory_check(w, tb.make_data(w), tmp_path, generated=False)
    traj = {r["contender"]: r for r in res["rows"]}
    for name in ("numpy + conv kernels", "PyTorch eager"):
        assert traj[name]["ok"] and traj[name]["max_rel_diff"] < 1e-5, traj[name]
    assert res["last_loss"] < res["first_loss"]
    assert traj["JAX"]["status"] == "skipped: jax not installed"
    assert "[ok]" in cb.format_trajectory(res) and "DIFFERS" not in cb.format_trajectory(res)


def test_w4_w5_goals(bench):
    """W4: faster than every contender (the floor's ratio stated, no goal); W5: ≤ 2.5× the
    floor, faster than hand-written numpy and JAX, PyTorch eager's ratio beside; the same
    goals stated ("info") for the network on the conv kernels."""
    run = bench["run"]

    def rows(gen, kern):
        return [
            {"contender": "GEMM floor", "times": [1.0, 1.0]},
            {"contender": "generated f32", "times": gen, "median": gen[0],
             "ratio_floor": gen[0]},
            {"contender": "numpy + conv kernels", "times": kern, "median": kern[0],
             "ratio_floor": kern[0]},
            {"contender": "hand-written numpy", "times": [4.0, 4.0]},
            {"contender": "PyTorch eager", "times": [2.0, 2.0]},
            {"contender": "JAX jit step", "times": [3.0, 3.0]},
        ]

    res = [{"workload": "W4", "rows": rows([2.5, 2.5], [2.0, 2.0])},
           {"workload": "W5", "rows": rows([2.4, 2.4], [3.0, 3.0])}]
    lines = run.format_goals([*run.evaluate_goals(res),
                              *run.evaluate_goals(res, "numpy + conv kernels", "kernels")])
    assert lines.splitlines()[1:] == [
        "  [info  ] W4: beside the GEMM floor (no goal): 2.50×",
        "  [ok    ] W4: faster than hand-written numpy: generated/hand-written numpy = 0.62",
        "  [MISSED] W4: faster than PyTorch eager: generated/PyTorch eager = 1.25",
        "  [ok    ] W4: faster than JAX jit step: generated/JAX jit step = 0.83",
        "  [ok    ] W5: ≤ 2.5× GEMM floor: 2.40×",
        "  [ok    ] W5: faster than hand-written numpy: generated/hand-written numpy = 0.60",
        "  [ok    ] W5: faster than JAX jit step: generated/JAX jit step = 0.80",
        "  [info  ] W5: beside PyTorch eager (no goal): generated/PyTorch eager = 1.20",
        "  [info  ] W4: kernels: beside the GEMM floor (no goal): 2.00×",
        "  [info  ] W4: kernels: faster than hand-written numpy: kernels/hand-written numpy "
        "= 0.50 (met)",
        "  [info  ] W4: kernels: faster than PyTorch eager: kernels/PyTorch eager = 1.00 "
        "(missed)",
        "  [info  ] W4: kernels: faster than JAX jit step: kernels/JAX jit step = 0.67 (met)",
        "  [info  ] W5: kernels: ≤ 2.5× GEMM floor: 3.00× (missed)",
        "  [info  ] W5: kernels: faster than hand-written numpy: kernels/hand-written numpy "
        "= 0.75 (met)",
        "  [info  ] W5: kernels: faster than JAX jit step: kernels/JAX jit step = 1.00 "
        "(missed)",
        "  [info  ] W5: kernels: beside PyTorch eager (no goal): kernels/PyTorch eager = 1.50",
    ]
