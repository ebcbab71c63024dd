"""A stand-in for CuPy made of numpy, for running a generated CuPy module without a GPU.

This checks the *module's logic*, not CuPy: that every call the CuPy backend writes exists
in CuPy under that name with CuPy's signature (the functions here are only those CuPy's
reference, docs.cupy.dev, lists, with its parameters: no ``mode=`` on take, no ``where=`` on
a ufunc, cupy.copyto's ``where=``, cupy.ndarray.set/get, cupyx.scatter_add,
cupy.lib.stride_tricks.sliding_window_view), that device arrays and host arrays are not
mixed where CuPy refuses it (a ufunc of a device array and a numpy array raises
TypeError, as CuPy does; an array has CuPy's flags, no setflags and no
``__array_interface__``), and that the module computes the numpy module's numbers. Kernels,
streams and device memory are CuPy's own business and untested here: the real-CuPy test
(tests/test_backend_cupy.py, skipped without cupy and a CUDA device) and
benchmarks/gpu_check.sh are for a GPU machine.

    with standin():  # cupy, cupyx, cupy.lib, cupy.lib.stride_tricks in sys.modules
        module = load_module(cupy_source)
"""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np


class _Flags:
    """cupy.ndarray.flags: c_contiguous, f_contiguous, owndata (nothing else)."""

    def __init__(self, a: np.ndarray):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata


def _host(value):
    """A device array's numpy view (for numpy's kernels); anything else as it is."""
    return value.view(np.ndarray) if isinstance(value, ndarray) else value


def _refuse_host(values) -> None:
    for v in values:
        if isinstance(v, np.ndarray) and not isinstance(v, ndarray):
            raise TypeError(f"Unsupported type {type(v)}")  # CuPy's words for a numpy array


def _device(value):
    """numpy results as device arrays; CuPy returns 0-d arrays where numpy gives scalars."""
    if isinstance(value, tuple):
        return tuple(_device(v) for v in value)
    if isinstance(value, ndarray):
        return value
    if isinstance(value, np.ndarray):
        return value.view(ndarray)
    if isinstance(value, np.generic):
        return np.asarray(value).view(ndarray)
    return value


