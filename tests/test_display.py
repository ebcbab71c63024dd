"""Rich display in Jupyter (symgrad.display) and progress in the generated train().

Every result class renders HTML (parsed here with html.parser: the table cells, the verdict's
class, the side-by-side formulas) and Markdown, with balanced math delimiters and no
dataclass dump; ``repr()`` is one line under 120 characters.  ``derive(spec, steps=True)``
works, and its LaTeX has no ``%`` comment line.  The generated ``train(progress=…)`` calls a
function, prints lines, or updates one tqdm.auto bar in a notebook.
"""

from __future__ import annotations

import re
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import symgrad
from symgrad import display
from symgrad.check import CheckReport, Row
from symgrad.codegen import load_module
from symgrad.crosscheck import Claim, Report
from symgrad.exprmode import derive_expr, parse_problem, verify_expr
from symgrad.spec import load_spec
from symgrad.verify import Verdict

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits.toml"
DUMPS = ("Verdict(", "CheckReport(", "Report(", "Spec(", "Row(", "Claim(", "ExprVerdict(",
         "Derivation(", "ok=", "lines=[")


# --------------------------------------------------------------------------
# An HTML tree, as html.parser reads it
# --------------------------------------------------------------------------


class Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Node | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def find_all(self, tag: str, cls: str | None = None) -> list[Node]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if c.tag == tag and (cls is None or cls in c.attrs.get("class", "").split()):
                    out.append(c)
                out += c.find_all(tag, cls)
        return out

    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()


VOID = {"br", "hr", "img", "meta", "input"}


class Tree(HTMLParser):
    def __init__(self, source: str):
        super().__init__()
        self.root = self.node = Node("#root", {}, None)
        self.feed(source)
        self.close()
        assert self.node is self.root, "unclosed element"

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.node)
        self.node.children.append(node)
        if tag not in VOID:
            self.node = node

    def handle_endtag(self, tag):
        assert self.node.tag == tag, f"</{tag}> closes <{self.node.tag}>"
        self.node = self.node.parent

    def handle_data(self, data):
        self.node.children.append(data)


def rows(table: Node) -> list[list[str]]:
    return [[td.text for td in tr.find_all("td")] for tr in table.find_all("tbody")[0].find_all("tr")]


def head(table: Node) -> list[str]:
    return [th.text for th in table.find_all("th")]


def panel(source: str, what: str) -> Node:
    """The result's frame; the style block before it, nothing else."""
    tree = Tree(source).root
    tops = [c for c in tree.children if isinstance(c, Node)]
    assert [t.tag for t in tops] == ["style", "div"]
    div = tops[1]
    assert div.classes() == ["symgrad", f"symgrad-{what}"]
    return div


def assert_clean(*texts: str) -> None:
    """Balanced math delimiters, no comment line, no dataclass dump."""
    for text in texts:
        assert text.count("$$") % 2 == 0, text
        assert text.count(r"\(") == text.count(r"\)"), text
        assert text.count(r"\[") == text.count(r"\]"), text
        assert not re.search(r"^\s*% ", text, re.M), text
        for dump in DUMPS:
            assert dump not in text, (dump, text)


def assert_short(obj: object, start: str) -> None:
    r = repr(obj)
    assert "\n" not in r and len(r) < 120 and r.startswith(start), r
    for dump in DUMPS:
        assert dump not in r, r


# --------------------------------------------------------------------------
# The verify verdict
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrong():
    return symgrad.verify(DIGITS, "b2", "sum(Yhat - Y, axis=0)")


def test_wrong_verdict_html(wrong) -> None:
    div = panel(wrong._repr_html_(), "verdict")
    assert div.attrs["data-verdict"] == "fail"
    badge = div.find_all("span", "symgrad-badge")
    assert len(badge) == 1 and badge[0].classes() == ["symgrad-badge", "symgrad-fail"]
    assert badge[0].text == "WRONG (factor)"
    title = div.find_all("div", "symgrad-title")[0].text
    assert title == "WRONG (factor) " + wrong.title
    table = div.find_all("table", "symgrad-sides")[0]
    assert head(table) == ["yours", "correct"]
    assert rows(table) == [
        [r"$$\mathbf{1}^{\top} \left(\hat{Y} - Y\right)$$", r"$$\mathbf{1}^{\top} \delta_{2}$$"],
        ["sum(Yhat - Y, axis=0)", "sum(dZ2, axis=0)"],
    ]
    terms = [dt.text for dt in div.find_all("dt")]
    values = [dd.text for dd in div.find_all("dd")]
    assert terms == ["diagnosis", "differs", "numeric", "symbolic", "textbook", "note"]
    assert values[0] == wrong.message and "off by a constant factor N" in values[0]
    assert values[1] == wrong.counterexample and re.search(r"entry \[\d\] is \S+ in yours", values[1])
    assert_clean(wrong._repr_html_(), wrong._repr_markdown_())


