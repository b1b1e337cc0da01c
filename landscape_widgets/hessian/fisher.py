"""The empirical Fisher of the full-data loss as a matrix-free operator beside the Hessian.

``F = (1/N) sum_i g_i g_i^T`` with the per-sample gradients ``g_i = grad_theta l(x_i, y_i)`` at the data's own
targets (Kunstner, Hennig & Balles 2019, "Limitations of the empirical Fisher approximation for natural gradient
descent", eq. 2): the uncentered second moment of the gradients.  It is the *empirical* Fisher -- the targets are
the data's, not drawn from the model's predictive distribution -- so it is neither the Fisher information nor,
away from a well-fitting minimum, close to the Hessian or the GGN (Kunstner et al.).  It is positive
semidefinite for every loss (``lambda_min >= 0`` up to rounding) and has rank at most ``N``.

A sample's loss ``l(x_i, y_i)`` is the objective on the batch of that one sample: ``loss_fn`` on its outputs and
targets, the model's own loss, or ``batch_loss`` -- every way the library takes a loss.  With a batch loss that is
the mean over its samples (what the library assumes) the ``g_i`` average to the batch's gradient; where they do not
(a weighted or sample-coupling loss) a :class:`~landscape_widgets.LossReductionWarning` says so.  The model stays in
eval mode, so BatchNorm uses its running statistics and a sample's gradient does not depend on the others'.

The per-sample gradients of a batch come from ``torch.func.vmap(torch.func.grad(...))`` over its samples, in chunks
of at most ``FISHER_CHUNK_BYTES`` of gradients (a batch's ``[n, P]`` may not fit), and from a loop of
``torch.autograd.grad`` over the samples where vmap fails (a GRU, data-dependent control flow such as HuggingFace's
attention-mask checks, a batch whose tensors sit in an object that is no pytree). A block ``V[m, P]`` costs one such
pass over the data and ``F V^T = (1/N) sum_c G_c^T (G_c V^T)`` per chunk ``G_c`` in float32 or wider; a single
batch's gradients are kept between products where they fit in ``FISHER_CACHE_BYTES``, so that every later product is
two matrix products.

hessian-eigenthings 1.0 (``EmpiricalFisherOperator``) has the same per-batch matrix, ``(1/n_b) G_b^T G_b``, but
averages batches with equal weights; here batches weigh by their sample counts, so that ``F`` is the mean over all
samples whatever the batch sizes (the two agree for equal batches).
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from ..data import batch_tensors, index_batch, repeat_tolerance, same_loss, warn_user
from ..objective import LossReductionWarning
from .ggn import CurvatureOperator
from .hvp import second_order_kernels

FISHER_CHUNK_BYTES = 2 ** 27  # per-sample gradients computed at once (128 MiB: 32 samples of a 1M-parameter model)
FISHER_CACHE_BYTES = 2 ** 28  # a single batch's per-sample gradients are kept when they fit in this


class _NoVmap(Exception):
    """The batch cannot be cut into samples by vmap (a tensor inside an object that is no pytree)."""

    def __str__(self):
        return "a tensor of the batch sits inside an object that is no pytree (a dataclass, an attribute)"


class FisherOperator(CurvatureOperator):
    """``F = (1/N) sum_i g_i g_i^T`` (Kunstner, Hennig & Balles 2019, eq. 2) over all of ``data``, with
    :class:`~landscape_widgets.hessian.hvp.HessianOperator`'s interface; ``loss`` is the mean of the samples' losses.

    ``backend`` and ``vmap_rows`` are accepted for the interface (a block is two matrix products with the per-sample
    gradients, whichever way they came).  ``batching``: the per-sample gradients by vmap over the samples
    (``"auto"``: the loop where vmap fails, ``vmap_error`` says why; ``"vmap"``: raise instead) or by the loop
    (``"loop"``); ``per_sample`` says which ran last."""

    curvature = "fisher"
    what = "Fisher"

    def __init__(self, private, data, objective, **options):
        super().__init__(private, data, objective, **options)
        self.per_sample = None
        self._kept = None   # the single batch's per-sample gradients [n, P]
        self._checked = False  # whether the samples' losses were compared with the batch losses

    def release(self):
        self._kept = None

    def _chunk(self):
        return max(1, FISHER_CHUNK_BYTES // (self.num_parameters * self.out_dtype.itemsize))

    def _products(self, V):
        V = V.to(self.out_dtype)
        single = self.data.single is not None
        if single and self.data.num_samples * self.num_parameters * self.out_dtype.itemsize <= FISHER_CACHE_BYTES:
            if self._kept is None:
                (x, y, n), = self.data.batches(self.device)
                parts = [self._gradients(x, y, n, s, min(n, s + self._chunk())) for s in range(0, n, self._chunk())]
                losses = torch.cat([p[1] for p in parts])
                self._check_batch(x, y, n, losses)
                self.loss = float(losses.double().mean())
                self._check_loss()
                self._kept = torch.cat([p[0] for p in parts])
            G = self._kept
            return (V @ G.T) @ G / G.shape[0]
        out = torch.zeros(V.shape, dtype=self.out_dtype, device=V.device)
        total, acc = 0, 0.0
        for x, y, n in self.data.batches(self.device):
            losses = []
            for s in range(0, n, self._chunk()):
                G, loss = self._gradients(x, y, n, s, min(n, s + self._chunk()))
                out += (V @ G.T) @ G
                losses.append(loss)
                del G
            losses = torch.cat(losses)
            self._check_batch(x, y, n, losses)
            acc += float(losses.double().sum())
            total += n
        self._checked = True
        self.loss = acc / total
        return out / total

    def _check_batch(self, x, y, n, losses):
        """On the first pass: warn where the samples' losses do not average to the batch's loss."""
        if self._checked or n < 2:
            return
        with torch.no_grad():
            whole = float(self.objective.functional(self.private.module, dict(self.weights), x, y))
        mean = float(losses.double().mean())
        if same_loss(whole, mean, repeat_tolerance([self.dtype])):
            return
        self._checked = True
        warn_user(f"the empirical Fisher takes each sample's loss as {self.objective.describe()} on a batch of that "
                  f"one sample, but on a batch of {n} samples their mean is {mean:.6g} while the batch's loss is "
                  f"{whole:.6g}: the batch loss is no plain mean over its samples (a weighted or sample-coupling "
                  "loss, a token mean over sequences of unequal lengths), so the Fisher is that of the samples' "
                  "losses, not of this loss. Return the mean of per-sample losses from the loss, or use "
                  "curvature='hessian'", LossReductionWarning)

    def _gradients(self, x, y, n, start, stop):
        """The per-sample gradients ``[stop - start, P]`` (``out_dtype``) and losses of samples ``start:stop``."""
        if self.batching != "loop" and self.vmap_error is None:
            try:
                out = self._vmapped(x, y, n, start, stop)
                self.per_sample = "vmap"
                return out
            except Exception as exc:  # noqa: BLE001 -- no batching rule, data-dependent control flow: the loop is exact
                if self.batching == "vmap":
                    raise
                self.vmap_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        self.per_sample = "loop"
        return self._looped(x, y, n, start, stop)

    def _base(self):
        return {n: self.weights[n].detach() for n in self.names}

    def _vmapped(self, x, y, n, start, stop):
        flat, spec = tree_flatten((x, y))
        if any(not isinstance(t, torch.Tensor) and next(batch_tensors(t), None) is not None for t in flat):
            raise _NoVmap
        rows = [i for i, t in enumerate(flat) if isinstance(t, torch.Tensor) and t.ndim and t.shape[0] == n]
        module, objective = self.private.module, self.objective

        def sample_loss(params, *sample):
            full = list(flat)
            for i, t in zip(rows, sample):
                full[i] = t.unsqueeze(0)  # a batch of one sample, as the loop gives it
            xi, yi = tree_unflatten(full, spec)
            loss = objective.functional(module, params, xi, yi)
            return loss, loss.detach()

        per_sample = torch.func.vmap(torch.func.grad(sample_loss, has_aux=True), in_dims=(None,) + (0,) * len(rows))
        with second_order_kernels():  # the composite forms (math SDPA, native RNNs) have vmap's batching rules
            grads, losses = per_sample(self._base(), *[flat[i][start:stop] for i in rows])
        m = stop - start
        G = torch.cat([grads[name].reshape(m, -1).to(self.out_dtype) for name in self.names], dim=1)
        return G, losses.reshape(m).detach()

    def _looped(self, x, y, n, start, stop):
        G = torch.empty((stop - start, self.num_parameters), dtype=self.out_dtype, device=self.device)
        losses = torch.empty(stop - start, dtype=self.out_dtype, device=self.device)
        module, objective = self.private.module, self.objective
        for r, i in enumerate(range(start, stop)):
            idx = torch.tensor([i])
            xi, yi = index_batch(x, idx, n), (None if y is None else index_batch(y, idx, n))
            leaves = self._leaves()
            loss = objective.functional(module, dict(zip(self.names, leaves)), xi, yi)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad else [None] * len(leaves)
            G[r] = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).to(self.out_dtype)
                              for g, p in zip(grads, leaves)])
            losses[r] = loss.detach()
        return G, losses


__all__ = ["FISHER_CACHE_BYTES", "FISHER_CHUNK_BYTES", "FisherOperator"]
