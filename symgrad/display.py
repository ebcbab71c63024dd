"""display: how results show themselves in Jupyter — one place for every result class.

Every result a user gets (a :class:`~symgrad.verify.Verdict`, an expression-mode verdict,
a :class:`~symgrad.check.CheckReport`, the proof's report, a derivation) renders richly
through ``_repr_html_`` (and ``_repr_markdown_`` / ``_repr_latex_`` where they fit), built
from the helpers here, and keeps a one-line ``repr()`` (:func:`short_repr`):

* escaping: :func:`escape` (HTML), :func:`math_text` (free text inside LaTeX math, safe
  in MathJax and in a LaTeX document: no ``%``, no raw ``_``);
* :func:`formula_latex`: a formula in numpy syntax (``X.T @ dZ1``) as LaTeX
  (``X^{\\top} \\delta_{1}``), from its ``ast`` alone (no evaluation);
* :func:`badge` (a verdict coloured by its classes: ``symgrad-badge`` and one of
  ``symgrad-pass``, ``symgrad-fail``, ``symgrad-undecided``), :func:`table`, :func:`panel`,
  :func:`md_table`;

Math in HTML is delimited ``$$ … $$`` (display) and ``\\( … \\)`` (inline): Jupyter's
MathJax typesets both in HTML output, as nbconvert's page does.
"""

from __future__ import annotations

import ast
import html
import re
from collections.abc import Iterable, Sequence

from symgrad import naming

__all__ = [
    "badge",
    "escape",
    "formula_latex",
    "inline_math",
    "math_text",
    "md_table",
    "panel",
    "short_repr",
    "table",
]

REPR_LIMIT = 119  #: repr() of a result is one line shorter than this

STYLE = (
    "<style>"
    ".symgrad{font-family:system-ui,sans-serif;line-height:1.4;margin:.3em 0}"
    ".symgrad-title{font-weight:600;margin-bottom:.3em}"
    ".symgrad-badge{display:inline-block;padding:.05em .5em;border-radius:.6em;"
    "font-weight:700;color:#fff}"
    ".symgrad-pass{background:#1a7f37}.symgrad-fail{background:#cf222e}"
    ".symgrad-undecided{background:#9a6700}"
    ".symgrad-table{border-collapse:collapse;margin:.3em 0}"
    "table.symgrad-table th,table.symgrad-table td{border:1px solid #d0d7de;padding:.15em .5em;"
    "text-align:left}.symgrad-table td:nth-last-child(-n+2){white-space:nowrap}"
    ".symgrad-table td.symgrad-pass,.symgrad-table td.symgrad-fail{color:#fff;font-weight:700}"
    ".symgrad dt{font-weight:600}.symgrad dd{margin:0 0 .3em 1.5em}"
    "</style>"
)

KINDS = ("pass", "fail", "undecided")


# --------------------------------------------------------------------------
# Escaping
# --------------------------------------------------------------------------


def escape(text: object) -> str:
    """``text`` as HTML text (``<``, ``&``, quotes escaped)."""
    return html.escape(str(text), quote=True)


_MATH_CHARS = {
    "→": r"\to ", "∘": r"\circ ", "ŷ": r"\hat{y}", "Ŷ": r"\hat{Y}", "ℓ": r"\ell ",
    "λ": r"\lambda ", "δ": r"\delta ", "σ": r"\sigma ", "η": r"\eta ", "∂": r"\partial ",
    "⊙": r"\odot ", "ᵀ": r"^{\top}", "−": "-", "×": r"\times ", "≤": r"\le ", "≥": r"\ge ",
    "_": r"\_", "%": r"\%", "#": r"\#", "$": r"\$", "&": r"\&", "{": r"\{", "}": r"\}",
    "\\": r"\backslash ", "^": r"\wedge ", "~": r"\sim ", "·": r"\cdot ", "𝟏": r"\mathbf{1}",
    "′": "'",
}
#: the symbols of the layers beyond dense (``math_text(…, layers=True)``: their rules' notes;
#: the dense networks' notes keep the table above, byte for byte)
_LAYER_CHARS = {**_MATH_CHARS, "μ": r"\mu ", "ε": r"\varepsilon ", "γ": r"\gamma ",
                "β": r"\beta ", "²": "^{2}", "½": r"\tfrac{1}{2}", "…": r"\dots "}
