"""Direction normalization (Li et al. 2018, arXiv 1712.09913, §4 "Filter-Wise Normalization").

Each direction is a dict ``{parameter name: tensor}``.  With ``ignore="biasbn"`` tensors of dim <= 1 (biases,
norm-layer affine parameters) get a zero direction; the remaining tensors are scaled by

- ``"filter"``: each slice ``k`` along axis 0, ``d[k] <- d[k] * ||p[k]|| / (||d[k]|| + 1e-10)`` (Li et al. eq. in §4;
  a 1-D tensor, kept with ``ignore=None``, has one slice per element),
- ``"layer"``: the whole tensor, ``d <- d * ||p|| / (||d|| + 1e-10)``,
- ``"model"``: all covered tensors together, so that ``||d_all|| = ||p_all||`` over the tensors the direction covers,
- ``"none"``: unchanged.
"""
from __future__ import annotations

import torch

NORMALIZATIONS = ("filter", "layer", "model", "none")
IGNORES = ("biasbn", None)
EPS = 1e-10


def check_normalization(normalization, *, allow_none=True):
    if normalization is None and allow_none:
        return
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is not known; pass one of "
                         f"{', '.join(repr(n) for n in NORMALIZATIONS)} or None for the default")


def check_ignore(ignore):
    if ignore not in IGNORES:
        raise ValueError(f"ignore={ignore!r} is not known; pass 'biasbn' (zero direction for tensors with "
                         "dim <= 1) or None (keep them)")


def ignored(tensor: torch.Tensor, ignore) -> bool:
    return ignore == "biasbn" and tensor.dim() <= 1


def normalize(direction: dict, params: dict, normalization: str, ignore) -> dict:
    """Return a new, normalized direction; ``params`` are the weights it perturbs (same names and shapes)."""
    check_normalization(normalization, allow_none=False)
    check_ignore(ignore)
    out = {}
    for name, d in direction.items():
        p = params[name]
        if ignored(p, ignore):
            out[name] = torch.zeros_like(d)
        elif normalization == "filter":
            if d.dim() == 0:
                out[name] = d * p.abs() / (d.abs() + EPS)
            else:
                d2 = d.reshape(d.shape[0], -1)
                p2 = p.reshape(p.shape[0], -1)
                scale = p2.norm(dim=1, keepdim=True) / (d2.norm(dim=1, keepdim=True) + EPS)
                out[name] = (d2 * scale).reshape(d.shape)
        elif normalization == "layer":
            out[name] = d * (p.norm() / (d.norm() + EPS))
        else:
            out[name] = d.clone()
    if normalization == "model":
        covered = [n for n in out if not ignored(params[n], ignore)]
        d_norm = torch.sqrt(sum((out[n].double() ** 2).sum() for n in covered)) if covered else 0.0
        p_norm = torch.sqrt(sum((params[n].double() ** 2).sum() for n in covered)) if covered else 0.0
        scale = float(p_norm / (d_norm + EPS)) if covered else 1.0
        for n in covered:
            out[n] = out[n] * scale
    return out


def flat_dot(a: dict, b: dict) -> float:
    return float(sum((a[n].double() * b[n].double()).sum() for n in a))


def cosine(a: dict, b: dict) -> float:
    na, nb = flat_dot(a, a) ** 0.5, flat_dot(b, b) ** 0.5
    if na == 0 or nb == 0:
        return float("nan")
    return flat_dot(a, b) / (na * nb)
