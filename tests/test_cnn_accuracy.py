"""benchmarks/cnn_accuracy.py (issue 12): the digits CNN's setting is chosen by
cross-validation on the training rows only, and examples/digits_cnn.toml is that setting."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cnn_accuracy  # noqa: E402

from symgrad import datasets  # noqa: E402
from symgrad.spec import load_spec  # noqa: E402

# the study uses scikit-learn's StratifiedKFold: the `slow` extra, which make test-slow
# installs; the whole file runs there
pytestmark = pytest.mark.slow

SMOKE = ["--smoke", "--folds", "2", "--cv-seeds", "1", "--seeds", "1"]


def test_the_example_trains_with_the_chosen_setting():
    results = json.loads((ROOT / "benchmarks" / "results" / "cnn_accuracy.json").read_text())
    spec = load_spec(ROOT / "examples" / "digits_cnn.toml")
    assert cnn_accuracy.example_setting(spec) == results["chosen"]
    cv = results["cv"]
    assert results["chosen"] == max(cv, key=lambda c: c["mean"])["setting"]
    assert all(len(c["runs"]) == 20 for c in cv)  # 5 folds × 4 seeds, each setting
    held = results["held_out"]
    assert held["setting"] == results["chosen"] and len(held["runs"]) == 5
    assert held["mean"] == pytest.approx(np.mean([r["correct"] / 360 for r in held["runs"]]))


def accuracies(path: Path) -> list[list[float]]:
    return [[r["accuracy"] for r in c["runs"]] for c in json.loads(path.read_text())["cv"]]


def test_cross_validation_never_reads_the_held_out_rows(tmp_path, monkeypatch, capsys):
    assert cnn_accuracy.main([*SMOKE, "--cv-only", "--out", str(tmp_path / "a")]) == 0
    clean = capsys.readouterr().out
    assert "2. chosen (highest CV mean): " in clean and "held-out" not in clean
    split = datasets.digits_split

    def poisoned(*args, **kwargs):
        d = split(*args, **kwargs)
        d["X_test"] = np.full_like(d["X_test"], np.nan)
        d["y_test"] = np.full_like(d["y_test"], -1)
        return d

    monkeypatch.setattr(datasets, "digits_split", poisoned)
    assert cnn_accuracy.main([*SMOKE, "--cv-only", "--out", str(tmp_path / "b")]) == 0
    assert accuracies(tmp_path / "b.json") == accuracies(tmp_path / "a.json")
    assert [len(a) for a in accuracies(tmp_path / "a.json")] == [2, 2]  # 2 folds × 1 seed


def test_a_smoke_run_writes_its_report(tmp_path, capsys):
    out = tmp_path / "r"
    assert cnn_accuracy.main([*SMOKE, "--out", str(out)]) == 0
    text = out.with_suffix(".txt").read_text(encoding="utf-8")
    assert text == capsys.readouterr().out
    data = json.loads(out.with_suffix(".json").read_text())
    best = max(data["cv"], key=lambda c: c["mean"])
    assert data["chosen"] == best["setting"] and data["held_out"]["setting"] == best["setting"]
    assert f"2. chosen (highest CV mean): {cnn_accuracy.describe(best['setting'])}" in text
    assert "3. held-out (360 rows, read only here)" in text and "load average" in text


def test_unknown_setting_keys_are_refused():
    with pytest.raises(ValueError, match=r"unknown setting keys \['lr'\]"):
        cnn_accuracy.setting_of({"lr": 0.1})