_HAT = "\u0302"  # a combining circumflex: X̂ is X and this
_POWER = re.compile(r"\^\(([^()]*)\)")  # ^(−½): an exponent in brackets
_SUBSCRIPTS = str.maketrans("₀₁₂₃₄₅₆₇₈₉", "0123456789")


def math_text(text: str, layers: bool = False) -> str:
    """Free text as LaTeX *math* that MathJax and LaTeX both render as the text: runs of
    plain characters in ``\\text{…}``, specials (``_``, ``%``, ``→``, ``λ₂`` …) as math.
    ``layers``: also the symbols of the layers beyond dense (μ, σ², ε, X̂, ½, ^(…))."""
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            out.append(r"\text{" + "".join(run) + "}")
            run.clear()

    table = _LAYER_CHARS if layers else _MATH_CHARS
    pieces = _POWER.split(text) if layers else [text]  # ^(e) → ^{e}: one exponent
    if len(pieces) > 1:
        return "".join(math_text(p, True) if i % 2 == 0 else "^{" + math_text(p, True) + "}"
                       for i, p in enumerate(pieces) if p or i % 2)
    skip = -1
    for i, ch in enumerate(text):
        if layers and ch == _HAT or i == skip:
            continue
        if layers and ch == "_" and re.match(r"[a-z](?![A-Za-z0-9])", text[i + 1:]):
            flush()  # X̂_l, σ_l²: a layer's index l as a subscript
            out.append("_{" + text[i + 1] + "}")
            skip = i + 1
            continue
        if layers and i + 1 < len(text) and text[i + 1] == _HAT:
            flush()
            out.append(r"\hat{" + (table.get(ch, ch)).strip() + "}")
        elif ch in table:
            flush()
            out.append(table[ch])
        elif ch in "₀₁₂₃₄₅₆₇₈₉":
            flush()
            out.append("_{" + ch.translate(_SUBSCRIPTS) + "}")
        elif ch == "\n":
            run.append(" ")
        else:
            run.append(ch)
    flush()
    return "".join(out).strip()


def inline_math(latex: str) -> str:
    return r"\(" + latex + r"\)"


def short_repr(cls: str, *parts: str, limit: int = REPR_LIMIT) -> str:
    """``<cls part part …>`` on one line, at most ``limit`` characters (shortened with …)."""
    body = " ".join(" ".join(p.split()) for p in parts if p)
    text = f"<{cls} {body}>" if body else f"<{cls}>"
    if len(text) > limit:
        text = text[: limit - 2] + "…>"
    return text


# --------------------------------------------------------------------------
# Numpy syntax as LaTeX
# --------------------------------------------------------------------------

ADD, MUL, MATMUL, UNARY, POW, ATOM = 10, 20, 30, 40, 50, 100

_FUNCTIONS = {
    "exp": r"\exp", "log": r"\log", "tanh": r"\tanh", "sin": r"\sin", "cos": r"\cos",
    "tan": r"\tan", "sinh": r"\sinh", "cosh": r"\cosh", "arctan": r"\arctan",
    "sigmoid": r"\sigma", "sign": r"\operatorname{sign}", "log1p": r"\operatorname{log1p}",
    "erf": r"\operatorname{erf}", "maximum": r"\max", "minimum": r"\min",
    "softmax": r"\operatorname{softmax}", "relu": r"\operatorname{relu}",
    "heaviside": r"\operatorname{H}", "where": r"\operatorname{where}",
    "diag": r"\operatorname{diag}", "trace": r"\operatorname{tr}",
}
_SCALAR_NAMES = {"N", "pi", "e"}


def formula_latex(source: str) -> str:
    """A formula in numpy syntax as LaTeX: ``@`` as juxtaposition, ``*`` as ⊙ (or a
    scalar product), ``.T`` as ᵀ, ``sum(x, axis=0)`` as 𝟏ᵀ x, names by
    :func:`symgrad.naming.latex` (``dZ1`` → δ₁).  Only parsed, never evaluated; what it
    does not know is shown as text."""
    text = " ".join(str(source).split())
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return math_text(text)
    try:
        return _Latex().show(tree.body)[0]
    except RecursionError:
        return math_text(text)