def test_wrong_verdict_markdown_and_repr(wrong) -> None:
    md = wrong._repr_markdown_().splitlines()
    assert md[0] == r"**WRONG (factor)** — verify ∂L/∂b₂ — digits\_mlp: 64 → 32 tanh → 10 softmax; cross\_entropy"
    assert md[2:6] == [
        "| yours | correct |", "|---|---|",
        r"| $$\mathbf{1}^{\top} \left(\hat{Y} - Y\right)$$ | $$\mathbf{1}^{\top} \delta_{2}$$ |",
        "| `sum(Yhat - Y, axis=0)` | `sum(dZ2, axis=0)` |",
    ]
    assert md[7].startswith("- **diagnosis**: off by a constant factor N")
    assert repr(wrong) == "<Verdict b2: WRONG (factor) yours = sum(Yhat - Y, axis=0)>"


def test_correct_verdict_is_green() -> None:
    v = symgrad.verify(DIGITS, "W1", "X.T @ dZ1")
    div = panel(v._repr_html_(), "verdict")
    assert div.attrs["data-verdict"] == "pass"
    assert [s.classes() for s in div.find_all("span")] == [["symgrad-badge", "symgrad-pass"]]
    assert rows(div.find_all("table")[0])[0] == [r"$$X^{\top} \delta_{1}$$"] * 2
    assert "differs" not in [dt.text for dt in div.find_all("dt")]
    assert_short(v, "<Verdict W1: correct yours = X.T @ dZ1>")
    assert_clean(v._repr_html_(), v._repr_markdown_())


def test_undecided_and_escaping() -> None:
    """A hand-made verdict: not proved (amber), and text with <, & and $ escaped."""
    v = Verdict(
        ok=False, wrt="W1", formula="X.T @ dZ1 < 1 & 2", title="verify <b>&", undecided=True,
        message="a $ sign", correct="X.T @ dZ1")
    source = v._repr_html_()
    div = panel(source, "verdict")
    assert div.attrs["data-verdict"] == "undecided"
    assert div.find_all("span")[0].classes() == ["symgrad-badge", "symgrad-undecided"]
    assert "<b>" not in source and "verify &lt;b&gt;&amp;" in source
    assert div.find_all("div", "symgrad-title")[0].text == "not proved verify <b>&"
    assert_short(v, "<Verdict W1: not proved")


# --------------------------------------------------------------------------
# The check report
# --------------------------------------------------------------------------


def test_check_report_html_table(tmp_path) -> None:
    report = symgrad.check_spec(ROOT / "examples" / "regression.toml")
    div = panel(report._repr_html_(), "check")
    table = div.find_all("table", "symgrad-table")[0]
    assert tuple(head(table)) == report.header()
    assert [tuple(r) for r in rows(table)] == report.cells()
    marks = [tr.find_all("td")[-1].classes() for tr in table.find_all("tbody")[0].find_all("tr")]
    assert marks == [["symgrad-pass"]] * len(report.rows)
    assert div.find_all("strong")[0].text == report.text().splitlines()[-1]
    assert div.find_all("span")[0].classes() == ["symgrad-badge", "symgrad-pass"]
    assert_short(report, "<CheckReport ")
    assert repr(report).endswith(f": central ok: {len(report.rows)} of {len(report.rows)} checks passed>")
    md = report._repr_markdown_()
    assert "| parameter | shape | max rel. error | worst entry | method | result |" in md
    assert_clean(report._repr_html_(), md)


