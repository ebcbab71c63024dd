"""symgrad: derive backpropagation symbolically and generate numpy training code."""

__version__ = "0.1.0"
