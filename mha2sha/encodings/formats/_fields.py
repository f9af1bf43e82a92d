"""Field readers shared by the version modules: each checks one JSON value and raises
``Problem("<where>: <what is wrong>")`` so that every error is one clear line."""

from __future__ import annotations

from itertools import repeat

import numpy as np

from mha2sha.encodings.errors import Problem
from mha2sha.encodings.model import exact

INT_BITWIDTHS = range(2, 33)  # the 1.0.0 specification: 2 <= bw <= 32
FLOAT_BITWIDTHS = (8, 16, 32)


def where(section: str, name: str) -> str:
    return f"entry {name!r} ({section})"


def require(entry: dict, key: str, at: str):
    if key not in entry:
        raise Problem(f"{at}: missing field {key!r}")
    return entry[key]


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value, at: str, key: str):
    if not is_number(value):
        raise Problem(f"{at}: {key!r} must be a number, got {_show(value)}")
    return value


def integer(value, at: str, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise Problem(f"{at}: {key!r} must be an integer, got {_show(value)}")
    return value


def text(value, at: str, key: str) -> str:
    if not isinstance(value, str):
        raise Problem(f"{at}: {key!r} must be a string, got {_show(value)}")
    return value


def flag(value, at: str, key: str) -> bool:
    """A bool, or the strings "True" / "False" that 0.6.1 writes."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise Problem(f"{at}: {key!r} must be true/false or \"True\"/\"False\", got {_show(value)}")


def numbers(value, at: str, key: str, *, ndim: int | None = None, scalar_ok: bool = False) -> np.ndarray:
    """A number or a (regularly nested) list of numbers, as an exact array (model.exact).

    Vectorised: one pass of ``type`` over the elements in C checks them, numpy builds the
    array (a 200 MB file holds tens of millions of numbers); the element-by-element walk
    runs only to name what is wrong."""
    if is_number(value):
        if not scalar_ok:
            raise Problem(f"{at}: {key!r} must be a list of numbers, got {_show(value)}")
        return exact(value)
    if not isinstance(value, list) or not value:
        raise Problem(f"{at}: {key!r} must be {'a number or ' if scalar_ok else ''}a non-empty list of numbers, got {_show(value)}")
    if not isinstance(value[0], list):
        types = set(map(type, value))
        if not types <= _NUMBER_TYPES:
            _explain(value, at, key)
            raise Problem(f"{at}: {key!r} is not a list of numbers")
        arr = exact(value, types)
    else:
        try:
            flat = np.array(value, dtype=object)
        except ValueError:  # ragged in a way numpy refuses
            flat = None
        if flat is None or flat.size == 0 or not set(map(type, flat.reshape(-1).tolist())) <= _NUMBER_TYPES:
            _explain(value, at, key)
            raise Problem(f"{at}: {key!r} is not a regular nested list of numbers")
        arr = exact(flat)
    if ndim is not None and arr.ndim != ndim:
        raise Problem(f"{at}: {key!r} must be a {ndim}-D list, got {arr.ndim}-D")
    return arr


_NUMBER_TYPES = {int, float}


def column(channels: list[dict], key: str, at: str) -> np.ndarray:
    """``key`` of every channel dict (0.6.1) as an exact array, checked as numbers (the
    dicts are read in C: ``map(dict.get, ...)``)."""
    values = list(map(dict.get, channels, repeat(key)))
    types = set(map(type, values))
    if not types <= _NUMBER_TYPES:
        for d, v in zip(channels, values):
            if key not in d:
                raise Problem(f"{at}: missing field {key!r}")
            number(v, at, key)
    return exact(values, types)


def same_in_every(channels: list[dict], key: str):
    """The value of ``key`` if every channel dict has the same one (missing: None), else the
    index of the first channel that differs from channel 0, as ``(False, k)``."""
    values = list(map(dict.get, channels, repeat(key)))
    first = values[0]
    if values.count(first) == len(values):
        return True, first
    return False, next(k for k, v in enumerate(values) if v != first)


def _explain(value, at: str, key: str) -> None:
    """The slow walk that names the first problem of an irregular or non-numeric list."""
    shape = _regular_shape(value, at, key)
    for item in _flatten(value):
        number(item, at, key)
    del shape


def _floats(arr: np.ndarray, at: str, key: str) -> np.ndarray:
    try:
        return np.asarray(arr, dtype=np.float64).reshape(-1)
    except OverflowError:
        raise Problem(f"{at}: {key!r} holds a number too large for a float") from None


def positive_scales(arr: np.ndarray, at: str, key: str) -> None:
    v = _floats(arr, at, key)
    bad = ~np.isfinite(v)
    if bad.any():
        raise Problem(f"{at}: {key!r} holds a NaN or infinite scale ({v[bad][0]})")
    if (v <= 0).any():
        raise Problem(f"{at}: {key!r} holds a non-positive scale ({v[v <= 0][0]})")


def finite(arr: np.ndarray, at: str, key: str) -> None:
    """Offsets / zero points / ranges: a NaN or an infinity (JSON's -Infinity) is refused."""
    v = _floats(arr, at, key)
    bad = ~np.isfinite(v)
    if bad.any():
        raise Problem(f"{at}: {key!r} holds a NaN or infinite value ({v[bad][0]})")


def int_bitwidth(value, at: str, key: str) -> int:
    bw = integer(value, at, key)
    if bw not in INT_BITWIDTHS:
        raise Problem(f"{at}: {key!r} {bw} is out of range ({INT_BITWIDTHS.start}..{INT_BITWIDTHS.stop - 1})")
    return bw


def float_bitwidth(value, at: str, key: str) -> int:
    bw = integer(value, at, key)
    if bw not in FLOAT_BITWIDTHS:
        raise Problem(f"{at}: {key!r} {bw} is not a float width ({', '.join(map(str, FLOAT_BITWIDTHS))})")
    return bw


def same_length(a: np.ndarray, b: np.ndarray, at: str, keys: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise Problem(f"{at}: {keys[0]!r} has {_count(a)} values but {keys[1]!r} has {_count(b)}")


def obj(value, at: str, key: str) -> dict:
    if not isinstance(value, dict):
        raise Problem(f"{at}: {key!r} must be an object, got {_show(value)}")
    return value


def _count(a: np.ndarray) -> str:
    return str(a.size) if a.ndim <= 1 else "x".join(map(str, a.shape))


def _regular_shape(value, at: str, key: str) -> tuple[int, ...]:
    shape = []
    level = value
    while isinstance(level, list):
        if not level:
            raise Problem(f"{at}: {key!r} holds an empty list")
        shape.append(len(level))
        level = level[0]
    _check_regular(value, tuple(shape), at, key)
    return tuple(shape)


def _check_regular(value, shape: tuple[int, ...], at: str, key: str) -> None:
    if not shape:
        if isinstance(value, list):
            raise Problem(f"{at}: {key!r} is not a regular nested list")
        return
    if not isinstance(value, list) or len(value) != shape[0]:
        raise Problem(f"{at}: {key!r} is not a regular nested list")
    for item in value:
        _check_regular(item, shape[1:], at, key)


def _flatten(value):
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _show(value) -> str:
    text_ = repr(value)
    return text_ if len(text_) <= 40 else text_[:37] + "..."