def test_failing_check_report_marks_the_row() -> None:
    good = Row("W1", (3, 2), 1e-9, "[0, 1]", "central", True)
    bad = Row("b1", (2,), 0.5, "[1]", "central", False, detail="b1[1]: yours 1.5, differences 1")
    report = CheckReport("net.py", "central", "central", 1e-6, 0, 8, rows=[good, bad])
    div = panel(report._repr_html_(), "check")
    assert div.attrs["data-verdict"] == "fail"
    table = div.find_all("table")[0]
    assert rows(table) == [["W1", "(3, 2)", "1.0e-09", "[0, 1]", "central", "pass"],
                           ["b1", "(2,)", "5.0e-01", "[1]", "central", "FAIL"]]
    cells = [tr.find_all("td")[-1].classes() for tr in table.find_all("tbody")[0].find_all("tr")]
    assert cells == [["symgrad-pass"], ["symgrad-fail"]]
    assert [p.text for p in div.find_all("p")] == ["b1[1]: yours 1.5, differences 1",
                                                   "FAILED: b1 (1 of 2 checks)"]
    assert repr(report) == "<CheckReport net.py: central FAILED: b1 (1 of 2 checks)>"
    failed = CheckReport("m.py", "central", "central", 1e-6, 0, 8, failure="it exited with status 3")
    assert repr(failed) == "<CheckReport m.py: central FAILED: it exited with status 3>"
    assert panel(failed._repr_html_(), "check").find_all("div", "symgrad-title")[0].text == (
        "FAIL symgrad check m.py: FAILED: it exited with status 3")


# --------------------------------------------------------------------------
# The proof report
# --------------------------------------------------------------------------


def test_proof_report() -> None:
    spec = load_spec(DIGITS)
    report = Report(spec, [Claim("the chain rule", True, 0.25, "15 entries"),
                           Claim("the spot check", True, 3.0, "not done", skipped=True),
                           Claim("tanh′(z) = 1 − a²", False, 0.01)])
    div = panel(report._repr_html_(), "proof")
    table = div.find_all("table")[0]
    assert head(table) == ["claim", "detail", "time", "result"]
    assert rows(table) == [["the chain rule", "15 entries", "0.25 s", "proved"],
                           ["the spot check", "not done", "3.00 s", "skipped"],
                           ["tanh′(z) = 1 − a²", "", "0.01 s", "FAILED"]]
    marks = [tr.find_all("td")[-1].classes() for tr in table.find_all("tbody")[0].find_all("tr")]
    assert marks == [["symgrad-pass"], ["symgrad-undecided"], ["symgrad-fail"]]
    assert div.find_all("span")[0].text == "SOME FORMULAS ARE NOT PROVED"
    assert repr(report) == ("<Report digits_mlp: SOME FORMULAS ARE NOT PROVED "
                            "(1 of 3 claims proved)>")
    assert_clean(report._repr_html_(), report._repr_markdown_())


# --------------------------------------------------------------------------
# Expression mode
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problem():
    return parse_problem("sum((X @ W - Y)**2)", ["X=N,d", "W=d,k", "Y=N,k"], "W")


def test_expr_verdict(problem) -> None:
    v = verify_expr(problem, "W", "X.T @ (X @ W - Y)")
    div = panel(v._repr_html_(), "verdict")
    assert div.attrs["data-verdict"] == "fail"
    assert div.find_all("span")[0].text == "WRONG"
    table = div.find_all("table")[0]
    assert rows(table) == [[r"$$X^{\top} \left(X W - Y\right)$$",
                            r"$$2 X^{\top} \left(X W - Y\right)$$"],
                           ["X.T @ (X @ W - Y)", "2 * (X.T @ (X @ W - Y))"]]
    terms = [dt.text for dt in div.find_all("dt")]
    assert terms == ["expression", "evidence", "diagnosis", "correct"]
    assert div.find_all("dd")[2].text == "off by a constant factor (yours = 0.5 × correct)"
    assert repr(v) == "<ExprVerdict WRONG yours = X.T @ (X @ W - Y)>"
    assert_clean(v._repr_html_(), v._repr_markdown_())


def test_expr_derivation(problem) -> None:
    d = derive_expr(problem)
    assert d._repr_latex_() == "$$" + d.latex().strip() + "$$"
    assert d._repr_markdown_() == d.markdown()
    assert repr(d) == "<ExprDerivation f = sum((X @ W - Y) ** 2) (∂f/∂W)>"
    assert_clean(d._repr_latex_(), d._repr_markdown_())


