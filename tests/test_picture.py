"""symgrad graph: the picture of the forward and backward pass (symgrad.picture).

Golden DOT files (tests/golden/graph/) are compared whole; regenerate them with
SYMGRAD_UPDATE_GOLDEN=1 and look at the diff."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from symgrad.cli import main
from symgrad.derive import derive
from symgrad.files import content_digest
from symgrad.ops import add
from symgrad.picture import Picture, draw, draw_expr, marked, picture_ownership, sweep
from symgrad.printing import text
from symgrad.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden") / "graph"
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.toml"))
EXPRS = {
    "quadratic": ("x.T @ A @ x", ["x=n,1", "A=n,n"], "x"),
    "logistic": ("sum(log(1 + exp(-y * (X @ w)))) / N", ["X=N,d", "w=d,1", "y=N,1"], "w"),
    "ridge": ("sum((X @ W - Y)**2)/2 + lam*sum(W*W)/2", ["X=N,d", "W=d,k", "Y=N,k", "lam=1,1"],
              "W"),
}


def _golden(name: str, source: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SYMGRAD_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(source, encoding="utf-8")
    assert source == path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pictures():
    out = {}
    for name in EXAMPLES:
        spec = load_spec(ROOT / "examples" / f"{name}.toml")
        out[name] = (draw(spec), draw(spec, backward=True))
    return out


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_golden_dot_examples(pictures, name, backward):
    _golden(f"{name}{'_backward' if backward else ''}.dot", pictures[name][backward].source)


@pytest.mark.parametrize("name", sorted(EXPRS))
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_golden_dot_expressions(name, backward):
    expr, shapes, wrt = EXPRS[name]
    _golden(f"expr_{name}{'_backward' if backward else ''}.dot",
            draw_expr(expr, shapes, wrt, backward=backward).source)


def test_dot_is_deterministic_and_has_no_addresses(pictures):
    again = draw(ROOT / "examples" / "multilabel.toml", backward=True).source
    assert again == pictures["multilabel"][True].source
    assert not re.search(r"0x[0-9a-f]{6,}", again)


def _edges_into(source: str, node: str) -> list[str]:
    return re.findall(rf"^\s*(\S+) -> {re.escape(node)} \[label=", source, re.M)


def test_backward_shows_the_penalty_fan_out_sum(pictures):
    """W₁ feeds Z₁ and the L2 penalty: its two parts meet in a + node, then ∂L/∂W₁."""
    src = pictures["multilabel"][True].source
    assert 's_W1 [label="+"' in src
    assert _edges_into(src, "s_W1") == ["g_Z1", "g_L"]
    assert re.search(r"g_Z1 -> s_W1 \[label=\"Xᵀ δ₁\\nC = A B: ∂L/∂B = Aᵀ G\"", src)
    assert "s_W1 -> g_W1" in src
    assert 'g_W1 [label="∂L/∂W₁ = Xᵀ δ₁ + λ₂ W₁\\n20 × 32"' in src
    # no penalty, no fan-out: one edge straight into ∂L/∂W₁
    digits = pictures["digits"][True].source
    assert "s_W1" not in digits and _edges_into(digits, "g_W1") == ["g_Z1"]


def test_backward_expression_variable_used_twice():
    """x appears twice in xᵀ A x: two parts, one + node."""
    src = draw_expr(*EXPRS["quadratic"], backward=True).source
    assert _edges_into(src, "s_x") == ['"g_%f"', '"g_%u1"']
    assert "g_x [label=\"∂f/∂x = A \u016b₁ᵀ + u₁ᵀ\\nn × 1\"" in src


def test_fusion_skips_yhat_and_says_so(pictures):
    src = pictures["digits"][True].source
    assert "g_Yhat" not in src
    assert 'xlabel="∂L/∂Ŷ: skipped (softmax∘cross-entropy)"' in src
    assert 'g_Z2 [label="δ₂ = ∂L/∂Z₂ = (Ŷ − Y)/N\\nN × 10"' in src


@pytest.mark.parametrize("name", EXAMPLES)
def test_parts_sum_to_the_derivation(name):
    """The parts drawn into each cotangent add up to the formula derive's sweep found."""
    d = derive(load_spec(ROOT / "examples" / f"{name}.toml"))
    parts, _ = sweep(d.graph)
    derived = {eq.target.name[1:]: eq.rhs for eq in d.steps}
    assert set(derived) <= set(parts)
    for primal, rhs in derived.items():
        assert text(add([p.value for p in parts[primal]])) == text(rhs), primal


