"""Hessian directions (Böttcher & Wheeler 2022, arXiv 2208.13219, §3): the unit eigenvectors of the largest and of
the most negative eigenvalue of the Hessian of the full-data loss, found by Lanczos (``hessian.lanczos``).

A random plane shows on average the curvature ``tr(H)/N`` along both axes (their eq. 10), so a saddle looks like a
minimum; along ``v_max`` and ``v_min`` the plane shows the two extreme curvatures themselves.  The surface's second
difference at the centre is ``lambda_max`` along ``d1`` and ``lambda_min`` along ``d2``, so the default
normalization is ``"none"`` (``ignore`` only applies with another normalization, which would break that).

Default span: with ``L(theta + a v_max) ~ L0 + a g.v_max + lambda_max a^2 / 2``, the half-width
``s = sqrt(2 R / lambda_max)`` makes the mean of the two edges of ``d1`` rise by ``R = max(L0, 0.1)`` (the gradient
term cancels between ``+s`` and ``-s``): the loss doubles (or rises by 0.1 for a nearly zero loss), a clearly visible
bowl at a minimum.  Both axes use ``s`` so that the two curvatures compare at the same scale.
Eigenvectors are signed so that their entry of largest magnitude is positive.
"""
from __future__ import annotations

import math

import torch

from ..hessian.lanczos import extreme_eigenpairs
from ..hessian.operators import make_operator
from ..hessian.spectrum import seed_streams
from .._checks import check_seed
from .kind import DirectionKind, Made
from .normalization import normalize

DEFAULT_NORMALIZATION = "none"
MIN_RISE = 0.1
SPAN_RULE = ("s = sqrt(2 * max(L0, 0.1) / lambda_max): the quadratic model doubles the loss (or adds 0.1) on average "
             "over the two edges of d1")


def default_span(loss0: float, lambda_max: float) -> float:
    if not (lambda_max > 0 and math.isfinite(lambda_max)):
        return 1.0  # no positive curvature to scale by
    rise = max(loss0, MIN_RISE) if math.isfinite(loss0) else MIN_RISE
    return math.sqrt(2.0 * rise / lambda_max)


def hessian_directions(private, count, *, objective=None, data=None, seed=0, normalization=None, ignore="biasbn",
                       tol=1e-6, cancel=None, progress=False, curvature="hessian", **_) -> Made:
    if objective is None or data is None:
        raise TypeError("the 'hessian' direction kind needs the loss and the data; use it through "
                        "Landscape.plane(directions='hessian') or Landscape.line(direction='hessian')")
    seed = check_seed(seed)
    normalization = normalization or DEFAULT_NORMALIZATION
    if count > 2:
        raise ValueError(f"the 'hessian' kind gives at most 2 directions (v_max, v_min), {count} were asked for")
    op = make_operator(curvature, private, data, objective, cancel=cancel)
    if op.num_parameters < 2 and count == 2:
        raise ValueError("the 'hessian' plane needs at least 2 parameters")
    rng_top, rng_bottom, _, _ = seed_streams(seed)
    with op.progress("Hessian directions", progress) as stage, op.running():
        stage("lambda_max")
        lmax, vmax, _ = extreme_eigenpairs(op, 1, "LA", rng=rng_top, tol=tol)
        pairs = [(float(lmax[0]), vmax[:, 0])]
        if count == 2:
            stage("lambda_min")
            lmin, vmin, _ = extreme_eigenpairs(op, 1, "SA", rng=rng_bottom, tol=tol)
            pairs.append((float(lmin[0]), vmin[:, 0]))
        loss0 = op.loss if op.loss is not None else float("nan")
    dirs = [op.unflatten(torch.from_numpy(v).to(device=private.device, dtype=op.dtype).contiguous())
            for _, v in pairs]
    dirs = [{n: t.clone() for n, t in d.items()} for d in dirs]
    if normalization != "none":
        dirs = [normalize(d, private.base, normalization, ignore) for d in dirs]
    scale = default_span(loss0, pairs[0][0])
    meta = {"direction_kind": "hessian", "seed": seed, "normalization": normalization,
            "ignore": ignore if normalization != "none" else None,
            "lambda_max": pairs[0][0], "lambda_min": pairs[1][0] if count == 2 else None,
            "eigen_hvps": op.hvps, "curvature": curvature, "eigen_data": data.describe(), "span_scale": scale, "span_rule": SPAN_RULE, "center_loss": loss0}
    return Made(dirs, meta, span=((-scale, scale),) * count)


class HessianKind(DirectionKind):
    """Unit eigenvectors of lambda_max and of the most negative eigenvalue (Böttcher & Wheeler 2022, §3)."""

    name = "hessian"
    needs = ("loss",)
    preparing = "finding the Hessian's extreme eigenvectors (Lanczos)"
    default_normalization = DEFAULT_NORMALIZATION
    chooses_span = True
    max_count = 2

    def make(self, private, count, **options) -> Made:
        return hessian_directions(private, count, **options)

    def describe(self, meta, span=None):
        known = self.curvatures(meta)
        eig = f"λmax {float(known[0]):.4g}, λmin {float(known[1]):.4g}" if known is not None else ""
        return f"Hessian plane (eigenvectors of λmax, λmin) {eig}"

    def curvatures(self, meta):
        lmax, lmin = meta.get("lambda_max"), meta.get("lambda_min")
        return None if lmax is None or lmin is None else (lmax, lmin)

    def axis_labels(self, meta):
        return "α  (eigenvector of λ_max)", "β  (eigenvector of λ_min)"