# --------------------------------------------------------------------------
# The derivation
# --------------------------------------------------------------------------


def test_derive_with_steps() -> None:
    d = symgrad.derive(DIGITS, steps=True)
    assert d.show_steps and d.text() == d.text(steps=True) != d.text(steps=False)
    assert "Chain rule, step by step" in d.text() and "Chain rule" in d._repr_markdown_()
    assert d.latex() == d.latex(steps=True) == d._repr_latex_()
    assert r"\(\textbf{Chain rule, step by step}\)" in d.latex()
    plain = symgrad.derive(DIGITS)
    assert not plain.show_steps and plain.text() == plain.text(steps=False)
    assert plain._repr_latex_().startswith("$$\\begin{aligned}")
    assert_short(d, "<Derivation digits_mlp: 64 → 32 tanh → 10 softmax; loss cross_entropy "
                    "(6 backward equations, with steps)>")
    for text in (d.latex(), plain.latex(), d._repr_markdown_(), plain._repr_latex_()):
        assert_clean(text)


def test_latex_titles_are_inline_math() -> None:
    lines = symgrad.derive(DIGITS).latex().splitlines()
    # the network line is display math: inline, it ran into "Forward" on one line
    assert lines[0] == (r"\[\text{digits}\_\text{mlp: 64 }\to \text{ 32 tanh }\to \text{ 10 "
                        r"softmax; loss cross}\_\text{entropy}\]")
    titles = [line for line in lines if line.startswith(r"\(")]
    assert titles == [
        r"\(\textbf{Forward}\)", r"\(\textbf{Backward}\)",
        r"\(\textbf{Update (gradient descent, learning rate }\eta\textbf{)}\)",
        r"\(\text{softmax}\circ \text{cross-entropy uses: each row of Y sums to 1 (one-hot "
        r"labels or probabilities)}\)",
    ]
    assert all(line.startswith((r"\(", r"\[", r"\]", "\\begin", "\\end")) or "&" in line
               for line in lines)


# --------------------------------------------------------------------------
# The helpers
# --------------------------------------------------------------------------


@pytest.mark.parametrize("source, latex", [
    ("X.T @ dZ1", r"X^{\top} \delta_{1}"),
    ("2 * X.T @ (X @ W - Y)", r"2 X^{\top} \left(X W - Y\right)"),
    ("A1.T @ dZ2 * N", r"A_{1}^{\top} \delta_{2} \cdot N"),
    ("sum(Yhat - Y, axis=0) / N", r"\frac{\mathbf{1}^{\top} \left(\hat{Y} - Y\right)}{N}"),
    ("dZ1.sum(axis=0)", r"\mathbf{1}^{\top} \delta_{1}"),
    ("X.sum(axis=1)", r"X \mathbf{1}"),
    # @ and * bind equally in Python, left to right: a product operand of ⊙ is bracketed
    ("dZ2 @ W2.T * (1 - A1**2)",
     r"\left(\delta_{2} W_{2}^{\top}\right) \odot \left(1 - {A_{1}}^{2}\right)"),
    ("(1 - A1**2) * (dZ2 @ W2.T)",
     r"\left(1 - {A_{1}}^{2}\right) \odot \left(\delta_{2} W_{2}^{\top}\right)"),
    ("dZ2 @ (W2.T * A1)", r"\delta_{2} \left(W_{2}^{\top} \odot A_{1}\right)"),
    ("dZ2 @ W2.T * A1 * (1 - A1)",
     r"\left(\delta_{2} W_{2}^{\top}\right) \odot A_{1} \odot \left(1 - A_{1}\right)"),
    ("A * (B * C)", r"A \odot \left(B \odot C\right)"),
    ("2 * dZ1 * A1", r"\left(2 \delta_{1}\right) \odot A_{1}"),
    ("sum(dZ1, axis=0) * b1", r"\left(\mathbf{1}^{\top} \delta_{1}\right) \odot b_{1}"),
    ("dA1 * A1.T", r"\frac{\partial L}{\partial A_{1}} \odot A_{1}^{\top}"),
    ("np.exp(-Z1) * dA1", r"\exp\left(-Z_{1}\right) \odot \frac{\partial L}{\partial A_{1}}"),
    ("np.where(Z1 > 0, dA1, 0)",
     r"\operatorname{where}\left(Z_{1} > 0, \frac{\partial L}{\partial A_{1}}, 0\right)"),
    ("x**2 + 1e-05", r"{x}^{2} + 1 \cdot 10^{-5}"),
    ("-(dZ2)", r"-\delta_{2}"),
    ("(X @ W", r"\text{(X @ W}"),  # not Python: shown as text
])
def test_formula_latex(source: str, latex: str) -> None:
    assert display.formula_latex(source) == latex


