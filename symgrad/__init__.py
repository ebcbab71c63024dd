"""symgrad: derive backpropagation symbolically and generate numpy training code.

The public API (``__all__``) is imported lazily: ``import symgrad`` loads neither SymPy
nor numpy, so ``symgrad --version`` and the command line start quickly; the first use
of a name imports the module that defines it.

    import symgrad
    from symgrad.derive import derive
    spec = symgrad.load_spec("examples/digits.toml")
    print(derive(spec).text())                 # the formulas
    symgrad.generate(spec, "digits_mlp.py")    # the numpy module
    print(symgrad.check_spec(spec).text())     # the gradient check

``derive`` and ``verify`` are imported from their modules (``symgrad.derive``,
``symgrad.verify``): as attributes of the package those names are the modules.
"""

import importlib as _importlib
import typing as _typing

__version__ = "0.1.0"

# name -> the module defining it (the single place each public name comes from)
_API: dict[str, str] = {
    "CheckReport": "symgrad.check",
    "Derivation": "symgrad.derive",
    "Layer": "symgrad.spec",
    "Spec": "symgrad.spec",
    "SymgradError": "symgrad.errors",
    "Training": "symgrad.spec",
    "check_module": "symgrad.check",
    "check_spec": "symgrad.check",
    "digits_split": "symgrad.datasets",
    "generate": "symgrad.codegen",
    "generate_source": "symgrad.codegen",
    "load_digits": "symgrad.datasets",
    "load_module": "symgrad.codegen",
    "load_spec": "symgrad.spec",
    "prove": "symgrad.crosscheck",
    "spec_from_dict": "symgrad.spec",
}

__all__ = [
    "CheckReport",
    "Derivation",
    "Layer",
    "Spec",
    "SymgradError",
    "Training",
    "__version__",
    "check_module",
    "check_spec",
    "digits_split",
    "generate",
    "generate_source",
    "load_digits",
    "load_module",
    "load_spec",
    "prove",
    "spec_from_dict",
]  # __version__ and the names of _API (tests/test_exported_members.py holds both)

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from symgrad.check import CheckReport, check_module, check_spec
    from symgrad.codegen import generate, generate_source, load_module
    from symgrad.crosscheck import prove
    from symgrad.datasets import digits_split, load_digits
    from symgrad.derive import Derivation
    from symgrad.errors import SymgradError
    from symgrad.spec import Layer, Spec, Training, load_spec, spec_from_dict


def __getattr__(name: str) -> _typing.Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'symgrad' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
