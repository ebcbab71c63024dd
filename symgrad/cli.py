"""The ``symgrad`` command line, and its error contract.

Each subcommand is a small function taking the parsed arguments and returning an exit
code. :func:`main` holds the contract for all of them:

* 0 success; 1 a check or verification failed;
* 2 bad input (spec, expression, file, argument) — one line
  ``symgrad: error: <where>: <what>``, never a traceback; running out of the command's
  time or memory budget is reported the same way;
* 3 a bug of ours — one line ``symgrad: internal error: <Type>: <message> (please
  report; SYMGRAD_DEBUG=1 shows the traceback)``.

Status lines ("symgrad: wrote …") go to stderr, data (formulas, tables, a module written
to ``-o -``) to stdout. Output that cannot encode Unicode (``PYTHONIOENCODING=cp1252``, a
Windows console) gets ASCII forms (δ₁ → d1, ⊙ → *, ᵀ → ^T) instead of an encoding error.
"""

from __future__ import annotations

import argparse
import codecs
import difflib
import os
import re
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

from symgrad import __version__
from symgrad.commands import COMMANDS, command
from symgrad.errors import SymgradError

__all__ = ["main", "build_parser"]

DESCRIPTION = ("Derive backpropagation formulas symbolically, generate a numpy training "
               "module, and check gradients (including ones derived by hand).")
EPILOG = ("exit status: 0 success; 1 a check or verification failed; 2 bad input, one line "
          "'symgrad: error: WHERE: WHAT'; 3 an internal error, one line (SYMGRAD_DEBUG=1 "
          "shows the traceback). Run 'symgrad COMMAND --help' for the options of a command.")


# ==========================================================================================
# argparse, following the one-line convention
# ==========================================================================================


def _where(prog: str) -> str:
    """``symgrad derive`` → ``derive``; the top-level parser → ``command line``."""
    sub = prog.split(" ", 1)[1] if " " in prog else ""
    return sub or "command line"


