"""The ops: one class per op, each declaring every interpretation of itself (see
:mod:`symgrad.ops.base` for the interface), in one module per family:

* :mod:`~symgrad.ops.base` — the interface, leaves, and the generic algebra (maps, scaling,
  products, sums) that every rule is written in,
* :mod:`~symgrad.ops.reductions` — broadcasting and the sums over rows and columns, norms, max/min,
* :mod:`~symgrad.ops.linear` — matrix products, bias rows, transposes, concatenation,
* :mod:`~symgrad.ops.elementwise` — activations, softmax, log-sum-exp,
* :mod:`~symgrad.ops.linalg` — the inverse, determinant, log-determinant and solve,
* :mod:`~symgrad.ops.loss` — the mean data loss,
* :mod:`~symgrad.ops.structure` — diag (vector → matrix, matrix → column), Kronecker products,
* :mod:`~symgrad.ops.normalization` — batchnorm's and layernorm's standardization, dropout,
* :mod:`~symgrad.ops.conv` — im2col/col2im, max and average pooling, flatten (feature maps),
* :mod:`~symgrad.ops.lowered` — forms only codegen builds (the loss value's total, the fused
  SGD epoch's transposed layout); not exported here.

A new op is one class in the module of its family, exported here.
"""

from symgrad.ops.base import (  # noqa: F401 - shared with the checks
    L1,
    L2,
    ONE,
    SCALAR,
    Add,
    Const,
    Env,
    Exp,
    Hadamard,
    Map,
    N,
    Node,
    Scale,
    Sym,
    _coef,
    _lambdified,
    _size,
    add,
    filled,
    hadamard,
    is_ones,
    scale,
)
from symgrad.ops.conv import (
    AvgPool,
    AvgPoolBack,
    Col2im,
    Flatten,
    Geometry,
    Im2col,
    MaxPool,
    MaxPoolBack,
    PoolArgmax,
    Unflatten,
)
from symgrad.ops.elementwise import Elementwise, LogSumExp, Softmax
from symgrad.ops.linalg import Det, Inverse, LogDet, Solve
from symgrad.ops.linear import BiasAdd, ColSlice, Concat, MatMul, MatPow, Transpose
from symgrad.ops.loss import MeanLoss
from symgrad.ops.normalization import Dropout, InvStd, Standardize
from symgrad.ops.reductions import (
    AbsSum,
    ArgMask,
    Broadcast,
    ColSum,
    Extremum,
    Eye,
    Norm,
    Ones,
    RowSum,
    SqNorm,
    SqNormHalf,
    Sub,
    Trace,
)
from symgrad.ops.structure import DiagMatrix, DiagPart, Kron, KronFactor

__all__ = [
    "N", "L1", "L2", "ONE", "SCALAR", "Env", "Node", "Sym", "Const", "Exp", "Map", "Scale",
    "Hadamard", "Add", "add", "scale", "hadamard", "filled", "is_ones",
    "MatMul", "MatPow", "BiasAdd", "Transpose", "Concat", "ColSlice",
    "Elementwise", "Softmax", "LogSumExp", "MeanLoss",
    "Sub", "ColSum", "RowSum", "Broadcast", "Ones", "Eye", "Trace", "SqNorm", "SqNormHalf",
    "AbsSum", "Standardize", "InvStd", "Dropout", "Inverse", "Det", "LogDet", "Solve",
    "Norm", "Extremum", "ArgMask", "DiagMatrix", "DiagPart", "Kron", "KronFactor",
    "Geometry", "Im2col", "Col2im", "PoolArgmax", "MaxPool", "MaxPoolBack", "AvgPool",
    "AvgPoolBack", "Flatten", "Unflatten",
]