def test_forward_nodes_shapes_and_formulas(pictures):
    src = pictures["regression"][False].source
    for line in ('v_X [label="X\\nN × 8"', 'v_W1 [label="W₁\\n8 × 16"',
                 'v_Z1 [label="Z₁ = X W₁ + b₁\\nN × 16"', 'v_A1 [label="A₁ = tanh(Z₁)\\nN × 16"',
                 'v_Yhat [label="Ŷ = Z₂\\nN × 1"'):
        assert line in src
    assert "g_" not in src  # forward only


def test_picture_repr_and_svg(pictures):
    pic = pictures["digits"][True]
    assert isinstance(pic, Picture)
    assert repr(pic).startswith("<symgrad picture of digits_mlp: backward pass (forward and "
                                "backward): ")
    assert len(repr(pic)) < 120
    svg = pic._repr_svg_()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "δ₂ = ∂L/∂Z₂" in svg


def test_cli_stdout_and_files(tmp_path, capsys):
    spec = str(ROOT / "examples" / "custom.toml")
    assert main(["graph", spec, "--backward"]) == 0
    assert capsys.readouterr().out == (GOLDEN / "custom_backward.dot").read_text(encoding="utf-8")
    dot = tmp_path / "g.dot"
    assert main(["graph", spec, "-o", str(dot)]) == 0
    first, body = dot.read_text(encoding="utf-8").split("\n", 1)
    assert body == (GOLDEN / "custom.dot").read_text(encoding="utf-8")
    assert first == f"// symgrad graph; sha256 {content_digest(body.encode())}; replaced by " \
        "symgrad graph unless edited"
    png = tmp_path / "g.png"
    assert main(["graph", spec, "--backward", "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["graph", spec, "-o", str(png)]) == 0  # symgrad's own picture is replaced
    svg = tmp_path / "g.svg"
    assert main(["graph", "--expr", "x.T @ A @ x", "--shape", "x=n,1", "--shape", "A=n,n",
                 "--wrt", "x", "-o", str(svg)]) == 0
    assert "<svg" in svg.read_text(encoding="utf-8")


@pytest.mark.parametrize("argv, message", [
    (["graph"], "symgrad: error: graph: give a SPEC or --expr EXPR"),
    (["graph", "examples/digits.toml", "--expr", "sum(x)"],
     "symgrad: error: graph: give either a SPEC or --expr, not both"),
    (["graph", "examples/digits.toml", "--wrt", "x"],
     "symgrad: error: graph: --shape and --wrt go with --expr"),
    (["graph", "examples/digits.toml", "-o", "g.jpg"],
     "symgrad: error: graph: -o: the picture's format comes from the extension: give a name "
     "ending in .svg, .png or .dot"),
    (["graph", "--expr", "sum(x)", "--shape", "x=n,1"],
     "symgrad: error: --wrt: name the variable(s) to differentiate, e.g. --wrt w"),
])
def test_cli_errors(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == message


def _png_chunks(data: bytes):
    """(type, data, CRC ok) of each chunk of a PNG."""
    import zlib

    at, out = 8, []
    while at < len(data):
        n = int.from_bytes(data[at:at + 4], "big")
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + n]
        crc = int.from_bytes(data[at + 8 + n:at + 12 + n], "big")
        out.append((kind, body, zlib.crc32(kind + body) == crc))
        at += 12 + n
    return out


def test_pictures_carry_a_mark_and_are_replaced_only_unedited(tmp_path, capsys) -> None:
    """graph -o writes like every writer (the mark records the hash of the rest): its own
    unedited picture is replaced; an edited one, or a user's file, is kept unless --force;
    the SPEC drawn never, --force or not (it was replaced, exit 0)."""
    spec = str(ROOT / "examples" / "custom.toml")
    for suffix in (".dot", ".svg", ".png"):
        out = tmp_path / f"g{suffix}"
        assert main(["graph", spec, "-o", str(out)]) == 0
        assert picture_ownership(out) is None
        assert main(["graph", spec, "--backward", "-o", str(out)]) == 0  # its own: replaced
        assert picture_ownership(out) is None
        data = out.read_bytes()
        out.write_bytes(data.replace(b"digraph" if suffix == ".dot" else b"IDAT", b"XXXXX", 1)
                        if suffix != ".svg" else data.replace(b"<svg", b"<svg id='x'", 1))
        edited = out.read_bytes()
        capsys.readouterr()
        assert main(["graph", spec, "-o", str(out)]) == 2
        assert capsys.readouterr().err == (f"symgrad: error: {out}: was edited after symgrad "
                                           "graph wrote it; use --force to overwrite, or -o "
                                           "elsewhere\n")
        assert out.read_bytes() == edited
        user = tmp_path / f"mine{suffix}"
        user.write_text("user\n", encoding="utf-8")
        assert main(["graph", spec, "-o", str(user)]) == 2
        assert capsys.readouterr().err == (f"symgrad: error: {user}: exists and was not "
                                           "written by symgrad graph; use --force to "
                                           "overwrite\n")
        assert user.read_text(encoding="utf-8") == "user\n"
        assert main(["graph", spec, "-o", str(user), "--force"]) == 0
        assert picture_ownership(user) is None
        capsys.readouterr()
    chunks = _png_chunks((tmp_path / "mine.png").read_bytes())
    assert [c[0] for c in chunks[:2]] == [b"IHDR", b"tEXt"] and all(c[2] for c in chunks)
    assert chunks[1][1].startswith(b"symgrad\0symgrad graph; sha256 ")
    svg = (tmp_path / "mine.svg").read_text(encoding="utf-8").splitlines()
    assert svg[0].startswith("<?xml") and svg[1].startswith("<!-- symgrad graph; sha256 ")
    own = tmp_path / "spec.dot"
    shutil.copyfile(spec, own)
    (tmp_path / "link.svg").symlink_to(own)
    for target in (own, tmp_path / "link.svg"):
        assert main(["graph", str(own), "-o", str(target), "--force"]) == 2
        assert capsys.readouterr().err == (
            f"symgrad: error: {target}: is the same file as the input {own}; a command never "
            "writes over its own input, even with --force: give another file\n")
    assert own.read_bytes() == Path(spec).read_bytes()


def test_marked_dot_and_svg_still_render() -> None:
    """The mark is a comment each format ignores: dot reads marked DOT; SVG keeps its XML
    declaration first."""
    from symgrad.picture import render

    pic = draw(str(ROOT / "examples" / "custom.toml"))
    source = marked(pic.source.encode(), "dot").decode()
    assert render(source, "svg") == pic.render("svg")


def test_missing_dot_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["graph", str(ROOT / "examples" / "digits.toml"), "-o",
                 str(tmp_path / "g.svg")]) == 2
    assert capsys.readouterr().err.strip() == (
        "symgrad: error: graph: rendering .svg or .png needs Graphviz's dot program, which is "
        "not installed (Debian/Ubuntu: apt-get install graphviz); -o FILE.dot needs nothing")
    assert not (tmp_path / "g.svg").exists()
    assert main(["graph", str(ROOT / "examples" / "digits.toml"), "-o",
                 str(tmp_path / "g.dot")]) == 0
