"""The registry of subcommands: ``@command("generate")`` registers a function of the parsed
arguments under its name, and :func:`symgrad.cli.main` runs the one asked for.

It sits below every stage, so that a stage registering its command (codegen, check, verify,
…) imports nothing later than itself: the command line imports the stages, never the
other way round.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["COMMANDS", "command"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register
