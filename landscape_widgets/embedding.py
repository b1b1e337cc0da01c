"""Embeddings of optimization paths: PCA, UMAP or an autoencoder, with the measures that say whether to trust them.

- PCA (Li et al. 2018, arXiv 1712.09913, §7) by :class:`SnapshotPCA` (exact, tested equal to scikit-learn's);
  UMAP (McInnes et al. 2018, arXiv 1802.03426) by umap-learn; an autoencoder in torch (as Neuro-Visualizer,
  Elhamod & Karpatne 2023, arXiv 2309.14601).
- ``trustworthiness``: Venna & Kaski (2001), scikit-learn's ``sklearn.manifold.trustworthiness`` with
  ``k = n_neighbors``: 1 when every embedding neighbour is a true neighbour.
- ``reconstruction_error``: in-sample, relative, ``sum ||x - x_hat||^2 / sum ||x - mean||^2``; PCA maps back with
  its inverse transform (this equals ``1 - sum(explained_variance)``), the autoencoder with its decoder, UMAP with
  its inverse transform where umap-learn has one (else None, the reason in ``reconstruction_error_reason``).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from contextlib import contextmanager

from ._version import __version__
from ._checks import check_int
from ._checks import check_seed
from .results import BASE_FIELDS, Field, Result, register_result

METHODS = ("pca", "umap", "autoencoder")
BLOCK = 2 ** 16  # columns per float64 block: the [n, P] snapshots are never copied whole
RANK_TOL = 1e-12  # eigenvalues of the Gram matrix below this fraction of the largest are round-off, not directions
AE_MAX_COMPONENTS = 64
# umap-learn's inverse_transform optimizes every point in parameter space: minutes for 33 snapshots of 1M parameters
# (benchmarks/trajectory.py), so by default it runs only up to this many snapshot entries
UMAP_INVERSE_MAX_ENTRIES = 2 ** 24


@register_result
class Embedding(Result):
    """Snapshots of one or more trajectories embedded in ``dims`` dimensions.

    ``coords[i]`` is snapshot i (runs stacked in order, ``run[i]`` says which; ``steps``, ``losses`` as recorded),
    ``trustworthiness`` and ``reconstruction_error`` as in the module docstring, ``explained_variance`` the PCA's
    explained-variance ratios (None for the other methods), ``meta`` the settings.

    Typed fields (keyword arguments, else read from ``meta``): ``method``, ``dims``, ``n_neighbors`` (k of the
    trustworthiness), ``labels`` (one per run), ``strides`` (each trajectory's recording stride),
    ``umap_n_neighbors`` (UMAP's own), ``reconstruction_error_reason`` (why there is no reconstruction error).
    """

    _arrays = ("coords", "steps", "losses", "run", "trustworthiness")
    _optional = ("explained_variance", "reconstruction_error")
    _fields = BASE_FIELDS + (Field("method"), Field("dims", read=int), Field("n_neighbors", read=int),
                             Field("labels", read=list), Field("strides", read=list),
                             Field("umap_n_neighbors", read=int), Field("reconstruction_error_reason"))

    def __init__(self, coords, steps, losses, run, trustworthiness, reconstruction_error=None,
                 explained_variance=None, meta=None, inverse=None, **fields):
        self.coords = np.asarray(coords, dtype=np.float64)
        self.steps = np.asarray(steps, dtype=np.int64)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.run = np.asarray(run, dtype=np.int64)
        self.trustworthiness = float(trustworthiness)
        self.reconstruction_error = None if reconstruction_error is None else float(reconstruction_error)
        self.explained_variance = None if explained_variance is None else np.asarray(explained_variance, float)
        self.meta = dict(meta or {})
        self._set_fields(self._field_names(fields))
        self._inverse = inverse

    def inverse_transform(self, coords) -> np.ndarray:
        """Map embedding coordinates ``[m, dims]`` back to flat parameter vectors ``[m, P]`` (PCA, autoencoder and
        UMAP where it has an inverse; not available on a loaded result)."""
        if self._inverse is None:
            raise ValueError(f"this {self.method} embedding has no inverse transform"
                             + (" (results loaded from disk keep none)" if self.method != "umap" else ""))
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


def _is_trajectory(obj) -> bool:
    # by interface, not by class: trajectory.py (the records) imports this module for Trajectory.embed
    needed = ("names", "shapes", "record", "matrix", "columns", "__len__")
    return all(hasattr(obj, a) for a in needed) and not isinstance(obj, type)


def check_trajectories(trajectories):
    trajs = [trajectories] if _is_trajectory(trajectories) else trajectories
    if not isinstance(trajs, (list, tuple)) or not trajs or not all(_is_trajectory(t) for t in trajs):
        raise TypeError("trajectories must be an lw.Trajectory or a non-empty list of them")
    for k, t in enumerate(trajs):
        if len(t) == 0:
            raise ValueError(f"trajectory {k} is empty; record snapshots with traj.record(model) first")
        if t.names != trajs[0].names or t.shapes != trajs[0].shapes:
            raise ValueError(f"trajectory {k} records other parameters than trajectory 0; embed runs of one "
                             "architecture together")
    return list(trajs)


def blocks(num):
    for start in range(0, num, BLOCK):
        yield slice(start, min(num, start + BLOCK))


class SnapshotPCA:
    """Exact PCA of ``n`` snapshots of ``P`` parameters (n << P) through the n x n Gram matrix of the centred rows.

    ``eigh(Xc Xc^T) = V diag(lam) V^T`` gives the components ``V^T Xc / sqrt(lam)`` (the right singular vectors
    that scikit-learn's PCA gets from an SVD of Xc) and the coordinates ``V sqrt(lam)``, in O(n^2 P) flops on
    float64 column blocks with no [n, P] copy: for 33 snapshots of 1M parameters this is about 5x faster than the SVD
    and uses a fifth of the memory (benchmarks/trajectory.py).  Signs: the largest-magnitude coordinate of each
    component is positive (scikit-learn's ``svd_flip`` with ``u_based_decision``).
    """

    def __init__(self, X):
        self.X = X
        n, P = X.shape
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        if len(bad):
            raise ValueError(f"snapshots {bad[:5].tolist()} contain NaN or inf weights (a diverged run); drop them "
                             "before embedding")
        self.mean = np.empty(P)
        gram = np.zeros((n, n))
        for sl in blocks(P):
            block = X[:, sl].astype(np.float64)
            self.mean[sl] = block.mean(axis=0)
            block -= self.mean[sl]
            gram += block @ block.T
        lam, V = np.linalg.eigh(gram)
        lam, V = lam[::-1], V[:, ::-1]
        self.total = float(np.trace(gram))  # sum_i ||x_i - mean||^2
        if not self.total > 0:
            raise ValueError(f"all {n} snapshots are identical, so there is no path to embed; record the model "
                             "while it trains (after optimizer steps)")
        keep = lam > RANK_TOL * lam[0]
        V = V[:, keep]
        V *= np.sign(V[np.abs(V).argmax(axis=0), np.arange(V.shape[1])])
        self.lam, self.V = lam[keep], V
        self.rank = int(keep.sum())

    def coords(self, k):
        """``[n, k]``: the snapshots' coordinates on the first k components (zero beyond their rank)."""
        out = np.zeros((len(self.V), k))
        out[:, :self.rank] = self.V[:, :k] * np.sqrt(self.lam[:k])
        return out

    def explained_variance_ratio(self, k):
        out = np.zeros(k)
        out[:self.rank] = self.lam[:k] / self.total
        return out

    def _back(self, C):
        # coordinates C [m, k] -> weights of Xc's rows that rebuild C @ components: C diag(1/sqrt(lam)) V^T
        k = min(C.shape[1], self.rank)
        return (np.asarray(C, dtype=np.float64)[:, :k] / np.sqrt(self.lam[:k])) @ self.V[:, :k].T

    def components(self, k):
        """``[k, P]`` unit, orthogonal components (k <= rank)."""
        if k > self.rank:
            raise ValueError(f"the snapshots span only {self.rank} direction(s), fewer than the {k} asked for")
        return self.inverse_transform(np.eye(k), centred=True)

    def inverse_transform(self, C, *, centred=False):
        """``mean + C @ components`` for coordinates ``C [m, k]``: ``[m, P]`` float64."""
        W = self._back(C)
        out = np.empty((len(W), self.X.shape[1]))
        for sl in blocks(self.X.shape[1]):
            out[:, sl] = W @ (self.X[:, sl].astype(np.float64) - self.mean[sl])
            if not centred:
                out[:, sl] += self.mean[sl]
        return out

    def residual(self, C):
        """``sum_i ||x_i - inverse_transform(C)_i||^2`` for coordinates ``C [n, k]`` of the snapshots themselves,
        block by block, so the [n, P] reconstruction is never held."""
        W = self._back(C)
        out = 0.0
        for sl in blocks(self.X.shape[1]):
            block = self.X[:, sl].astype(np.float64) - self.mean[sl]
            out += float(((block - W @ block) ** 2).sum())
        return out


def residual(X, X_hat) -> float:
    return float(sum(((x.astype(np.float64) - xh) ** 2).sum() for x, xh in zip(X, X_hat)))


@contextmanager
def _single_thread():
    """Tiny matmuls run 25x slower on two busy cores with torch's intra-op threads than with one (measured in
    benchmarks/trajectory.py); restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embed(trajectories, *, method="pca", dims=2, seed=0, n_neighbors=None, trust_neighbors=None, labels=None,
          epochs=2000, hidden=64, umap_inverse=None) -> Embedding:
    """Embed the snapshots of one trajectory, or of several together (one picture to compare optimizers).

    ``method``: "pca", "umap" (``n_neighbors``: UMAP's, default min(15, n - 1); ``umap_inverse``: map back for the
    reconstruction error, None: only up to ``UMAP_INVERSE_MAX_ENTRIES`` n x P) or "autoencoder" (``hidden`` units,
    ``epochs`` of full-batch Adam, on the exact PCA coordinates of the centred snapshots).  ``seed`` fixes
    UMAP and the autoencoder through private generators.  ``trust_neighbors``: k of the trustworthiness, default
    min(5, (n - 1) // 2) (it needs k < n / 2).
    """
    trajs = check_trajectories(trajectories)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known; pass one of {', '.join(map(repr, METHODS))}")
    dims = check_int(dims, "dims", low=1, high=3, hint=" (2 or 3 for a picture)")
    seed = check_seed(seed)
    views = [t.consistent() for t in trajs]
    X = np.stack([v for _s, _l, vs in views for v in vs])  # one copy of the store, not one per run plus one
    n = len(X)
    if n < max(3, dims + 1):
        raise ValueError(f"an embedding in {dims} dimensions needs at least {max(3, dims + 1)} snapshots, the "
                         f"trajectories hold {n}; record more steps (or epochs)")
    pca = SnapshotPCA(X)
    k = (min(5, (n - 1) // 2) if trust_neighbors is None
         else check_int(trust_neighbors, "trust_neighbors", low=1, high=(n - 1) // 2, hint=" (k < n / 2)"))
    names = [str(s) for s in labels] if labels is not None else [f"run {i}" for i in range(len(trajs))]
    if len(names) != len(trajs):
        raise ValueError(f"labels has {len(names)} entries for {len(trajs)} trajectories")
    meta = {"library": "landscape_widgets", "version": __version__, "kind": "embedding", "method": method,
            "dims": dims, "seed": seed, "n_neighbors": k, "num_snapshots": n,
            "num_parameters": int(X.shape[1]), "reconstruction": "in-sample, sum ||x - x_hat||^2 / sum ||x - mean||^2",
            "labels": names, "snapshots_per_run": [len(vs) for _s, _l, vs in views],
            "strides": [t.stride for t in trajs]}
    explained = nn = reason = None
    if method == "pca":
        coords = pca.coords(dims)
        err, explained, inverse = pca.residual(coords) / pca.total, pca.explained_variance_ratio(dims), \
            pca.inverse_transform
    elif method == "umap":
        nn = (min(15, n - 1) if n_neighbors is None
              else check_int(n_neighbors, "n_neighbors", low=2, high=n - 1, hint=" (UMAP's, < snapshots)"))
        if umap_inverse is None:
            umap_inverse = X.size <= UMAP_INVERSE_MAX_ENTRIES
        coords, err, inverse, reason = _umap(X, dims, nn, seed, pca.total, bool(umap_inverse))
    else:
        epochs = check_int(epochs, "epochs", low=1)
        hidden = check_int(hidden, "hidden", low=1)
        coords, err, inverse, ae_meta = _autoencoder(pca, dims, seed, epochs, hidden)
        meta.update(ae_meta)
    from sklearn.manifold import trustworthiness

    trust = trustworthiness(X, coords, n_neighbors=k)
    steps = np.concatenate([st for st, _l, _v in views])
    losses = np.concatenate([lo for _s, lo, _v in views])
    run = np.concatenate([np.full(len(vs), i) for i, (_s, _l, vs) in enumerate(views)])
    return Embedding(coords, steps, losses, run, trust, err, explained, meta, inverse, umap_n_neighbors=nn,
                     reconstruction_error_reason=reason or None)


def _umap(X, dims, n_neighbors, seed, tot, invert):
    import umap

    reducer = umap.UMAP(n_components=dims, n_neighbors=n_neighbors, random_state=seed, transform_seed=seed)
    with warnings.catch_warnings():
        # "n_jobs overridden to 1 by setting random_state": the determinism we ask for
        warnings.simplefilter("ignore", UserWarning)
        coords = reducer.fit_transform(X).astype(np.float64)
    if not invert:
        return coords, None, None, (f"skipped umap-learn's inverse_transform for {X.shape[0]} x {X.shape[1]} "
                                    "snapshot entries (it takes minutes there); pass umap_inverse=True to run it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            err = residual(X, reducer.inverse_transform(coords)) / tot
    except Exception as exc:  # umap-learn refuses some settings (e.g. a 1-D or degenerate embedding)
        return coords, None, None, f"umap-learn's inverse_transform failed: {type(exc).__name__}: {exc}"
    return coords, err, lambda c: reducer.inverse_transform(np.asarray(c, np.float32)).astype(np.float64), None


def _autoencoder(pca, dims, seed, epochs, hidden):
    """Encoder q -> hidden -> dims, decoder dims -> hidden -> q (tanh), on the coordinates of the first q principal
    components (q = the snapshots' rank, at most 64): the network stays small for any P, nothing the snapshots span
    is lost when q is their rank, and the error is measured against the snapshots themselves."""
    q = min(pca.rank, AE_MAX_COMPONENTS)
    P = pca.coords(q)
    scale = float(np.sqrt((P ** 2).mean()))
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

    data = torch.from_numpy(P / scale)
    opt = torch.optim.Adam(weights, lr=1e-2)
    with _single_thread(), torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            loss = ((decode(encode(data)) - data) ** 2).mean()
            loss.backward()
            opt.step()
    with torch.no_grad():
        coords = encode(data)
        err = pca.residual(decode(coords).numpy() * scale) / pca.total

    def inverse(c):
        with torch.no_grad():
            return pca.inverse_transform(decode(torch.as_tensor(c, dtype=torch.float64)).numpy() * scale)

    meta = {"autoencoder": {"hidden": hidden, "epochs": epochs, "optimizer": "Adam(lr=1e-2), full batch",
                            "pca_components": q, "final_mse": float(loss.detach())}}
    return coords.numpy(), err, inverse, meta