class _Latex:
    def show(self, node: ast.AST) -> tuple[str, int]:
        method = getattr(self, "_" + type(node).__name__, None)
        if method is None:
            return math_text(ast.unparse(node)), ATOM
        return method(node)

    def paren(self, node: ast.AST, at_least: int) -> str:
        s, p = self.show(node)
        return rf"\left({s}\right)" if p < at_least else s

    def factor(self, node: ast.AST, at_least: int) -> str:
        """An operand of ⊙: bracketed below ``at_least``, and also when it is a product
        shown by juxtaposition (``A @ B``, ``c X``, ``𝟏ᵀ x``) — in Python ``@`` and ``*``
        bind equally, left to right, and a reader of ``δ₂ W₂ᵀ ⊙ Y`` cannot know which
        is meant, so ``(dZ2 @ W2.T) * Y`` shows as ``(δ₂ W₂ᵀ) ⊙ Y``."""
        s, p = self.show(node)
        return rf"\left({s}\right)" if p < at_least or p == MATMUL else s

    def scalar(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Name):
            return node.id in _SCALAR_NAMES
        if isinstance(node, ast.UnaryOp):
            return self.scalar(node.operand)
        if isinstance(node, ast.BinOp) and not isinstance(node.op, ast.MatMult):
            return self.scalar(node.left) and self.scalar(node.right)
        return False

    def _Name(self, node: ast.Name):
        if node.id == "pi":
            return r"\pi", ATOM
        return naming.latex(node.id) if re.fullmatch(r"[A-Za-z]+\d*", node.id) else \
            math_text(node.id), ATOM

    def _Constant(self, node: ast.Constant):
        v = node.value
        if isinstance(v, float):
            s = repr(v)
            if "e" in s:
                m, e = s.split("e")
                return rf"{m} \cdot 10^{{{int(e)}}}", MUL
            return s, ATOM
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v), ATOM
        return math_text(str(v)), ATOM

    def _UnaryOp(self, node: ast.UnaryOp):
        if isinstance(node.op, ast.USub):
            return "-" + self.paren(node.operand, MUL), UNARY
        if isinstance(node.op, ast.UAdd):
            return self.show(node.operand)
        return math_text(ast.unparse(node)), ATOM

    def _BinOp(self, node: ast.BinOp):
        op, a, b = node.op, node.left, node.right
        if isinstance(op, (ast.Add, ast.Sub)):
            left = self.paren(a, ADD)
            right = self.paren(b, ADD + 1 if isinstance(op, ast.Sub) else ADD)
            return f"{left} {'+' if isinstance(op, ast.Add) else '-'} {right}", ADD
        if isinstance(op, ast.MatMult):
            return rf"{self.paren(a, MATMUL)} {self.paren(b, MATMUL + 1)}", MATMUL
        if isinstance(op, ast.Mult):
            if self.scalar(a) and not self.scalar(b):  # c X: a product like X W
                return rf"{self.paren(a, POW)} {self.paren(b, MATMUL)}", MATMUL
            if self.scalar(b) and not self.scalar(a):
                return rf"{self.paren(a, MATMUL)} \cdot {self.paren(b, POW)}", MATMUL
            sign = r"\cdot" if self.scalar(a) else r"\odot"
            return rf"{self.factor(a, MUL)} {sign} {self.factor(b, MUL + 1)}", MUL
        if isinstance(op, ast.Div):
            return rf"\frac{{{self.show(a)[0]}}}{{{self.show(b)[0]}}}", ATOM
        if isinstance(op, ast.Pow):
            return rf"{{{self.paren(a, ATOM)}}}^{{{self.show(b)[0]}}}", POW
        return math_text(ast.unparse(node)), ATOM

    def _Compare(self, node: ast.Compare):
        ops = {ast.Gt: ">", ast.Lt: "<", ast.GtE: r"\ge", ast.LtE: r"\le", ast.Eq: "=",
               ast.NotEq: r"\ne"}
        out = self.paren(node.left, ADD + 1)
        for op, right in zip(node.ops, node.comparators, strict=True):
            out += f" {ops.get(type(op), '?')} {self.paren(right, ADD + 1)}"
        return out, ADD - 1

    def _Attribute(self, node: ast.Attribute):
        if node.attr == "T":
            return self.paren(node.value, ATOM) + r"^{\top}", POW
        return math_text(ast.unparse(node)), ATOM

    def _Call(self, node: ast.Call):
        f = node.func
        args = list(node.args)
        if isinstance(f, ast.Attribute) and not (isinstance(f.value, ast.Name)
                                                 and f.value.id in ("np", "numpy")):
            args.insert(0, f.value)  # x.sum(axis=0): a method
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        axis = next((k.value for k in node.keywords if k.arg == "axis"), None)
        if axis is None and name in ("sum", "mean") and len(args) > 1:
            axis = args.pop(1)
        axis = axis.value if isinstance(axis, ast.Constant) else axis
        if name == "sum" and len(args) == 1:
            x = args[0]
            if axis == 0:
                return rf"\mathbf{{1}}^{{\top}} {self.paren(x, MATMUL + 1)}", MATMUL
            if axis in (1, -1):
                return rf"{self.paren(x, MATMUL)} \mathbf{{1}}", MATMUL
            return rf"\sum {self.paren(x, ATOM)}", UNARY
        if name == "mean" and len(args) == 1:
            sub = "" if axis is None else f"_{{{math_text(ast.unparse(axis)) if isinstance(axis, ast.AST) else axis}}}"
            return rf"\operatorname{{mean}}{sub}\left({self.show(args[0])[0]}\right)", ATOM
        if name == "sqrt" and len(args) == 1:
            return rf"\sqrt{{{self.show(args[0])[0]}}}", ATOM
        if name in ("abs", "absolute") and len(args) == 1:
            return rf"\left|{self.show(args[0])[0]}\right|", ATOM
        if name == "transpose" and len(args) == 1:
            return self.paren(args[0], ATOM) + r"^{\top}", POW
        if name in ("dot", "matmul") and len(args) == 2:
            return rf"{self.paren(args[0], MATMUL)} {self.paren(args[1], MATMUL + 1)}", MATMUL
        if name in ("ones_like",) and len(args) == 1:
            return r"\mathbf{1}", ATOM
        shown = _FUNCTIONS.get(name, rf"\operatorname{{{math_text(name)}}}" if name else "")
        inner = ", ".join(self.show(a)[0] for a in args)
        return rf"{shown}\left({inner}\right)", ATOM


