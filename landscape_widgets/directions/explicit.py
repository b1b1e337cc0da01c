"""User-given directions: dicts ``{parameter name: tensor}`` shaped like ``model.named_parameters()``."""
from __future__ import annotations

import torch

from .kind import DirectionKind, Made
from .normalization import normalize

DEFAULT_NORMALIZATION = "none"


def check_direction(d, private, argname):
    if not isinstance(d, dict):
        raise TypeError(f"{argname} must be a dict {{parameter name: tensor}} shaped like "
                        f"model.named_parameters(), got {type(d).__name__}")
    d = private.canonical(d, argname)
    missing = [n for n in private.names if n not in d]
    extra = [n for n in d if n not in private.params]
    if missing:
        raise ValueError(f"{argname} lacks tensor(s) for parameter(s) {missing[:5]}; give one tensor per "
                         "moved parameter (zeros to leave one fixed)")
    if extra:
        raise ValueError(f"{argname} has tensor(s) for unknown parameter(s) {extra[:5]}; the model's are "
                         f"{private.names[:5]}{'...' if len(private.names) > 5 else ''}")
    fixed = [n for n in d if n not in private.names and isinstance(d[n], torch.Tensor) and d[n].count_nonzero()]
    if fixed:
        raise ValueError(f"{argname} moves parameter(s) {fixed[:5]}, which this Landscape keeps fixed (params rule "
                         f"{private.params_rule!r}); pass params= to lw.Landscape to move them, or zeros there")
    out = {}
    for n in private.names:
        t = d[n]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{argname}[{n!r}] must be a tensor, got {type(t).__name__}")
        shape = tuple(private.base[n].shape)
        if tuple(t.shape) != shape:
            raise ValueError(f"{argname}[{n!r}] has shape {tuple(t.shape)}; parameter {n!r} has shape {shape}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{argname}[{n!r}] contains NaN or inf; directions must be finite")
        out[n] = t.detach().to(device=private.device, dtype=private.base[n].dtype)
    return out


def explicit_directions(private, given, *, normalization=None, ignore="biasbn", argname="directions", **_):
    normalization = normalization or DEFAULT_NORMALIZATION
    dirs = [check_direction(d, private, f"{argname}[{i}]" if len(given) > 1 else argname)
            for i, d in enumerate(given)]
    if normalization == "none" and ignore is None:
        out = dirs
    else:
        out = [normalize(d, private.base, normalization, ignore) for d in dirs]
    meta = {"direction_kind": "explicit", "seed": None, "normalization": normalization, "ignore": ignore}
    return Made(out, meta)


class ExplicitKind(DirectionKind):
    """Directions the caller gives as dicts (raw units by default)."""

    name = "explicit"
    default_normalization = DEFAULT_NORMALIZATION

    def make(self, private, count, *, given=(), **options) -> Made:
        return explicit_directions(private, given, **options)

    def describe(self, meta, span=None):
        return "plane along given directions"
