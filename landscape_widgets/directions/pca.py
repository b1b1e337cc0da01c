"""PCA directions of an optimization path (Li et al. 2018, arXiv 1712.09913, §7).

The rows ``m_i = theta_i - theta_final`` (``theta_final``: the model's current weights, where the plane is
centred) go through an exact PCA (:class:`~landscape_widgets.embedding.SnapshotPCA`, equal to scikit-learn's, which
also centres the columns); ``d1, d2`` are the first two components: unit,
orthogonal directions in raw parameter units, so the normalization defaults to "none".  ``meta["path"]`` holds
each ``m_i`` projected on the directions (least squares on ``[d1 d2]``, the dot products when they are
orthonormal), ``meta["default_span"]`` a grid that covers the path with a margin.

Random-walk baseline (Antognini & Sohl-Dickstein 2018, arXiv 1806.08805): the first PCs of a random walk in high
dimension also explain most of its variance, so ``meta["random_walk_explained_variance"]`` gives the same ratios
for Gaussian random walks of the same length n and dimension P.  They depend only on the n x n Gram matrix
``C L Z Z^T L^T C`` (L: cumulative sum, C: centring, Z: n x P Gaussian); ``Z Z^T`` is Wishart(P, I_n) and is drawn
by Bartlett's decomposition in O(n^2), so the baseline costs nothing even for millions of parameters.
"""
from __future__ import annotations

import numpy as np
import torch

from ..embedding import SnapshotPCA, blocks
from .._checks import check_seed
from .kind import DirectionKind, Made
from .normalization import ignored, normalize

DEFAULT_NORMALIZATION = "none"
MARGIN = 0.25  # of the path's extent on each side, so the path never touches the edge of the grid
BASELINE_DRAWS = 10
PC_NAMES = ("1st", "2nd", "3rd")


def random_walk_explained_variance(n, dim, count, *, seed=0, draws=BASELINE_DRAWS) -> np.ndarray:
    """Mean explained-variance ratios of the first ``count`` PCs of ``draws`` Gaussian random walks of ``n``
    points in ``dim`` dimensions (the walk starts with a step; where it starts does not matter after centring)."""
    rng = np.random.default_rng(seed)
    lower = np.tril(np.ones((n, n)))
    centre = np.eye(n) - 1.0 / n
    out = np.zeros(count)
    for _ in range(draws):
        if dim >= n:  # Bartlett: Z Z^T = A A^T, A lower triangular, A_ii^2 ~ chi2(dim - i), A_ij ~ N(0, 1)
            a = np.tril(rng.standard_normal((n, n)), -1)
            a[np.diag_indices(n)] = np.sqrt(rng.chisquare(dim - np.arange(n)))
        else:
            a = rng.standard_normal((n, dim))
        b = centre @ lower @ a
        ev = np.linalg.eigvalsh(b @ b.T)[::-1]
        out += ev[:count] / ev.sum()
    return out / draws


def _path_span(path):
    spans = []
    for k in range(path.shape[1]):
        lo, hi = min(path[:, k].min(), 0.0), max(path[:, k].max(), 0.0)
        pad = MARGIN * (hi - lo) if hi > lo else 1.0
        spans.append((float(lo - pad), float(hi + pad)))
    return tuple(spans)


def pca_directions(private, count, *, trajectory=None, normalization=None, ignore="biasbn", seed=0, **_) -> Made:
    from ..trajectory import Trajectory

    if trajectory is None:
        raise ValueError("directions='pca' needs the optimization path: pass trajectory=lw.Trajectory() recorded "
                         "during training (traj.record(model) every step or epoch)")
    if not isinstance(trajectory, Trajectory):
        raise TypeError(f"trajectory must be an lw.Trajectory, got {type(trajectory).__name__}")
    seed = check_seed(seed)
    normalization = normalization or DEFAULT_NORMALIZATION
    n = len(trajectory)
    if n < count + 1:
        raise ValueError(f"directions='pca' needs at least {count + 1} snapshots in the trajectory, it holds {n}; "
                         "record more steps (or epochs)")
    base = torch.cat([private.base[name].detach().reshape(-1).cpu().double() for name in private.names]).numpy()
    M = trajectory.matrix(private.names)
    M -= base.astype(np.float32)  # float32 differences of nearby float32 weights are (nearly) exact
    end = float(np.linalg.norm(M[-1].astype(np.float64)))
    # with ignore="biasbn" the bias and norm-layer entries take no part (Li et al.'s ``ignore_biasbn``)
    keep = np.concatenate([np.full(private.base[name].numel(), not ignored(private.base[name], ignore))
                           for name in private.names])
    M[:, ~keep] = 0.0
    pca = SnapshotPCA(M)
    if pca.rank < count:
        raise ValueError(f"the path spans {pca.rank} direction(s) only (with ignore={ignore!r}); a plane needs "
                         f"{count}: record more, or more varied, snapshots")
    sizes = [private.base[name].numel() for name in private.names]
    dirs = []
    for comp in pca.components(count):
        parts = np.split(comp, np.cumsum(sizes)[:-1])
        raw = {name: torch.from_numpy(part.reshape(private.base[name].shape).copy()).to(
            device=private.device, dtype=private.base[name].dtype) for name, part in zip(private.names, parts)}
        dirs.append(raw if normalization == "none" else normalize(raw, private.base, normalization, ignore))
    D = np.stack([torch.cat([d[name].reshape(-1).cpu().double() for name in private.names]).numpy()
                  for d in dirs], axis=1)
    DtM = sum(D[sl].T @ M[:, sl].T.astype(np.float64) for sl in blocks(len(base)))
    path = np.linalg.solve(D.T @ D, DtM).T  # least squares on [d1 d2]: the dot products when orthonormal
    meta = {"direction_kind": "pca", "seed": seed, "normalization": normalization, "ignore": ignore,
            "explained_variance": pca.explained_variance_ratio(count).tolist(),
            "random_walk_explained_variance": random_walk_explained_variance(
                n, int(keep.sum()), count, seed=seed).tolist(),
            "random_walk_draws": BASELINE_DRAWS, "num_snapshots": n, "trajectory_stride": trajectory.stride,
            "trajectory_end_distance": end, "path_steps": trajectory.steps.tolist(),
            "path_losses": trajectory.losses.tolist()}
    return Made(dirs, meta, span=_path_span(path), path=path)


class PCAKind(DirectionKind):
    """The first principal components of the optimization path around the model (Li et al. 2018, §7)."""

    name = "pca"
    needs = ("trajectory",)
    preparing = "PCA of the trajectory"
    default_normalization = DEFAULT_NORMALIZATION
    chooses_span = True

    def make(self, private, count, **options) -> Made:
        return pca_directions(private, count, **options)

    def axis_labels(self, meta):
        explained = meta.get("explained_variance")
        if explained and len(explained) >= 2:  # Li et al.'s "1st PC: 95.36 %"
            return tuple(f"{axis}  ({PC_NAMES[k]} PC: {100 * explained[k]:.2f} %)" for k, axis in enumerate("αβ"))
        return super().axis_labels(meta)

    def describe(self, meta, span=None):
        pct = lambda v: "/".join(f"{100 * float(x):.1f}%" for x in (v or [])[:2])  # noqa: E731
        return (f"PCA plane of the trajectory (Li et al. §7): explained variance "
                f"{pct(meta.get('explained_variance'))}, random walk {pct(meta.get('random_walk_explained_variance'))}")