def test_math_text_and_short_repr() -> None:
    assert display.math_text("a_b 50% → λ₂") == (
        r"\text{a}\_\text{b 50}\%\text{ }\to \text{ }\lambda _{2}")
    long = display.short_repr("X", "y" * 200)
    assert len(long) == display.REPR_LIMIT and long.endswith("…>")
    assert display.short_repr("X", "a\n  b") == "<X a b>"


# --------------------------------------------------------------------------
# Progress in the generated train()
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module():
    return load_module(ROOT / "generated" / "digits_mlp.py")


def data(m, n=40):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, m.INPUTS)), rng.integers(0, m.OUTPUTS, n)


def test_progress_function(module, capsys) -> None:
    X, y = data(module)
    calls = []
    history = module.train(module.init_params(0), X, y, epochs=3, X_val=X[:8], Y_val=y[:8],
                           progress=lambda *args: calls.append(args))
    assert [c[:2] for c in calls] == [(1, 3), (2, 3), (3, 3)]
    assert [c[2] for c in calls] == history["loss"]
    assert [c[3] for c in calls] == [{"val_loss": a, "val_accuracy": b} for a, b in
                                     zip(history["val_loss"], history["val_accuracy"], strict=True)]
    module.train(module.init_params(0), X, y, epochs=2, progress=lambda *args: calls.append(args))
    assert [c[3] for c in calls[3:]] == [None, None]
    assert capsys.readouterr() == ("", "")  # the function instead of the lines


def test_progress_lines_and_off(module, capsys, monkeypatch) -> None:
    X, y = data(module)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # not installed: the lines
    module.train(module.init_params(0), X, y, epochs=2, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1].startswith("epoch 2/2  loss ")
    module.train(module.init_params(0), X, y, epochs=2, progress=False)
    module.train(module.init_params(0), X, y, epochs=2, verbose=False)
    assert capsys.readouterr() == ("", "")
    with pytest.raises(TypeError, match=r"^progress must be None, True, False or a function "
                       r"\(epoch, epochs, loss, val\), not 'yes'$"):
        module.train(module.init_params(0), X, y, epochs=1, progress="yes")


class FakeBar:
    made: list[FakeBar] = []

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.postfix, self.closed = kwargs, 0, [], False
        FakeBar.made.append(self)

    def update(self, n):
        self.updates += n

    def set_postfix_str(self, text, refresh=True):
        self.postfix.append(text)

    def close(self):
        self.closed = True


def fake_notebook(monkeypatch, widgets: bool = True) -> None:
    """A Jupyter kernel (IPython's ZMQ shell) and a tqdm whose tqdm.notebook makes FakeBars
    (with ipywidgets: its IProgress is set; without: None, as tqdm.notebook leaves it)."""
    shell = type("ZMQInteractiveShell", (), {})()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    tqdm = types.ModuleType("tqdm")
    notebook = types.ModuleType("tqdm.notebook")
    notebook.tqdm = FakeBar
    notebook.IProgress = object if widgets else None
    tqdm.notebook = notebook
    monkeypatch.setitem(sys.modules, "tqdm", tqdm)
    monkeypatch.setitem(sys.modules, "tqdm.notebook", notebook)


def test_one_bar_in_a_notebook(module, capsys, monkeypatch) -> None:
    """In a Jupyter kernel (IPython's ZMQ shell) the default is one tqdm.notebook bar."""
    fake_notebook(monkeypatch)
    FakeBar.made.clear()
    X, y = data(module)
    history = module.train(module.init_params(0), X, y, epochs=4, X_val=X[:8], Y_val=y[:8])
    assert len(FakeBar.made) == 1
    bar = FakeBar.made[0]
    assert bar.kwargs == {"total": 4, "unit": "epoch", "desc": "train", "mininterval": 0.1}
    assert bar.updates == 4 and bar.closed and len(bar.postfix) == 4
    assert bar.postfix[-1].startswith(f"loss {history['loss'][-1]:.6g}  val_loss ")
    assert capsys.readouterr() == ("", "")  # no line per epoch
    module.train(module.init_params(0), X, y, epochs=1, verbose=False)
    assert len(FakeBar.made) == 1  # verbose=False: no bar either