# --------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------


def badge(kind: str, label: str) -> str:
    """The verdict, coloured by its class ``symgrad-<kind>`` (pass, fail, undecided)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    return f'<span class="symgrad-badge symgrad-{kind}">{escape(label)}</span>'


def table(header: Sequence[str], rows: Iterable[Sequence[str]],
          marks: Sequence[str | None] | None = None, *, last_is_mark: bool = True) -> str:
    """An HTML table of escaped text; ``marks[i]`` (a kind or None) colours row i's last
    cell (its pass/fail) when ``last_is_mark``."""
    rows = [list(r) for r in rows]
    marks = list(marks) if marks is not None else [None] * len(rows)
    out = ['<table class="symgrad-table">', "<thead><tr>"]
    out += [f"<th>{escape(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for row, mark in zip(rows, marks, strict=True):
        cells = []
        for i, cell in enumerate(row):
            cls = f' class="symgrad-{mark}"' if mark and last_is_mark and i == len(row) - 1 else ""
            cells.append(f"<td{cls}>{escape(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def panel(kind: str, title_html: str, *body: str, what: str = "") -> str:
    """The frame of a result: ``<div class="symgrad symgrad-<what>">`` with the style,
    a title line and the body pieces (HTML)."""
    cls = f"symgrad symgrad-{what}" if what else "symgrad"
    return (f'{STYLE}<div class="{cls}" data-verdict="{kind}">'
            f'<div class="symgrad-title">{title_html}</div>' + "".join(body) + "</div>")


def definitions(items: Iterable[tuple[str, str]]) -> str:
    """A ``<dl>`` of (term text, HTML definition) pairs."""
    out = ["<dl>"]
    for term, value in items:
        out.append(f"<dt>{escape(term)}</dt><dd>{value}</dd>")
    out.append("</dl>")
    return "".join(out)


def md_escape(text: object) -> str:
    """Text for a Markdown table cell or paragraph: ``\\``, backticks, ``*``, ``_``, ``|``
    escaped, ``<`` and ``&`` as entities (brackets stay: ``\\[`` would open math)."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;")
    return re.sub(r"([\\`*_|])", r"\\\1", text)


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |",
             "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Graded worksheets (symgrad.exercise)
# --------------------------------------------------------------------------

_GRADE_KINDS = {"right": "pass", "wrong": "fail", "invalid": "fail", "circular": "fail",
                "blank": "undecided"}


