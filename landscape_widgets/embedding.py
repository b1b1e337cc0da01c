"""Embeddings of optimization paths: PCA, UMAP or an autoencoder, with the measures that say whether to trust them.

- PCA (Li et al. 2018, arXiv 1712.09913, §7) by scikit-learn; UMAP (McInnes et al. 2018, arXiv 1802.03426) by
  umap-learn; an autoencoder in torch (as Neuro-Visualizer, Elhamod & Karpatne 2023, arXiv 2309.14601).
- ``trustworthiness``: Venna & Kaski (2001), scikit-learn's ``sklearn.manifold.trustworthiness`` with
  ``k = meta["n_neighbors"]``: 1 when every embedding neighbour is a true neighbour.
- ``reconstruction_error``: in-sample, relative, ``sum ||x - x_hat||^2 / sum ||x - mean||^2``; PCA maps back with
  its inverse transform (this equals ``1 - sum(explained_variance)``), the autoencoder with its decoder, UMAP with
  its inverse transform where umap-learn has one (else None, the reason in ``meta``).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from . import __version__
from ._checks import check_int
from .directions.gaussian import check_seed
from .results import Result, register_result

METHODS = ("pca", "umap", "autoencoder")
# float64 makes the in-sample identities exact to ~1e-12; above this many entries stay in float32 to halve memory
FLOAT64_MAX_ENTRIES = 2 ** 25


@register_result
class Embedding(Result):
    """Snapshots of one or more trajectories embedded in ``dims`` dimensions.

    ``coords[i]`` is snapshot i (runs stacked in order, ``run[i]`` says which; ``steps``, ``losses`` as recorded),
    ``trustworthiness`` and ``reconstruction_error`` as in the module docstring, ``explained_variance`` the PCA's
    explained-variance ratios (None for the other methods), ``meta`` the settings.
    """

    _arrays = ("coords", "steps", "losses", "run", "trustworthiness")
    _optional = ("explained_variance", "reconstruction_error")

    def __init__(self, coords, steps, losses, run, trustworthiness, reconstruction_error=None,
                 explained_variance=None, meta=None, inverse=None):
        self.coords = np.asarray(coords, dtype=np.float64)
        self.steps = np.asarray(steps, dtype=np.int64)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.run = np.asarray(run, dtype=np.int64)
        self.trustworthiness = float(trustworthiness)
        self.reconstruction_error = None if reconstruction_error is None else float(reconstruction_error)
        self.explained_variance = None if explained_variance is None else np.asarray(explained_variance, float)
        self.meta = dict(meta or {})
        self._inverse = inverse

    def inverse_transform(self, coords) -> np.ndarray:
        """Map embedding coordinates ``[m, dims]`` back to flat parameter vectors ``[m, P]`` (PCA, autoencoder and
        UMAP where it has an inverse; not available on a loaded result)."""
        if self._inverse is None:
            raise ValueError(f"this {self.meta.get('method')} embedding has no inverse transform"
                             + (" (results loaded from disk keep none)" if self.meta.get("method") != "umap" else ""))
        coords = np.asarray(coords, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] != self.coords.shape[1]:
            raise ValueError(f"coords must be [m, {self.coords.shape[1]}], got shape {coords.shape}")
        return self._inverse(coords)

    @classmethod
    def _from_payload(cls, arrays, meta):
        obj = super()._from_payload(arrays, meta)
        obj.trustworthiness = float(obj.trustworthiness)
        if obj.reconstruction_error is not None:
            obj.reconstruction_error = float(obj.reconstruction_error)
        obj._inverse = None
        return obj


def _check_trajectories(trajectories):
    from .trajectory import Trajectory

    trajs = [trajectories] if isinstance(trajectories, Trajectory) else trajectories
    if not isinstance(trajs, (list, tuple)) or not trajs or not all(isinstance(t, Trajectory) for t in trajs):
        raise TypeError("trajectories must be an lw.Trajectory or a non-empty list of them")
    for k, t in enumerate(trajs):
        if len(t) == 0:
            raise ValueError(f"trajectory {k} is empty; record snapshots with traj.record(model) first")
        if t.names != trajs[0].names or t.shapes != trajs[0].shapes:
            raise ValueError(f"trajectory {k} records other parameters than trajectory 0; embed runs of one "
                             "architecture together")
    return list(trajs)


def total_variation(X, mean) -> float:
    """``sum_i ||x_i - mean||^2``, row by row so no second [n, P] array is made."""
    return float(sum(((x.astype(np.float64) - mean) ** 2).sum() for x in X))


def residual(X, X_hat) -> float:
    return float(sum(((x.astype(np.float64) - xh) ** 2).sum() for x, xh in zip(X, X_hat)))


def check_spread(X, what="snapshots"):
    """The rows must be finite and not all equal; returns their mean and total variation."""
    n = len(X)
    bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad):
        raise ValueError(f"{what} {bad[:5].tolist()} contain NaN or inf weights (a diverged run); drop them "
                         "before embedding")
    mean = X.mean(axis=0, dtype=np.float64)
    tot = total_variation(X, mean)
    if not tot > 0:
        raise ValueError(f"all {n} {what} are identical, so there is no path to embed; record the model while "
                         "it trains (after optimizer steps)")
    return mean, tot


def embed(trajectories, *, method="pca", dims=2, seed=0, n_neighbors=None, trust_neighbors=None, labels=None,
          epochs=2000, hidden=64) -> Embedding:
    """Embed the snapshots of one trajectory, or of several together (one picture to compare optimizers).

    ``method``: "pca", "umap" (``n_neighbors``: UMAP's, default min(15, n - 1)) or "autoencoder" (``hidden``
    units, ``epochs`` of full-batch Adam, on the exact PCA coordinates of the centred snapshots).  ``seed`` fixes
    UMAP and the autoencoder through private generators.  ``trust_neighbors``: k of the trustworthiness, default
    min(5, (n - 1) // 2) (it needs k < n / 2).
    """
    trajs = _check_trajectories(trajectories)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; pass one of {', '.join(map(repr, METHODS))}")
    dims = check_int(dims, "dims", low=1, high=3, hint=" (2 or 3 for a picture)")
    seed = check_seed(seed)
    X = np.concatenate([t.matrix() for t in trajs], axis=0)
    n = len(X)
    if n < max(3, dims + 1):
        raise ValueError(f"an embedding in {dims} dimensions needs at least {max(3, dims + 1)} snapshots, the "
                         f"trajectories hold {n}; record more steps (or epochs)")
    if X.size <= FLOAT64_MAX_ENTRIES:
        X = X.astype(np.float64)
    _mean, tot = check_spread(X)
    k = (min(5, (n - 1) // 2) if trust_neighbors is None
         else check_int(trust_neighbors, "trust_neighbors", low=1, high=(n - 1) // 2, hint=" (k < n / 2)"))
    meta = {"library": "landscape_widgets", "version": __version__, "kind": "embedding", "method": method,
            "dims": dims, "seed": seed, "n_neighbors": k, "num_snapshots": n,
            "num_parameters": int(X.shape[1]), "reconstruction": "in-sample, sum ||x - x_hat||^2 / sum ||x - mean||^2",
            "labels": [str(s) for s in labels] if labels is not None else [f"run {i}" for i in range(len(trajs))],
            "snapshots_per_run": [len(t) for t in trajs], "strides": [t.stride for t in trajs]}
    if len(meta["labels"]) != len(trajs):
        raise ValueError(f"labels has {len(meta['labels'])} entries for {len(trajs)} trajectories")
    explained = None
    if method == "pca":
        coords, err, explained, inverse = _pca(X, dims, tot)
    elif method == "umap":
        nn = (min(15, n - 1) if n_neighbors is None
              else check_int(n_neighbors, "n_neighbors", low=2, high=n - 1, hint=" (UMAP's, < snapshots)"))
        meta["umap_n_neighbors"] = nn
        coords, err, inverse, reason = _umap(X, dims, nn, seed, tot)
        if reason:
            meta["reconstruction_error_reason"] = reason
    else:
        epochs = check_int(epochs, "epochs", low=1)
        hidden = check_int(hidden, "hidden", low=1)
        coords, err, inverse, ae_meta = _autoencoder(X, tot, dims, seed, epochs, hidden)
        meta.update(ae_meta)
    from sklearn.manifold import trustworthiness

    trust = trustworthiness(X, coords, n_neighbors=k)
    return Embedding(coords, np.concatenate([t.steps for t in trajs]), np.concatenate([t.losses for t in trajs]),
                     np.concatenate([np.full(len(t), i) for i, t in enumerate(trajs)]), trust, err, explained,
                     meta, inverse)


def _pca(X, dims, tot):
    from sklearn.decomposition import PCA

    pca = PCA(n_components=dims, svd_solver="full")
    coords = pca.fit_transform(X)
    err = residual(X, pca.inverse_transform(coords)) / tot
    return coords, err, pca.explained_variance_ratio_.copy(), pca.inverse_transform


def _umap(X, dims, n_neighbors, seed, tot):
    import umap

    reducer = umap.UMAP(n_components=dims, n_neighbors=n_neighbors, random_state=seed, transform_seed=seed)
    with warnings.catch_warnings():
        # "n_jobs overridden to 1 by setting random_state": the determinism we ask for
        warnings.simplefilter("ignore", UserWarning)
        coords = reducer.fit_transform(X).astype(np.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            err = residual(X, reducer.inverse_transform(coords)) / tot
    except Exception as exc:  # umap-learn refuses some settings (e.g. a 1-D or degenerate embedding)
        return coords, None, None, f"umap-learn's inverse_transform failed: {type(exc).__name__}: {exc}"
    return coords, err, lambda c: reducer.inverse_transform(np.asarray(c, np.float32)).astype(np.float64), None


def _autoencoder(X, tot, dims, seed, epochs, hidden):
    """Encoder q -> hidden -> dims, decoder dims -> hidden -> q (tanh), on the PCA coordinates of the centred
    snapshots: they keep every direction the n snapshots span when q = n - 1, so the network stays small for any P,
    and the part outside the q components enters the error exactly (it is orthogonal to them)."""
    from sklearn.decomposition import PCA

    n = len(X)
    q = min(n - 1, X.shape[1], 64)
    pca = PCA(n_components=q, svd_solver="full")
    P = pca.fit_transform(X)
    outside = max(tot - float((P.astype(np.float64) ** 2).sum()), 0.0)
    scale = float(np.sqrt((P ** 2).mean())) or 1.0
    gen = torch.Generator().manual_seed(seed)
    sizes = [(q, hidden), (hidden, dims), (dims, hidden), (hidden, q)]
    weights = []
    for fan_in, fan_out in sizes:  # LeCun-normal from the private generator: the global RNG is left alone
        w = (torch.randn(fan_in, fan_out, generator=gen, dtype=torch.float64) / fan_in ** 0.5).requires_grad_()
        weights += [w, torch.zeros(fan_out, dtype=torch.float64, requires_grad=True)]

    def encode(x):
        return torch.tanh(x @ weights[0] + weights[1]) @ weights[2] + weights[3]

    def decode(z):
        return torch.tanh(z @ weights[4] + weights[5]) @ weights[6] + weights[7]

    data = torch.from_numpy(np.asarray(P, dtype=np.float64) / scale)
    opt = torch.optim.Adam(weights, lr=1e-2)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            loss = ((decode(encode(data)) - data) ** 2).mean()
            loss.backward()
            opt.step()
    with torch.no_grad():
        coords = encode(data)
        P_hat = (decode(coords) * scale).numpy()
    err = (float(((P - P_hat) ** 2).sum()) + outside) / tot

    def inverse(c):
        with torch.no_grad():
            return pca.inverse_transform(decode(torch.as_tensor(c, dtype=torch.float64)).numpy() * scale)

    meta = {"autoencoder": {"hidden": hidden, "epochs": epochs, "optimizer": "Adam(lr=1e-2), full batch",
                            "pca_components": q, "final_mse": float(loss.detach())}}
    return coords.numpy(), err, inverse, meta
