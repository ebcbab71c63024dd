"""The ``symgrad`` command line (contract: DESIGN.md, "Command line").

Each subcommand is a small function taking the parsed arguments and returning an
exit code: 0 success, 1 a check or verification failed, 2 bad input — reported
as one line ``symgrad: error: <where>: <what>``, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from symgrad import __version__
from symgrad.errors import SymgradError

__all__ = ["main", "build_parser"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors follow our one-line convention (exit 2)."""

    def error(self, message: str):  # noqa: D401
        raise SymgradError(self.prog, message)


class _IntermixedParser(_Parser):
    """Positionals on both sides of options (``verify SPEC --wrt W1 FORMULA``)."""

    _mixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._mixing:
            return super().parse_known_args(args, namespace)
        self._mixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._mixing = False


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="symgrad", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"symgrad {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("derive", help="print the backpropagation formulas of a network")
    d.add_argument("spec", nargs="?", help="network spec (TOML)")
    d.add_argument("--format", choices=("text", "latex", "markdown"), default="text")
    d.add_argument("--steps", action="store_true", help="show each chain-rule step")
    d.add_argument("--prove", action="store_true",
                   help="also prove the formulas by scalar expansion on a tiny instance")

    g = sub.add_parser("generate", help="write a numpy training module")
    g.add_argument("spec", nargs="?")
    g.add_argument("-o", "--output", help="output path (default generated/<name>.py)")
    g.add_argument("--force", action="store_true", help="overwrite a file symgrad did not write")

    c = sub.add_parser("check", help="gradient check of a spec or a generated module")
    c.add_argument("target", help="SPEC.toml or MODULE.py")
    c.add_argument("--method", choices=("central", "complex", "directional", "taylor"),
                   default="central")
    c.add_argument("--tol", type=float, default=None,
                   help="max relative error allowed (taylor: the minimum observed order)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--directions", type=int, default=8, help="directional: how many")

    v = sub.add_parser("verify", help="verify a gradient derived by hand")
    v.__class__ = _IntermixedParser
    v.add_argument("spec", nargs="?", help="network spec (TOML)")
    v.add_argument("--wrt", required=True, help="W1, b2, Z1, A1, … (or x with --expr)")
    v.add_argument("--expr", help="scalar mode: a function of the --wrt variable; with --shape, "
                   "a matrix expression")
    _expr_options(v, wrt=False)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("formula", help="your gradient, in numpy syntax")

    _expr_options(d)
    _expr_options(g)

    m = sub.add_parser("demo", help="the whole mission on the digits data set")
    m.add_argument("--out", default="demo-out", help="directory for the plot and report")
    m.add_argument("--epochs", type=int, default=None)
    return p


def _expr_options(p: argparse.ArgumentParser, wrt: bool = True) -> None:
    """Expression mode (symgrad.exprmode): --expr EXPR --shape NAME=R,C … --wrt NAME[,NAME]."""
    if wrt:
        p.add_argument("--expr", help="a scalar matrix expression in numpy syntax, instead of SPEC")
        p.add_argument("--wrt", help="with --expr: the name(s) to differentiate, comma-separated")
    p.add_argument("--shape", action="append", metavar="NAME=R,C",
                   help="with --expr: the shape of a name (sizes: numbers or symbols like N, d)")


def _expr_mode(args: argparse.Namespace) -> Callable[[argparse.Namespace], int] | None:
    """The expression-mode command when --expr asks for it (verify: only with --shape;
    without it --expr is verify's scalar mode)."""
    expr = getattr(args, "expr", None)
    if args.command in ("derive", "generate"):
        if expr is None:
            if args.spec is None:
                raise SymgradError(args.command, "give a SPEC or --expr EXPR")
            if getattr(args, "shape", None) or getattr(args, "wrt", None):
                raise SymgradError(args.command, "--shape and --wrt go with --expr")
            return None
        if args.spec is not None:
            raise SymgradError(args.command, "give either a SPEC or --expr, not both")
    elif not (args.command == "verify" and getattr(args, "shape", None)):
        return None
    if expr is None:
        raise SymgradError(args.command, "--shape goes with --expr")
    from symgrad import exprmode

    return getattr(exprmode, f"cmd_{args.command}")


@command("derive")
def cmd_derive(args: argparse.Namespace) -> int:
    from symgrad.derive import derive
    from symgrad.spec import load_spec

    spec = load_spec(args.spec)
    d = derive(spec)
    out = {"text": d.text, "latex": d.latex, "markdown": d.markdown}[args.format](steps=args.steps)
    sys.stdout.write(out)
    if args.prove:
        from symgrad.crosscheck import prove

        report = prove(spec)
        sys.stdout.write("\n" + report.text())
        return 0 if report.ok else 1
    return 0


def _missing(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise SymgradError(name, "this command is not available in this build")

    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        run = _expr_mode(args)
        if run is not None:
            return run(args)
        _load_command(args.command)
        return COMMANDS.get(args.command, _missing(args.command))(args)
    except SymgradError as e:
        print(e.one_line(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("symgrad: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


COMMAND_MODULES = {
    "generate": "symgrad.codegen",
    "check": "symgrad.check",
    "verify": "symgrad.verify",
    "demo": "symgrad.demo",
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