def _result_kind(r) -> str:
    return _GRADE_KINDS.get(r.status, "fail")


def grade_repr(g) -> str:
    """``<Grade bob: 3/4 q1 right, q2 WRONG …>``: the score first, on one line."""
    marks = ", ".join(f"{r.question.id} {'right' if r.right else r.status}" for r in g.results)
    return short_repr("Grade", f"{g.student}:", f"{g.score}/{g.total}", marks)


def grade_html(g, reveal: bool = False) -> str:
    """One student's grade: the score badge, then a table with a row per question
    (question, the answer as typed and as LaTeX, a verdict badge, the feedback)."""
    kind = "pass" if g.ok else "fail"
    title = (f"{badge(kind, f'{g.score}/{g.total}')} {escape(g.student)} "
             f"<code>{escape(g.source)}</code>")
    rows = []
    for r in g.results:
        answer = (f"$${formula_latex(r.answer)}$$<br><code>{escape(r.answer.strip())}</code>"
                  if r.answer.strip() else "—")
        feedback = "<br>".join(escape(" ".join(line.split()))
                               for line in r.lines(reveal) if not line.startswith("yours:"))
        rows.append(f"<tr><td>{escape(r.question.id)}</td><td>{escape(r.question.text)}</td>"
                    f"<td>{answer}</td><td>{badge(_result_kind(r), r.label)}</td>"
                    f'<td style="white-space:normal">{feedback}</td></tr>')
    head = "".join(f"<th>{h}</th>" for h in ("", "question", "yours", "verdict", "feedback"))
    body = (f'<table class="symgrad-table symgrad-grade"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
            f"<p><strong>score: {g.score}/{g.total}</strong></p>")
    return panel(kind, title, body, what="grade")


def grade_markdown(g, reveal: bool = False) -> str:
    out = [f"**{g.score}/{g.total}** — {md_escape(g.student)} ({md_escape(g.source)})", "",
           "| | question | yours | verdict | feedback |", "|---|---|---|---|---|"]
    for r in g.results:
        answer = f"`{r.answer.strip()}`".replace("|", "\\|") if r.answer.strip() else "—"
        feedback = "<br>".join(md_escape(" ".join(line.split()))
                               for line in r.lines(reveal) if not line.startswith("yours:"))
        out.append(f"| {md_escape(r.question.id)} | {md_escape(r.question.text)} | "
                   f"{answer} | **{md_escape(r.label)}** | {feedback} |")
    out += ["", f"**score: {g.score}/{g.total}**"]
    return "\n".join(out) + "\n"


def class_repr(c) -> str:
    scores = " ".join(f"{g.student} {g.score}/{g.total}" for g in c.grades)
    extra = f"{len(c.unreadable)} unreadable" if c.unreadable else ""
    return short_repr("ClassGrades", f"{len(c.grades)} graded:", extra, scores)


def class_html(c) -> str:
    """A class's grades: a row per student (a badge per question, the score), then the
    files that could not be read."""
    ids = [q.id for q in c.sheet.questions]
    head = "".join(f"<th>{escape(h)}</th>" for h in ("student", *ids, "score"))
    rows = []
    for g in c.grades:
        cells = "".join(f"<td>{badge(_result_kind(r), r.label.replace('WRONG', 'wrong'))}</td>"
                        for r in g.results)
        score = badge("pass" if g.ok else "fail", f"{g.score}/{g.total}")
        rows.append(f"<tr><td>{escape(g.student)}</td>{cells}<td>{score}</td></tr>")
    for name, _why in c.unreadable:
        rows.append(f"<tr><td>{escape(name)}</td>" + "<td>—</td>" * len(ids)
                    + "<td>unreadable</td></tr>")
    kind = "pass" if c.ok else "fail"
    right = sum(g.ok for g in c.grades)
    title = f"{badge(kind, f'{right}/{len(c.grades)} all right')} class grades"
    body = [f'<table class="symgrad-table symgrad-class"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"]
    scores = [g.score for g in c.grades]
    if scores:
        body.append(f"<p>{len(scores)} graded, mean score {sum(scores) / len(scores):.2g} of "
                    f"{len(ids)}; all right: {right}</p>")
    body += [f"<p>{escape(name)} could not be read: {escape(why)}</p>"
             for name, why in c.unreadable]
    return panel(kind, title, *body, what="class")