def test_demo_bar_in_a_notebook(monkeypatch) -> None:
    from symgrad.demo import _progress_bar

    fake_notebook(monkeypatch)
    FakeBar.made.clear()
    assert isinstance(_progress_bar(5), FakeBar) and FakeBar.made[0].kwargs["total"] == 5
    fake_notebook(monkeypatch, widgets=False)
    assert _progress_bar(5) is None  # train()'s own lines instead of a bar on stderr


NO_WIDGETS = """
import sys, types, warnings
warnings.simplefilter("error")  # tqdm's TqdmWarning (IProgress not found) fails the run
sys.modules["ipywidgets"] = None  # tqdm installed, ipywidgets not
shell = type("ZMQInteractiveShell", (), {})()
sys.modules["IPython"] = types.SimpleNamespace(get_ipython=lambda: shell)
import numpy as np
from symgrad.codegen import load_module
from symgrad.demo import _progress_bar
import tqdm
assert _progress_bar(20) is None
m = load_module(sys.argv[1])
rng = np.random.default_rng(0)
X, y = rng.standard_normal((40, m.INPUTS)), rng.integers(0, m.OUTPUTS, 40)
m.train(m.init_params(0), X, y, epochs=%d, X_val=X[:8], Y_val=y[:8])
"""


@pytest.mark.parametrize("epochs, shown", [(20, list(range(2, 21, 2))), (7, list(range(1, 8))),
                                           (25, [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25])])
def test_notebook_without_ipywidgets(epochs, shown) -> None:
    """tqdm without ipywidgets in a notebook: no widget is possible, and tqdm would warn and
    draw on stderr (pink); train() prints a line every max(1, epochs // 10) epochs and the
    last, on stdout, and nothing on stderr, with warnings as errors."""
    import subprocess

    run = subprocess.run([sys.executable, "-c", NO_WIDGETS % epochs,
                          str(ROOT / "generated" / "digits_mlp.py")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert [int(line.split()[1].split("/")[0]) for line in lines] == shown
    assert all(re.fullmatch(rf"epoch \d+/{epochs}  loss \S+  val_loss \S+  val_accuracy "
                            r"\d\.\d{4}", line) for line in lines), lines


# --------------------------------------------------------------------------
# Steps with their rules in LaTeX and Markdown; the picture's width
# --------------------------------------------------------------------------

GOLDEN = ROOT / "tests" / "golden"


@pytest.mark.parametrize("name, render", [("digits_steps.tex", lambda d: d.latex()),
                                          ("digits_steps.md", lambda d: d.markdown())])
def test_steps_with_rules_are_golden(name, render) -> None:
    """Every step is followed by the rule it applies, as the text form prints it."""
    import os

    out = render(symgrad.derive(DIGITS, steps=True))
    if os.environ.get("SYMGRAD_UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(out, encoding="utf-8")
    assert out == (GOLDEN / name).read_text(encoding="utf-8")
    rules = re.findall(r"^&\\qquad \\text\{by \} (.*?)(?: \\\\)?$", out, flags=re.M)
    assert len(rules) == 7 and rules[1] == (
        r"\text{C = A B: }\partial \text{L/}\partial \text{A = G B}^{\top}\text{, }\partial "
        r"\text{L/}\partial \text{B = A}^{\top}\text{ G}")
    assert "%" not in out.replace(r"\%", "")


def test_svg_fits_the_cell() -> None:
    from symgrad.picture import fit_width

    svg = '<?xml version="1.0"?>\n<svg width="963pt" height="529pt" viewBox="0 0 962 529">' \
          "<g><svg></svg></g></svg>"
    assert fit_width(svg) == ('<?xml version="1.0"?>\n<svg style="max-width:100%;height:auto" '
                              'width="963pt" height="529pt" viewBox="0 0 962 529"><g><svg></svg>'
                              "</g></svg>")