class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
    """cupy.ndarray, made of numpy memory."""

    __module__ = "cupy"

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse_host(inputs)
        if kwargs.get("where", True) is not True:  # (numpy's own methods pass where=True)
            raise TypeError("Wrong arguments {'where': ...}")  # CuPy's ufuncs take no where=
        out = kwargs.get("out")
        if out is not None:
            _refuse_host(out)
            kwargs["out"] = tuple(_host(o) for o in out)
        result = getattr(ufunc, method)(*(_host(i) for i in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _device(result)

    @property
    def flags(self):  # type: ignore[override]
        return _Flags(self.view(np.ndarray))

    @property
    def __array_interface__(self):  # type: ignore[override]
        raise AttributeError("'cupy.ndarray' object has no attribute '__array_interface__'")

    @property
    def __cuda_array_interface__(self):
        a = self.view(np.ndarray)
        return {"data": (a.__array_interface__["data"][0], False), "shape": a.shape,
                "strides": a.strides, "typestr": a.dtype.str, "version": 3}

    def setflags(self, *args, **kwargs):  # noqa: ARG002
        raise AttributeError("'cupy.ndarray' object has no attribute 'setflags'")

    def take(self, indices, axis=None, out=None):  # no mode (cupy.ndarray.take)
        _refuse_host([indices] if not isinstance(indices, int) else [])
        result = np.take(self.view(np.ndarray), _host(indices), axis=axis, out=_host(out))
        return out if out is not None else _device(result)

    def get(self, stream=None, order="C", out=None):  # noqa: ARG002
        """The array copied to the host (cupy.ndarray.get)."""
        return np.array(self.view(np.ndarray), order=order)

    def set(self, arr, stream=None):  # noqa: ARG002
        """arr (a numpy array of this shape and dtype) copied onto the device."""
        if not isinstance(arr, np.ndarray) or isinstance(arr, ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, not {type(arr)}")
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("Shape or dtype mismatch")
        np.copyto(self.view(np.ndarray), arr)


def _wrap(f, takes_host=False):
    """A CuPy function made of numpy's f: device arrays in (host ones too where CuPy
    converts them: asarray, array), device arrays out."""

    def call(*args, **kwargs):
        if not takes_host:
            _refuse_host([*args, *kwargs.values()])
        result = f(*(_host(a) for a in args), **{k: _host(v) for k, v in kwargs.items()})
        return kwargs["out"] if kwargs.get("out") is not None else _device(result)

    call.__name__ = f.__name__
    return call


# The signatures of CuPy's reference (docs.cupy.dev/en/stable/reference): numpy's
# functions are called with exactly these parameters, so a keyword CuPy lacks fails here.
def asarray(a, dtype=None, order=None, *, blocking=False):  # noqa: ARG001
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return np.array(_host(a), dtype=dtype, order=order or "K").view(ndarray)


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *,  # noqa: ARG001
          blocking=False):
    return np.array(_host(obj), dtype=dtype, copy=copy, order=order, ndmin=ndmin).view(ndarray)


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):  # noqa: ARG001
    return a.get(order=order) if isinstance(a, ndarray) else np.asarray(a, order=order)


def copyto(dst, src, casting="same_kind", where=None):
    _refuse_host([dst, src, where])
    np.copyto(_host(dst), _host(src), casting=casting,
              **({} if where is None else {"where": _host(where)}))


def sum(a, axis=None, dtype=None, out=None, keepdims=False):  # noqa: A001
    return _wrap(np.sum)(a, axis=axis, dtype=dtype, out=out, keepdims=keepdims)


def amax(a, axis=None, out=None, keepdims=False):
    return _wrap(np.amax)(a, axis=axis, out=out, keepdims=keepdims)


def amin(a, axis=None, out=None, keepdims=False):
    return _wrap(np.amin)(a, axis=axis, out=out, keepdims=keepdims)


def mean(a, axis=None, dtype=None, out=None, keepdims=False):
    return _wrap(np.mean)(a, axis=axis, dtype=dtype, out=out, keepdims=keepdims)


def dot(a, b, out=None):
    return _wrap(np.dot)(a, b, out=out)


def vdot(a, b):
    return _wrap(np.vdot)(a, b)


def matmul(x1, x2, /, out=None, **kwargs):
    return _wrap(np.matmul)(x1, x2, out=out, **kwargs)


def argmax(a, axis=None, dtype=None, out=None, keepdims=False):  # noqa: ARG001
    return _wrap(np.argmax)(a, axis=axis, out=out, keepdims=keepdims)


def concatenate(tup, axis=0, out=None, *, dtype=None, casting="same_kind"):
    _refuse_host(tup)
    return _wrap(np.concatenate)(tuple(_host(t) for t in tup), axis=axis, out=out,
                                 dtype=dtype, casting=casting)


def empty(shape, dtype=float, order="C"):
    return _wrap(np.empty)(shape, dtype, order)


def zeros(shape, dtype=float, order="C"):
    return _wrap(np.zeros)(shape, dtype, order)


def ones(shape, dtype=float, order="C"):
    return _wrap(np.ones)(shape, dtype, order)


def full(shape, fill_value, dtype=None, order="C"):
    return _wrap(np.full)(shape, fill_value, dtype, order)


def empty_like(prototype, dtype=None, order="K", subok=None, shape=None):  # noqa: ARG001
    return _wrap(np.empty_like)(prototype, dtype=dtype, order=order, shape=shape)


def zeros_like(a, dtype=None, order="K", subok=None, shape=None):  # noqa: ARG001
    return _wrap(np.zeros_like)(a, dtype=dtype, order=order, shape=shape)


def ones_like(a, dtype=None, order="K", subok=None, shape=None):  # noqa: ARG001
    return _wrap(np.ones_like)(a, dtype=dtype, order=order, shape=shape)


def eye(N, M=None, k=0, dtype=float, order="C"):  # noqa: N803
    return _wrap(np.eye)(N, M, k, dtype=dtype, order=order)


def arange(start, stop=None, step=1, dtype=None):
    args = (start,) if stop is None else (start, stop, step)
    return _wrap(np.arange)(*args, dtype=dtype)


def ascontiguousarray(a, dtype=None):
    return _wrap(np.ascontiguousarray)(a, dtype=dtype)


def count_nonzero(a, axis=None):
    return _wrap(np.count_nonzero)(a, axis=axis)


def flatnonzero(a):
    return _wrap(np.flatnonzero)(a)


def sort(a, axis=-1, kind=None):
    return _wrap(np.sort)(a, axis=axis, kind=kind)


def array_equal(a1, a2, equal_nan=False):
    return _device(np.bool_(np.array_equal(_host(a1), _host(a2), equal_nan=equal_nan)))


def may_share_memory(a, b, max_work=None):
    return bool(np.may_share_memory(_host(a), _host(b), max_work=max_work))


def shares_memory(a, b, max_work=None):
    return bool(np.shares_memory(_host(a), _host(b), max_work=max_work))


def where(condition, x=None, y=None):
    args = (condition,) if x is None else (condition, x, y)
    return _wrap(np.where)(*args)


def take_along_axis(a, indices, axis):
    return _wrap(np.take_along_axis)(a, indices, axis)


def broadcast_to(array, shape):
    return _wrap(np.broadcast_to)(array, shape)


def einsum(*operands, **kwargs):
    return _wrap(np.einsum)(*operands, **kwargs)


def sliding_window_view(x, window_shape, axis=None, *, subok=False, writeable=False):
    if writeable:
        raise NotImplementedError("writeable=True is not supported")  # CuPy's note
    return _wrap(np.lib.stride_tricks.sliding_window_view)(x, window_shape, axis=axis,
                                                           subok=subok)


def scatter_add(a, slices, value):
    """cupyx.scatter_add(a, slices, value): numpy.add.at."""
    _refuse_host([a, value])
    np.add.at(_host(a), _host(slices), _host(value))


_UFUNCS = ("abs", "add", "subtract", "multiply", "divide", "negative", "power", "reciprocal",
           "maximum", "minimum", "exp", "expm1", "log", "log1p", "sqrt", "square", "tanh",
           "sin", "cos", "sinh", "cosh", "sign", "isfinite", "isnan", "greater",
           "greater_equal", "less", "less_equal", "equal", "logaddexp", "copysign", "trunc",
           "floor", "ceil")

_FUNCTIONS = ("asarray", "array", "asnumpy", "copyto", "sum", "amax", "amin", "mean", "dot",
              "vdot", "matmul", "argmax", "concatenate", "empty", "zeros", "ones", "full",
              "empty_like", "zeros_like", "ones_like", "eye", "arange", "ascontiguousarray",
              "count_nonzero", "flatnonzero", "sort", "array_equal", "may_share_memory",
              "shares_memory", "where", "take_along_axis", "broadcast_to", "einsum")


class _Ufunc:
    """A cupy.ufunc: __call__(*args, out=None, dtype=None, casting=…), no where=."""

    def __init__(self, f):
        self.f, self.__name__ = f, f.__name__

    def __call__(self, *args, out=None, dtype=None, casting="same_kind"):
        scalars = all(np.isscalar(a) for a in args)
        if scalars and out is None:  # CuPy makes a 0-d device array of Python numbers
            return _device(np.asarray(self.f(*args, dtype=dtype)))
        _refuse_host(args)
        result = self.f(*(_host(a) for a in args), dtype=dtype, casting=casting,
                        **({} if out is None else {"out": _host(out)}))
        return out if out is not None else _device(result)

    def reduce(self, array, axis=0, dtype=None, out=None, keepdims=False):
        return _wrap(self.f.reduce)(array, axis=axis, dtype=dtype, out=out, keepdims=keepdims)


def modules() -> dict[str, types.ModuleType]:
    """cupy, cupyx, cupy.lib and cupy.lib.stride_tricks as stand-in modules."""
    cupy = types.ModuleType("cupy", "a numpy-made stand-in for CuPy (tests/cupy_standin.py)")
    for name in _FUNCTIONS:
        setattr(cupy, name, globals()[name])
    for name in _UFUNCS:
        setattr(cupy, name, _Ufunc(getattr(np, name)))
    cupy.ndarray = ndarray
    cupy.float32, cupy.float64, cupy.int8, cupy.int64 = (np.float32, np.float64, np.int8,
                                                         np.int64)
    lib = types.ModuleType("cupy.lib")
    tricks = types.ModuleType("cupy.lib.stride_tricks")
    tricks.sliding_window_view = sliding_window_view
    lib.stride_tricks = tricks
    cupy.lib = lib
    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add = scatter_add
    return {"cupy": cupy, "cupyx": cupyx, "cupy.lib": lib, "cupy.lib.stride_tricks": tricks}


@contextlib.contextmanager
def standin():
    """The stand-in in sys.modules for the block (whatever was there is put back)."""
    made = modules()
    saved = {name: sys.modules.get(name) for name in made}
    sys.modules.update(made)
    try:
        yield made["cupy"]
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
