"""Direction kinds: one module per seed method.  ``make_directions`` dispatches on the kind.

A new kind registers a function ``f(private, count, **options) -> (list of direction dicts, meta)`` in ``KINDS``.
"""
from __future__ import annotations

from .explicit import explicit_directions
from .normalization import NORMALIZATIONS, check_ignore, check_normalization, cosine, normalize
from .gaussian import random_directions
from .hessian import hessian_directions
from .pca import pca_directions

KINDS = {"random": random_directions}
KINDS["hessian"] = hessian_directions  # Böttcher & Wheeler 2022; Landscape passes objective= and data=
KINDS["pca"] = pca_directions  # Li et al. 2018 §7, needs trajectory=


def register(kind, fn):
    KINDS[kind] = fn


def make_directions(spec, private, count, *, argname, **options):
    check_normalization(options.get("normalization"))
    check_ignore(options.get("ignore", "biasbn"))
    if isinstance(spec, str):
        if spec not in KINDS:
            raise ValueError(f"{argname}={spec!r} is not a known direction kind; pass one of "
                             f"{', '.join(repr(k) for k in KINDS)} or explicit direction dict(s)")
        return KINDS[spec](private, count, **options)
    given = [spec] if isinstance(spec, dict) else list(spec) if isinstance(spec, (tuple, list)) else None
    if given is None or len(given) != count:
        want = "a dict {parameter name: tensor}" if count == 1 else "a pair (d1, d2) of dicts {parameter name: tensor}"
        raise TypeError(f"{argname} must be a kind name ({', '.join(repr(k) for k in KINDS)}) or {want}")
    return explicit_directions(private, given, argname=argname, **options)


__all__ = ["KINDS", "NORMALIZATIONS", "cosine", "make_directions", "normalize", "register"]