def _suggest(value: str, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line ``symgrad: error: <where>: <what>`` (exit 2),
    with a "did you mean" where one fits, and no abbreviated options."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401
        m = re.match(r"argument (?P<arg>[^:]+): (?P<what>.*)\Z", message, re.S)
        if m:
            raise SymgradError(f"{_where(self.prog)}: {m['arg']}".replace("command line: ", ""),
                               m["what"])
        m = re.match(r"unrecognized arguments: (?P<args>.*)\Z", message, re.S)
        if m:
            raise self._unrecognized(m["args"].split())
        raise SymgradError(_where(self.prog), message)

    def _check_value(self, action, value):
        if action.choices is None or value in action.choices:
            return
        choices = list(action.choices)
        hint = _suggest(value, choices)
        if isinstance(action, argparse._SubParsersAction):
            raise SymgradError(str(value), f"not a command{hint}; the commands are "
                               f"{', '.join(choices)} (symgrad --help)")
        name = "/".join(action.option_strings) or action.metavar or action.dest
        where = f"{_where(self.prog)}: {name}".replace("command line: ", "")
        raise SymgradError(where, f"invalid choice {value!r}{hint}; choose from "
                           f"{', '.join(map(str, choices))}")

    def _unrecognized(self, extras: list[str]) -> SymgradError:
        first = extras[0]
        hint = _suggest(first.split("=", 1)[0], self._option_string_actions) if (
            first.startswith("-")) else ""
        what = "unrecognized argument" + ("s " if len(extras) > 1 else " ") + " ".join(extras)
        return SymgradError(_where(self.prog), f"{what}{hint}")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and " " in self.prog and not getattr(self, "_mixing", False):
            raise self._unrecognized(extras)  # a subcommand's own options are known
        return namespace, extras


class _IntermixedParser(_Parser):
    """Positionals on both sides of options (``verify SPEC --wrt W1 FORMULA``)."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        # a formula may start with a minus (-np.linalg.inv(X).T, -2*X): any "-…" that is not
        # one of the options is a positional, as argparse does for negative numbers
        self._negative_number_matcher = re.compile(r"^-(?!-)")
        if self._mixing:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False
        if extras:
            raise self._unrecognized(extras)
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="symgrad", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("-V", "--version", action="version", version=f"symgrad {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                           help="the command to run ('symgrad COMMAND --help' for its options)")

    d = sub.add_parser("derive", help="print the backpropagation formulas of a network",
                       description="Print the forward equations, the backward chain "
                       "(δ_L, each ∂L/∂W_l, ∂L/∂b_l, δ_(l-1)) and the gradient-descent update "
                       "of a network spec, or the gradient of an expression (--expr).")
    d.add_argument("spec", nargs="?", help="network spec (TOML)")
    d.add_argument("--format", choices=("text", "latex", "markdown"), default="text",
                   help="output format (default: text)")
    d.add_argument("--steps", action="store_true",
                   help="show each chain-rule step and the scalar derivatives SymPy found")
    d.add_argument("--prove", action="store_true",
                   help="also prove the formulas by scalar expansion on a tiny instance")
    d.add_argument("--hvp", action="store_true",
                   help="print the Hessian-vector product H V (forward-over-reverse) instead")
    d.add_argument("--gnvp", action="store_true",
                   help="print the Gauss–Newton product Jᵀ H_ℓ J V instead")
    d.add_argument("--hessian", action="store_true",
                   help="with --expr: the Hessian (∇²f where x is a vector, else the map "
                   "V ↦ ∇²f[V]) instead of the gradient")

    g = sub.add_parser("generate", help="write a numpy training module",
                       description="Write a standalone numpy module for a network spec (or "
                       "an expression, --expr). An existing file is replaced only when "
                       "symgrad wrote it and it was not edited since, or with --force.")
    g.add_argument("spec", nargs="?", help="network spec (TOML)")
    g.add_argument("-o", "--output", metavar="PATH", type=_output_path,
                   help="output file (default: generated/<name>.py; '-' for standard output)")
    g.add_argument("--force", action="store_true",
                   help="overwrite a file that symgrad did not write, or that was edited")
    g.add_argument("--backend", metavar="NAME",
                   help="the module's array library: numpy (default), torch or jax; overrides "
                   "[training] backend")
    g.add_argument("--hessian", action="store_true",
                   help="with --expr: also hvp(..., v) and, for a vector variable, hessian(...)")
    g.add_argument("--hvp", action="store_true",
                   help="a network's module also has hvp(params, X, Y, V) and gnvp(params, X, "
                   "Y, V), and train() newton_cg and lbfgs unless batchnorm or dropout make "
                   "the loss vary (always with optimizer newton_cg or lbfgs)")

    c = sub.add_parser("check", help="gradient check of a spec or a generated module",
                       description="Compare a module's loss_and_grad with differences of its "
                       "own loss (float64, random data) and print a table; exit 1 on a "
                       "failure.")
    c.add_argument("target", help="SPEC.toml or MODULE.py")
    c.add_argument("--method", choices=("central", "complex", "directional", "taylor"),
                   default="central", help="how to differentiate numerically "
                   "(default: central)")
    c.add_argument("--tol", type=float, default=None,
                   help="max relative error allowed (taylor: the minimum observed order)")
    c.add_argument("--seed", type=int, default=0,
                   help="seed of the random parameters and data (default: 0)")
    c.add_argument("--hvp", action="store_true",
                   help="check hvp and gnvp against central differences of loss_and_grad "
                   "along a random direction (a SPEC's module is generated with them)")
    c.add_argument("--directions", type=int, default=8,
                   help="directional: how many random directions per parameter (default: 8)")
    c.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="seconds the module's process may take for the whole check, for a "
                   "MODULE.py or the module generated from a SPEC (default: 120, at most 86400); "
                   "past it the check fails")

    v = sub.add_parser("verify", help="verify a gradient derived by hand",
                       description="Check a gradient you derived, written in numpy syntax, "
                       "numerically on random instances and symbolically on a tiny one; "
                       "exit 1 when it is wrong, with a diagnosis and the correct formula.")
    v.__class__ = _IntermixedParser
    v.add_argument("spec", nargs="?", help="network spec (TOML)")
    v.add_argument("--wrt", required=True, action=_OneName, metavar="NAME",
                   help="the one name your formula is the gradient for: W1, b2, Z1, A1, … "
                   "(or x with --expr)")
    v.add_argument("--expr", help="scalar mode: a function of the --wrt variable; with --shape, "
                   "a matrix expression")
    _expr_options(v, wrt=False)
    v.add_argument("--seed", type=int, default=0,
                   help="seed of the random instances (default: 0)")
    v.add_argument("--hvp", action="store_true",
                   help="the formula is the --wrt parameter's component of the Hessian-vector "
                   "product H V, over verify's names and V_W1, V_b1, … (the direction) and "
                   "Zdot1, Adot1, …, Yhatdot (the forward tangents along V)")
    v.add_argument("--gnvp", action="store_true",
                   help="the same for the Gauss–Newton product G V = Jᵀ H_ℓ J V")
    v.add_argument("formula", help="your gradient, in numpy syntax; on images also P1 "
                   "(= im2col(X, 1)), arg2, im2col(A, l), col2im(D, l), route(D, l), "
                   "spread(D, l), unflatten(D, l), hwio(D, l), … (README: Convolutional "
                   "networks)")

    _expr_options(d)
    _expr_options(g)

    gr = sub.add_parser("graph", help="draw the computational graph (and the backward pass)",
                        description="Draw a network's computational graph as lectures do: "
                        "each forward value (X, Z_l, A_l, Ŷ, L) with its formula and shape; "
                        "with --backward the cotangents (δ's), the rule on each edge and a + "
                        "where a value feeds two consumers. DOT needs no program; .svg and "
                        ".png are rendered by Graphviz's dot (apt-get install graphviz).")
    gr.add_argument("spec", nargs="?", help="network spec (TOML)")
    gr.add_argument("-o", "--output", metavar="FILE", type=_output_path,
                    help="write the picture to FILE.svg, FILE.png or FILE.dot (default: DOT on "
                    "standard output); a picture symgrad graph wrote is replaced, any other "
                    "file kept unless --force")
    gr.add_argument("--backward", action="store_true",
                    help="also draw the backward pass: each cotangent, the rule on each edge, "
                    "the fan-out sums")
    gr.add_argument("--force", action="store_true",
                    help="overwrite a file that symgrad graph did not write, or that was edited "
                    "(never the SPEC itself)")
    _expr_options(gr, assume=False)

    m = sub.add_parser("demo", help="the whole mission on the digits data set",
                       description="Derive, generate, check and train a network on the "
                       "embedded UCI digits; write the module, a plot and a report into "
                       "--out (files there that symgrad did not write are kept unless "
                       "--force).")
    m.add_argument("--out", default="demo-out", metavar="DIR",
                   help="directory for the module, the plot and the report (default: demo-out)")
    m.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the spec's, 100)")
    m.add_argument("--force", action="store_true",
                   help="overwrite files in DIR that symgrad did not write, or that were edited")

    ex = sub.add_parser("exercise", help="write a backpropagation worksheet and its answer key",
                        description="Write a worksheet of K questions (derive ∂L/∂W_l, δ_l, "
                        "∂L/∂b_l, ∂L/∂A_l) about a network spec or a random network, its answer "
                        "key (NAME.key.md, each answer checked by verify) and NAME.toml, which "
                        "'symgrad grade' reads. Files that symgrad exercise did not write are "
                        "kept unless --force.")
    ex.add_argument("spec", nargs="?", help="network spec (TOML); or --random")
    ex.add_argument("--random", action="store_true",
                    help="a random network instead of SPEC (the same for the same --seed)")
    ex.add_argument("--seed", type=int, default=0,
                    help="seed of the random network and of the choice of questions (default: 0)")
    ex.add_argument("--count", type=int, default=None, metavar="K",
                    help="how many questions (default: 4, or all when the network offers fewer)")
    ex.add_argument("--depth", type=int, default=None, metavar="D",
                    help="with --random: the number of layers (default: 2)")
    ex.add_argument("--activations", default=None, metavar="A,B,…",
                    help="with --random: the hidden layers' activations to draw from "
                    "(default: tanh,sigmoid,relu)")
    ex.add_argument("-o", "--output", default=None, metavar="SHEET",
                    help="the worksheet, SHEET.md or SHEET.tex; the key and SHEET.toml go "
                    "beside it (default: sheet.md, or sheet.tex with --format latex)")
    ex.add_argument("--format", choices=("markdown", "latex"), default=None,
                    help="markdown (with LaTeX math) or latex, a printable .tex document "
                    "(default: from -o's suffix)")
    ex.add_argument("--force", action="store_true",
                    help="overwrite files that symgrad exercise did not write, or that were edited")

    gd = sub.add_parser("grade", help="grade a student's (or a class's) answers to a worksheet",
                        description="Grade answers (numpy syntax, one per question: a TOML "
                        "file with [answers] q1 = \"…\", or a text file of lines 'q1: …') with "
                        "verify's evidence and diagnosis per question, a score and a next step; "
                        "exit 0 when all are right, 1 otherwise. A folder of answer files is "
                        "graded into one table.")
    gd.add_argument("sheet", help="the worksheet's .toml (written by symgrad exercise)")
    gd.add_argument("answers", help="an answer file (.txt or .toml), or a folder of them")
    gd.add_argument("--csv", metavar="FILE",
                    help="also write the grades as CSV to FILE; an existing FILE is kept "
                    "unless it already holds these grades, or --force (never one of grade's "
                    "own inputs)")
    gd.add_argument("--force", action="store_true",
                    help="overwrite an existing --csv FILE with different content")
    gd.add_argument("--reveal", action="store_true",
                    help="also print the correct formula of each wrong answer")

    eg = sub.add_parser("examples", help="copy the example specs, the tutorial notebook and "
                        "the exercise sheet into a folder",
                        description="Copy the examples that ship with symgrad (the network "
                        "specs the README's tour uses, the tutorial notebook, an exercise "
                        "sheet and its students' answers) out of the installed package into "
                        "DIR. A file there that is not already symgrad's copy is kept unless "
                        "--force.")
    eg.add_argument("directory", nargs="?", default="examples", metavar="DIR",
                    help="the folder to copy them into, created when missing (default: "
                    "examples, the README's paths)")
    eg.add_argument("--force", action="store_true",
                    help="overwrite files in DIR that differ from symgrad's examples")
    return p


class _OneName(argparse.Action):
    """verify --wrt: one formula answers one name, so a second --wrt or a comma list is
    refused in one line (derive and generate accumulate them), in every verify mode."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = [n.strip() for n in str(values).split(",") if n.strip()]
        previous = getattr(namespace, self.dest, None)
        if previous:
            given.insert(0, previous)
        if len(given) != 1:
            raise argparse.ArgumentError(
                self, "name the gradient your formula is for, e.g. --wrt W1" if not given else
                f"verify checks one gradient at a time, and you gave {', '.join(given)}; one "
                "formula answers one name: run verify once per name")
        setattr(namespace, self.dest, given[0])


def _output_path(value: str) -> str:
    """-o PATH: a file ('-' for stdout); ``out/`` or ``out/.`` would be taken for the file
    ``out`` by pathlib, so they are refused here, for both generate modes."""
    from symgrad.files import names_a_directory

    if not value:
        raise argparse.ArgumentTypeError("empty; give the path of the file to write")
    if value != "-" and names_a_directory(value):
        raise argparse.ArgumentTypeError(f"{value!r} names a directory; give the path of the "
                                         "file to write")
    return value


def _expr_options(p: argparse.ArgumentParser, wrt: bool = True, assume: bool = True) -> None:
    """Expression mode (symgrad.exprmode): --expr EXPR --shape NAME=R,C … --wrt NAME[,NAME]."""
    if wrt:
        p.add_argument("--expr", help="a scalar matrix expression in numpy syntax, instead of SPEC")
        p.add_argument("--wrt", action="append", metavar="NAME[,NAME…]",
                       help="with --expr: the name(s) to differentiate (comma lists and repeats add up)")
    p.add_argument("--shape", action="append", metavar="NAME=R,C",
                   help="with --expr: the shape of a name (sizes: numbers or symbols like N, d)")
    if not assume:  # graph draws the expression as written
        return
    p.add_argument("--symmetric", action="append", metavar="NAME[,NAME…]",
                   help="with --expr: assume NAME = NAMEᵀ (printed forms use it, random "
                   "instances are symmetric); a gradient with respect to NAME itself is the "
                   "unconstrained one, each entry varied on its own (Matrix Cookbook §2.8)")
    p.add_argument("--assume", action="append", metavar="FACT",
                   help='with --expr: a fact about the data, e.g. "rowsum(Y) = 1" for one-hot or '
                   "probability rows (also \"A = A.T\", \"x > 0\")")
    p.add_argument("--positive", action="append", metavar="NAME[,NAME…]",
                   help="with --expr: NAME's entries are positive: random instances (verify, "
                   "check, the module's DOMAIN) draw them from [0.5, 1.5]")


def _expr_mode(args: argparse.Namespace) -> Callable[[argparse.Namespace], int] | None:
    """The expression-mode command when --expr asks for it (verify: only with --shape;
    without it --expr is verify's scalar mode)."""
    expr = getattr(args, "expr", None)
    if getattr(args, "hessian", False) and expr is None:
        raise SymgradError(f"{args.command} --hessian", "goes with --expr (for a network: "
                           "--hvp, the Hessian-vector product)")
    if args.command in ("derive", "generate"):
        if expr is None:
            if args.spec is None:
                raise SymgradError(args.command, "give a SPEC or --expr EXPR")
            if getattr(args, "shape", None) or getattr(args, "wrt", None):
                raise SymgradError(args.command, "--shape and --wrt go with --expr")
            if any(getattr(args, o, None) for o in ("symmetric", "assume", "positive")):
                raise SymgradError(args.command, "--symmetric, --assume and --positive go with --expr")
            return None
        if args.spec is not None:
            raise SymgradError(args.command, "give either a SPEC or --expr, not both")
        products = [f"--{o}" for o in ("hvp", "gnvp") if getattr(args, o, False)]
        if products:  # a network's products; an expression's: --hessian (R15 F11)
            raise SymgradError(f"{args.command} {products[0]}", "goes with a SPEC (for --expr: "
                               "--hessian, the Hessian and its product hvp)")
        if getattr(args, "backend", None) is not None:
            raise SymgradError("generate --backend", "goes with a SPEC (expression modules "
                               "are numpy only so far)")
    elif not (args.command == "verify" and getattr(args, "shape", None)):
        given = [f"--{o}" for o in ("symmetric", "assume", "positive") if getattr(args, o, None)]
        if given:
            raise SymgradError(args.command, f"{', '.join(given)} "
                               f"{'go' if len(given) > 1 else 'goes'} with --expr and --shape")
        return None
    if expr is None:
        raise SymgradError(args.command, "--shape goes with --expr")
    from symgrad import exprmode

    if getattr(args, "hessian", False):
        from symgrad import hessian

        return getattr(hessian, f"cmd_{args.command}")
    return getattr(exprmode, f"cmd_{args.command}")


@command("derive")
def cmd_derive(args: argparse.Namespace) -> int:
    from symgrad.derive import derive
    from symgrad.spec import load_spec

    spec = load_spec(args.spec)
    if getattr(args, "hvp", False) or getattr(args, "gnvp", False):
        from symgrad.second import cmd_derive_second

        return cmd_derive_second(args, spec)
    if args.prove:  # what cannot be proved is refused before anything is printed
        from symgrad.crosscheck import provable

        provable(spec)
    d = derive(spec)
    out = {"text": d.text, "latex": d.latex, "markdown": d.markdown}[args.format](steps=args.steps)
    sys.stdout.write(out)
    if args.prove:
        from symgrad.crosscheck import prove

        sys.stdout.flush()
        report = prove(spec, derivation=d)
        sys.stdout.write("\n" + report.text())
        return 0 if report.ok else 1
    return 0


def _missing(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise SymgradError(name, "this command is not available in this build")

    return run


# ==========================================================================================
# Output that cannot encode Unicode: ASCII forms
# ==========================================================================================

_ASCII = {
    "δ": "d", "∂": "d", "⊙": "*", "ᵀ": "^T", "𝟏": "1", "−": "-", "→": "->", "←": "<-",
    "Σ": "sum", "λ": "lambda", "η": "eta", "σ": "sigma", "½": "1/2", "‖": "||", "×": "x",
    "…": "...", "≤": "<=", "≥": ">=", "≠": "!=", "≈": "~", "·": "*", "√": "sqrt", "∘": " o ", "′": "'", "″": "''",
    "⁻": "^-", "²": "^2", "³": "^3", "ε": "eps", "γ": "gamma", "β": "beta", "μ": "mu",
    "α": "alpha", "π": "pi", "∇": "grad", "ℓ": "l", "Ŷ": "Yhat", "ŷ": "yhat", "—": "--",
    "–": "-", "’": "'", "‘": "'", "“": '"', "”": '"', "█": "#", "▏": "|", "▎": "|", "▍": "|",
    "▌": "|", "▋": "|", "▊": "|", "▉": "|", "✓": "ok", "✗": "x", "∞": "inf", "⌊": "floor(",
    "⌋": ")", "∈": " in ", "∑": "sum", "𝔼": "E", "⟨": "<", "⟩": ">", "⋅": "*",
    "⊤": "^T", "¬": "not ", "±": "+/-", "∓": "-/+", "∧": " and ", "∨": " or ", "↔": "<->",
    "↦": "|->", "\u0302": "hat", "§": "section ", "≡": "==", "⋯": "...",
    "\u0307": "dot", "⊗": " kron ", "⁄": "/", "°": " degrees",
}


def _ascii_form(ch: str) -> str:
    if ch in _ASCII:
        return _ASCII[ch]
    if "₀" <= ch <= "₉":
        return chr(ord(ch) - ord("₀") + ord("0"))
    if ch in "⁰¹⁴⁵⁶⁷⁸⁹":
        return "^" + unicodedata.normalize("NFKC", ch)
    name = unicodedata.name(ch, "")
    if name.startswith("GREEK ") and " LETTER " in name:  # θ → theta, Θ → Theta
        word = name.rsplit(" ", 1)[1].lower()
        return word.title() if " CAPITAL " in name else word
    plain = "".join(_ASCII.get(c, c) for c in unicodedata.normalize("NFKD", ch)
                    if not unicodedata.combining(c))  # ¾ → 3⁄4 → 3/4
    return plain if plain and plain.isascii() else "?"


def _ascii_errors(e: UnicodeError) -> tuple[str, int]:
    if not isinstance(e, UnicodeEncodeError):
        raise e
    return "".join(_ascii_form(ch) for ch in e.object[e.start:e.end]), e.end


codecs.register_error("symgrad-ascii", _ascii_errors)


def _robust_streams() -> None:
    """stdout/stderr that cannot encode our symbols degrade to ASCII forms, never raise."""
    for stream in (sys.stdout, sys.stderr):
        encoding = getattr(stream, "encoding", None) or "ascii"
        try:
            "δ₁⊙ᵀ𝟏−→Ŷ".encode(encoding)
        except UnicodeEncodeError:
            pass
        except LookupError:
            encoding = "ascii"
        else:
            continue
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="symgrad-ascii")
            except (ValueError, OSError, TypeError):
                pass


# ==========================================================================================
# main: the error contract
# ==========================================================================================


def _internal(e: BaseException) -> str:
    message = " ".join(str(e).split())
    if len(message) > 300:
        message = message[:297] + "..."
    detail = f": {message}" if message else ""
    line = (f"symgrad: internal error: {type(e).__name__}{detail} (please report; "
            "SYMGRAD_DEBUG=1 shows the traceback)")
    return "".join(c if c.isprintable() else "?" for c in line)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (0, 1, 2 or 3, as the module docstring says)."""
    from symgrad import budget

    _robust_streams()
    name = "symgrad"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        name = args.command
        with budget.command_budget():
            run = _expr_mode(args)
            if run is None:
                _load_command(args.command)
                run = COMMANDS.get(args.command, _missing(args.command))
            return run(args)
    except SymgradError as e:
        _report(e.one_line())
        return 2
    except budget.CommandTimeout as e:
        _report(f"symgrad: error: {name}: {e}")
        return 2
    except MemoryError:
        _report(f"symgrad: error: {name}: out of memory ({budget.memory_text()}); the input is "
                "too large for this machine")
        return 2
    except KeyboardInterrupt:
        _report("symgrad: interrupted")
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except SystemExit:
        raise
    except Exception as e:  # a bug of ours: one line, the traceback on request
        if os.environ.get("SYMGRAD_DEBUG"):
            import traceback

            traceback.print_exc()
        _report(_internal(e))
        return 3


def _report(line: str) -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _silence_stdout() -> None:
    """After a closed pipe (``symgrad derive … | head``), let the interpreter exit quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


COMMAND_MODULES = {
    "generate": "symgrad.codegen",
    "check": "symgrad.check",
    "verify": "symgrad.verify",
    "demo": "symgrad.demo",
    "graph": "symgrad.picture",
    "exercise": "symgrad.exercise",
    "grade": "symgrad.exercise",
    "examples": "symgrad.examples",
}


def _load_command(name: str) -> None:
    """Commands living in their own modules register themselves on import; only the
    one asked for is imported (``derive`` stays quick to start)."""
    import importlib

    module = COMMAND_MODULES.get(name)
    if module and Path(__file__).with_name(module.split(".")[1] + ".py").exists():
        importlib.import_module(module)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
