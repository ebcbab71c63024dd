"""The tutorial notebook (examples/tutorial.ipynb): committed without outputs, executed with
nbclient in a kernel of this interpreter, and its nbconvert page rendered in headless
Chromium with MathJax loaded offline (tests/notebook_browser.py says how).

About 10 s: the notebook runs once (derive, prove, verify twice, generate, check, 30
epochs of training, a plot) and Chromium renders its page once.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import nbformat
import notebook_browser as nbb
import pytest

pytestmark = pytest.mark.slow  # runs the tutorial notebook and renders it in chromium

EXAMPLES = nbb.NOTEBOOK.parent
# what a dataclass's repr looks like (Verdict(ok=False, …)); results show a short repr
DATACLASS_DUMP = re.compile(r"\b(Verdict|ExprVerdict|CheckReport|Report|Derivation|"
                            r"ExprDerivation|Spec|Layer|Training|Row|Claim)\((\w+=|')")


def _plain(outputs) -> list[str]:
    return [o["data"]["text/plain"] for o in outputs
            if o["output_type"] in ("execute_result", "display_data") and "text/plain" in o["data"]]


def _stdout(outputs) -> str:
    return "".join(o["text"] for o in outputs
                   if o["output_type"] == "stream" and o["name"] == "stdout")


def test_committed_notebook_has_no_outputs():
    text = nbb.NOTEBOOK.read_text(encoding="utf-8")
    raw = json.loads(text)
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    # what `python tests/notebook_browser.py --strip` writes, byte for byte
    assert nbformat.writes(nbb.stripped(nb)) + "\n" == text
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 8
    for cell in code:
        assert cell.outputs == [], f"cell {cell.id} has outputs: strip them"
        assert cell.execution_count is None, f"cell {cell.id} has an execution count"
        assert "execution" not in cell.metadata, f"cell {cell.id} has execution timings"
        assert cell.metadata.get("tags"), f"cell {cell.id} has no tag (the tests find cells by tag)"
    assert set(raw["metadata"]) == {"kernelspec", "language_info"}
    assert raw["metadata"]["kernelspec"]["name"] == "python3"
    # cell ids are names, not random hex: a re-save by a script keeps the diff small
    assert all(not re.fullmatch(r"[0-9a-f]{8}", c.id) for c in nb.cells)


@pytest.fixture(scope="module")
def executed():
    before = sorted(p.name for p in EXAMPLES.iterdir())
    nb = nbb.execute(timeout=120)
    after = sorted(p.name for p in EXAMPLES.iterdir())
    assert after == before, "the notebook wrote into examples/"
    return nb


def test_every_cell_runs_without_errors_or_stderr(executed):
    nbformat.validate(executed)
    for cell in executed.cells:
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None
        for out in cell.outputs:
            assert out["output_type"] != "error", f"{cell.id}: {out.get('ename')}: {out.get('evalue')}"
            # stderr shows as pink lines: progress and warnings must not land there
            assert not (out["output_type"] == "stream" and out["name"] == "stderr"), (
                f"{cell.id} wrote to stderr: {out['text'][:300]!r}")
        for text in _plain(cell.outputs):
            assert not DATACLASS_DUMP.search(text), f"{cell.id} shows a dataclass dump: {text[:200]}"
            assert len(text) < 200 or text.startswith("<"), f"{cell.id}: {text[:200]}"


def test_derivation_and_proof_display_themselves(executed):
    (out,) = nbb.outputs(executed, "derive")
    assert out["data"]["text/plain"] == ("<Derivation digits_mlp: 64 → 32 tanh → 10 softmax; "
                                         "loss cross_entropy (6 backward equations)>")
    latex = out["data"]["text/latex"]
    assert r"\delta_{1} = \frac{\partial L}{\partial Z_{1}}" in latex
    assert not [line for line in latex.splitlines() if line.lstrip().startswith("%")]
    assert out["data"]["text/markdown"].startswith("## Backpropagation for `digits_mlp`")

    (out,) = nbb.outputs(executed, "prove")
    assert out["data"]["text/plain"] == (
        "<Report digits_mlp: all formulas proved (5 of 5 claims proved)>")
    assert 'data-verdict="pass"' in out["data"]["text/html"]


def test_wrong_derivation_is_diagnosed_and_the_fix_proved(executed):
    (wrong,) = nbb.outputs(executed, "verify-wrong")
    assert wrong["data"]["text/plain"] == (
        "<Verdict Z1: WRONG (activation-derivative) yours = dZ2 @ W2.T>")
    page = wrong["data"]["text/html"]
    assert 'data-verdict="fail"' in page
    assert '<span class="symgrad-badge symgrad-fail">WRONG (activation-derivative)</span>' in page
    assert ("<dt>diagnosis</dt><dd>missing activation-derivative factor: yours is ∂L/∂Z₁ "
            "without the factor ⊙ (1 − A₁²)") in page
    # yours and the correct formula side by side, typeset
    assert r"<td>$$\delta_{2} W_{2}^{\top}$$</td>" in page
    assert r"\odot \left(1 - {A_{1}}^{2}\right)$$</td>" in page

    (fields,) = nbb.outputs(executed, "verify-fields")
    assert fields["data"]["text/plain"] == (
        "(False, 'activation-derivative', '(dZ2 @ W2.T) * (1 - A1**2)')")

    (right,) = nbb.outputs(executed, "verify-right")
    assert right["data"]["text/plain"] == "<Verdict Z1: correct yours = (dZ2 @ W2.T) * (1 - A1**2)>"
    assert 'data-verdict="pass"' in right["data"]["text/html"]
    assert "every entry&#x27;s difference is 0" in right["data"]["text/html"]  # the proof


def test_generate_check_train_plot(executed):
    shown = _stdout(nbb.outputs(executed, "generate"))
    assert shown.startswith("digits_mlp.py: ")
    assert "    # δ₁ = ∂L/∂Z₁ = (δ₂ W₂ᵀ) ⊙ (1 − A₁²)\n    dZ1 = (dZ2 @ W2.T) * (1 - A1**2)\n" in shown

    (report,) = nbb.outputs(executed, "check")
    plain = report["data"]["text/plain"]
    assert re.fullmatch(r"<CheckReport /\S+/digits_mlp\.py: central ok: 5 of 5 checks passed>", plain)
    assert 'data-verdict="pass"' in report["data"]["text/html"]
    assert report["data"]["text/html"].count('<td class="symgrad-pass">pass</td>') == 5
    workdir = Path(re.search(r"<CheckReport (\S+)/digits_mlp\.py", plain).group(1))
    assert not workdir.exists(), "the last cell removes the temporary folder"

    log = _stdout(nbb.outputs(executed, "train"))
    assert [line.split(":")[0] for line in log.splitlines()] == [
        "epoch 10/30", "epoch 20/30", "epoch 30/30", "held-out accuracy after 30 epochs"]
    accuracy = float(re.search(r"after 30 epochs: ([\d.]+)%", log).group(1))
    assert 90 <= accuracy <= 100

    (plot,) = [o for o in nbb.outputs(executed, "plot") if o["output_type"] == "display_data"]
    png = base64.b64decode(plot["data"]["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_rendered_page_in_chromium(executed, tmp_path):
    if nbb.chromium() is None:
        pytest.skip(f"chromium is not installed: the browser check needs Debian's "
                    f"'{nbb.CHROMIUM_PACKAGE}' package (apt-get install {nbb.CHROMIUM_PACKAGE})")
    page = tmp_path / "tutorial.html"
    source = nbb.to_html(executed)
    page.write_text(source, encoding="utf-8")
    # offline: no script from the network, MathJax from the pip package
    assert not re.search(r"<script[^>]+src=\"https?:", source)
    assert f'<script src="{nbb.mathjax_script().as_uri()}">' in source
    # before MathJax runs, the math is raw text: the checks below can fail
    assert "$$" in nbb.visible_text(source)

    dom = nbb.dump_dom(page)
    count = nbb.typeset_count(dom)
    assert count is not None, "MathJax did not finish typesetting the page"
    assert count == dom.count("<mjx-container") and count >= 20
    assert "<mjx-merror" not in dom and "data-mjx-error" not in dom  # no TeX errors
    text = nbb.visible_text(dom)
    for raw in ("$$", r"\(", r"\[", r"\frac", r"\begin", r"\delta"):
        assert raw not in text, f"raw math {raw!r} left in the rendered page"
    assert not [line for line in text.splitlines() if line.lstrip().startswith("% ")]
    assert not DATACLASS_DUMP.search(text), DATACLASS_DUMP.search(text).group(0)
    # the results' displays are there, verdicts coloured
    assert "WRONG (activation-derivative)" in text and "missing activation-derivative factor" in text
    assert dom.count('class="symgrad-badge symgrad-pass"') == 3  # proof, corrected verdict, check
    assert dom.count('class="symgrad-badge symgrad-fail"') == 1
    assert "Backpropagation for" in text
    assert re.search(r'<img[^>]+src="data:image/png;base64,', dom)
