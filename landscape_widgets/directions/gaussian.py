"""Random Gaussian directions (Li et al. 2018, arXiv 1712.09913, §4), filter-normalized by default.

Directions are drawn on the CPU from a private ``torch.Generator`` seeded with ``seed``, parameter by parameter in
``named_parameters()`` order, first d1 then d2: the same seed gives the same directions on any device and any run,
a line's direction equals the d1 of a plane with the same seed, and the global RNG is untouched.
"""
from __future__ import annotations

import torch

from .._checks import check_seed
from .kind import DirectionKind, Made
from .normalization import normalize

DEFAULT_NORMALIZATION = "filter"


def random_directions(private, count, *, seed=0, normalization=None, ignore="biasbn", **_) -> Made:
    seed = check_seed(seed)
    normalization = normalization or DEFAULT_NORMALIZATION
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dirs = []
    for _k in range(count):
        raw = {}
        for info in private.info:
            t = torch.randn(info.shape, generator=gen, dtype=torch.float32)
            raw[info.name] = t.to(device=private.device, dtype=info.dtype)
        dirs.append(normalize(raw, private.base, normalization, ignore))
    meta = {"direction_kind": "random", "seed": seed, "normalization": normalization, "ignore": ignore,
            "distribution": "gaussian"}
    return Made(dirs, meta)


class RandomKind(DirectionKind):
    """Gaussian directions from a private generator, filter-normalized by default (Li et al. 2018, §4)."""

    name = "random"
    default_normalization = DEFAULT_NORMALIZATION
    controls = ("seed", "normalization", "seeds")
    seeded = True

    def make(self, private, count, **options) -> Made:
        return random_directions(private, count, **options)

    def describe(self, meta, span=None):
        text = f"{meta.get('normalization')}-normalized random plane, seed {meta.get('seed')}"
        return text + (f", span ±{span:g}" if span is not None else "")
