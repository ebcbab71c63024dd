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
                         "run")
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
