"""symgrad: derive backpropagation symbolically and generate numpy training code.

The public API (``__all__``) is imported lazily: ``import symgrad`` loads neither SymPy
nor numpy, so ``symgrad --version`` and the command line start quickly; the first use
of a name imports the module that defines it.

    import symgrad
    derivation = symgrad.derive("examples/digits.toml")   # a path or a Spec, everywhere
    print(derivation.text(steps=True))                   # the formulas, step by step
    symgrad.generate("examples/digits.toml", "digits_mlp.py")
    print(symgrad.check_spec("examples/digits.toml").text())
    symgrad.verify("examples/digits.toml", "W1", "X.T @ dZ1").ok
    symgrad.draw("examples/digits.toml", backward=True).save("backward.svg")

``symgrad.derive`` and ``symgrad.verify`` are the functions; their modules are
``sys.modules["symgrad.derive"]`` (``from symgrad.derive import derive_graph`` as usual):
the package keeps the function when the import system binds the submodule.
"""

import importlib as _importlib
import sys as _sys
import types as _types
import typing as _typing

__version__ = "0.1.0"

# name -> the module defining it (the single place each public name comes from)
_API: dict[str, str] = {
    "CheckReport": "symgrad.check",
    "Derivation": "symgrad.derive",
    "Layer": "symgrad.spec",
    "Picture": "symgrad.picture",
    "Spec": "symgrad.spec",
    "SymgradError": "symgrad.errors",
    "Training": "symgrad.spec",
    "check_module": "symgrad.check",
    "check_spec": "symgrad.check",
    "derive": "symgrad.derive",
    "digits_split": "symgrad.datasets",
    "draw": "symgrad.picture",
    "draw_expr": "symgrad.picture",
    "generate": "symgrad.codegen",
    "generate_source": "symgrad.codegen",
    "load_digits": "symgrad.datasets",
    "load_module": "symgrad.codegen",
    "load_spec": "symgrad.spec",
    "prove": "symgrad.crosscheck",
    "spec_from_dict": "symgrad.spec",
    "verify": "symgrad.verify",
}

__all__ = [
    "CheckReport",
    "Derivation",
    "Layer",
    "Picture",
    "Spec",
    "SymgradError",
    "Training",
    "__version__",
    "check_module",
    "check_spec",
    "derive",
    "digits_split",
    "draw",
    "draw_expr",
    "generate",
    "generate_source",
    "load_digits",
    "load_module",
    "load_spec",
    "prove",
    "spec_from_dict",
    "verify",
]  # __version__ and the names of _API (tests/test_exported_members.py holds both)

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from symgrad.check import CheckReport, check_module, check_spec
    from symgrad.codegen import generate, generate_source, load_module
    from symgrad.crosscheck import prove
    from symgrad.datasets import digits_split, load_digits
    from symgrad.derive import Derivation, derive
    from symgrad.errors import SymgradError
    from symgrad.picture import Picture, draw, draw_expr
    from symgrad.spec import Layer, Spec, Training, load_spec, spec_from_dict
    from symgrad.verify import verify


# API functions named like the submodule defining them: the attribute is the function
_FUNCTIONS_OVER_MODULES = frozenset({"derive", "verify"})


class _Package(_types.ModuleType):
    """The package module: importing ``symgrad.derive`` (the submodule) does not replace
    the function ``symgrad.derive`` (the import system binds a submodule by setattr)."""

    def __setattr__(self, name: str, value: _typing.Any) -> None:
        if name in _FUNCTIONS_OVER_MODULES and isinstance(value, _types.ModuleType):
            return  # the submodule stays reachable as sys.modules["symgrad.<name>"]
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> _typing.Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'symgrad' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
