"""Argument checks shared by the compute API and the widgets: clear messages that say what to pass."""
from __future__ import annotations

import math
import numbers

import numpy as np


def check_int(value, name, *, low, high=None, hint=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an int >= {low}{hint}, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name}={value} is out of range; pass an int {rng}{hint}")
    return value


def check_resolution(resolution, name="resolution", *, high=None):
    if isinstance(resolution, (tuple, list)):
        if len(resolution) != 2:
            raise ValueError(f"{name} must be N or a pair (Nx, Ny), got {resolution!r}")
        return tuple(check_int(r, name, low=2, high=high, hint=" (points per axis)") for r in resolution)
    n = check_int(resolution, name, low=2, high=high, hint=" (points per axis)")
    return n, n


def _finite(x, name):
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(float(x)):
        raise ValueError(f"{name} must be a finite number, got {x!r}")
    return float(x)


def check_range(rng, name):
    if not isinstance(rng, (tuple, list)) or len(rng) != 2:
        raise ValueError(f"{name} must be a pair (start, stop), got {rng!r}")
    a, b = (_finite(v, name) for v in rng)
    if not a < b:
        raise ValueError(f"{name}=({a}, {b}) is empty or reversed; pass (start, stop) with start < stop")
    return a, b


def check_span(span, name="span", *, axes=1):
    """``s`` -> ``(-s, s)`` on every axis, or explicit ranges: ``(a0, a1)`` for one axis, ``((a0, a1), (b0, b1))``."""
    if isinstance(span, numbers.Real) and not isinstance(span, bool):
        s = _finite(span, name)
        if s <= 0:
            raise ValueError(f"{name}={span} must be > 0; pass a positive half-width or explicit ranges")
        return [(-s, s)] * axes
    if axes == 1:
        return [check_range(span, name)]
    if isinstance(span, (tuple, list)) and len(span) == axes:
        return [check_range(r, f"{name}[{k}]") for k, r in enumerate(span)]
    raise ValueError(f"{name} must be a positive number s (giving -s..s) or "
                     f"{'(start, stop)' if axes == 1 else '((a0, a1), (b0, b1))'}, got {span!r}")


def axis(rng, n):
    return np.linspace(rng[0], rng[1], n)


def check_seed(seed) -> int:
    """A seed of the private generators (directions, Lanczos starts, embeddings): an int in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        if not isinstance(seed, np.integer):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        seed = int(seed)
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed={seed} is out of range; pass an int in [0, 2**63)")
    return seed
