"""Hessian-vector products of the full-data loss over a :class:`~landscape_widgets._model.PrivateModel`.

Pearlmutter's trick (Pearlmutter 1994, "Fast exact multiplication by the Hessian", eq. 4):
``H v = d/dr grad L(theta + r v)|_{r=0} = grad_theta[(grad_theta L) . v]``, i.e. double backward.

The loss is the sample-weighted mean over the data, so ``H v = sum_b (n_b / N) H_b v`` (batch losses are means).
The parameters enter through ``torch.func.functional_call`` as fresh leaf tensors that share storage with the
private copy's base weights: nothing is written, neither to the user's model nor to the private copy.  The
module stays in eval mode, so BatchNorm uses its running statistics: this is the Hessian of the eval-mode loss.

With one batch of data the first-order graph (``grad L`` with ``create_graph=True``) is built once and reused by
every product (``backend="graph"``); on a CPU a batch with large activations gets one graph per cache-sized chunk
(the forward evaluator's micro-batches, used only where the chunked loss equals the full-batch loss), which made a
digits-CNN product 1.5x faster (67 -> 45 ms, 2 threads).  With several batches the graph of each batch is rebuilt
per pass and a whole block of vectors is applied to it, so a pass over a DataLoader serves all vectors of the
block.  ``backend="func"`` uses ``torch.func.jvp`` over ``torch.func.grad`` (forward-over-reverse) instead;
``benchmarks/hessian.py`` measures both.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from .. import accelerations
from ..driver import Cancelled, is_cancelled
from ..runtime import warm_allocator
from ..objective import as_objective

BACKENDS = ("graph", "func")


class NonFiniteHessian(ArithmeticError, ValueError):
    """The loss or a Hessian-vector product is NaN or inf where the Hessian is asked for."""
# a product's per-call overheads weigh less than a forward's: chunks down to 16 samples keep logits-sized
# temporaries below glibc's mmap threshold (a 64 x 64-token GPT-2 batch with 2,000 tokens: 0 instead of ~40k page
# faults per product, 0.6 instead of 0.9 s; benchmarks/transformer.py)
HVP_MIN_SAMPLES = 16


class HessianOperator:
    """``H`` of the loss (``objective``) over all of ``data`` at the private copy's base weights, as a matrix-free operator.

    Vectors are flat over ``private.names`` in ``named_parameters()`` order (``flatten``/``unflatten`` convert).
    ``matmat_torch(V)`` takes ``V[m, P]`` and returns ``out_dtype`` (the parameters' dtype, float32 at least);
    ``matvec``/``matmat`` take float64 numpy and return float64 (what scipy's Lanczos works in).  ``hvps`` counts products; ``cancel`` (Event or callable) is
    checked before every pass and raises :class:`~landscape_widgets.Cancelled`.  ``weights`` (name -> tensor for
    every moved parameter) takes ``H`` at that point instead (a curvature map's grid point): the point's tensors
    enter the functional call, so nothing is written to the private copy.  ``tuning``
    (:class:`~landscape_widgets.accelerations.Tuning`, default the library's): when a CPU batch is micro-batched.
    """

    def __init__(self, private, data, objective, *, backend="graph", cancel=None, on_hvp=None, weights=None,
                 tuning=None):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not known; pass one of {', '.join(map(repr, BACKENDS))}")
        self.private = private
        self.at = None if weights is None else {n: weights[n] for n in private.names}
        self.data = data
        self.objective = as_objective(objective)  # or a plain loss_fn(outputs, targets)
        self.backend = backend
        self.cancel = cancel
        self.on_hvp = on_hvp
        self.tuning = tuning or accelerations.DEFAULT_TUNING
        self.names = list(private.names)
        self.shapes = [tuple(private.base[n].shape) for n in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.num_parameters = int(sum(self.sizes))
        self.dtype = private.base[self.names[0]].dtype
        # products are summed, and handed to the solvers, in float32 or wider whatever the model's dtype: a bf16
        # sum over micro-batches or batches would add rounding of its own to that of the products
        self.out_dtype = torch.promote_types(self.dtype, torch.float32)
        self.device = private.device
        self.hvps = 0
        self.loss = None  # the full-data loss at ``weights``, known after the first pass
        self._graph = None  # [(first-order graph, weight n_i / n)] of the one in-memory batch
        warm_allocator(self.device)  # each product allocates activation-sized gradients: keep them off mmap

    # -- flat <-> dict ---------------------------------------------------------------------------------------
    def flatten(self, d: dict) -> torch.Tensor:
        return torch.cat([d[n].reshape(-1).to(self.dtype) for n in self.names])

    def unflatten(self, v: torch.Tensor) -> dict:
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(v, self.sizes), self.shapes)}

    @property
    def weights(self) -> dict:
        """The point ``H`` is taken at: ``weights`` as given, else the private copy's base weights as they are now."""
        return self.private.base if self.at is None else self.at

    # -- products --------------------------------------------------------------------------------------------
    def _leaves(self):
        return [self.weights[n].detach().requires_grad_(True) for n in self.names]

    def _batch_loss(self, leaves, x, y):
        params = dict(zip(self.names, leaves))
        with second_order_kernels():
            loss = self.objective.functional(self.private.module, params, x, y)
        if not loss.requires_grad:
            raise ValueError(f"{self.objective.describe()} does not depend on the moved parameters (no gradient); "
                             "pass a differentiable loss such as torch.nn.CrossEntropyLoss(), and check params=")
        return loss

    def _first_order(self, x, y):
        leaves = self._leaves()
        loss = self._batch_loss(leaves, x, y)
        with explain_double_backward():  # the kernels were chosen by the forward (second_order_kernels)
            grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        # a gradient that does not require grad is constant in theta: its Hessian block is zero
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        check_second_order([grads[i] for i in live])
        return leaves, grads, live, loss.detach()

    def _graphs(self):
        """The first-order graphs of the one batch: per micro-batch on a CPU when that is exact, else one."""
        (x, y, n), = self.data.batches(self.device)
        chunks = None
        if self.device.type == "cpu":
            with torch.inference_mode():
                chunks = accelerations.plan_micro_batches(
                    self.private.module, self.objective, x, y, n, tuning=self.tuning,
                    min_samples=min(HVP_MIN_SAMPLES, self.tuning.get("micro_min_samples")))
        if chunks is None:
            return [(self._first_order(x, y), 1.0)]
        return [(self._first_order(a, b), m / n) for a, b, m in chunks]

    def _apply_graph(self, first, V):
        leaves, grads, live, _ = first
        out = torch.zeros(V.shape, dtype=self.out_dtype, device=V.device)
        if not live:
            return out
        for r in range(V.shape[0]):
            vs = self.unflatten(V[r])
            with explain_double_backward():
                hv = torch.autograd.grad([grads[i] for i in live], leaves,
                                         grad_outputs=[vs[self.names[i]] for i in live], retain_graph=True,
                                         allow_unused=True)
            out[r] = torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                                for h, p in zip(hv, leaves)])
        return out

    def _apply_func(self, x, y, V):
        base = {n: self.weights[n].detach() for n in self.names}
        module, objective = self.private.module, self.objective

        def loss_of(params):
            return objective.functional(module, params, x, y)

        grad_fn = torch.func.grad(loss_of)
        out = torch.empty(V.shape, dtype=self.out_dtype, device=V.device)
        for r in range(V.shape[0]):
            with second_order_kernels(), explain_double_backward():
                _, hv = torch.func.jvp(grad_fn, (base,), (self.unflatten(V[r]),))
            out[r] = self.flatten(hv)
        return out

    def matmat_torch(self, V: torch.Tensor) -> torch.Tensor:
        """``H V^T`` row by row: ``V[m, P]`` (any float dtype) -> ``[m, P]`` in ``out_dtype`` (float32 or wider), one
        pass over the data for the whole block.

        Each row enters the model's dtype scaled to a largest entry of 1 and is scaled back after the product
        (``H`` is linear): a unit vector of a large model has entries near 1e-3, whose products would lose digits
        to float16's subnormal range.  Raises :class:`NonFiniteHessian` when the loss or a product is not finite.
        """
        if V.ndim != 2 or V.shape[1] != self.num_parameters:
            raise ValueError(f"vectors must have shape [m, {self.num_parameters}], got {tuple(V.shape)}")
        if is_cancelled(self.cancel):
            raise Cancelled(f"cancelled after {self.hvps} Hessian-vector products")
        V = V.to(device=self.device)
        scale = None
        if self.dtype.itemsize < 4:
            wide = V.to(self.out_dtype)
            scale = wide.abs().amax(dim=1, keepdim=True)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            V = wide / scale
        V = V.to(self.dtype)
        with torch.enable_grad():
            if self.data.single is not None:
                if self.backend == "graph":
                    if self._graph is None:
                        self._graph = self._graphs()
                        self.loss = sum(float(g[3]) * w for g, w in self._graph)
                    self._check_loss()
                    out = torch.zeros(V.shape, dtype=self.out_dtype, device=V.device)
                    for g, w in self._graph:  # H v = sum_i (n_i / n) H_i v over the micro-batches
                        out += self._apply_graph(g, V) * w
                else:
                    (x, y, _n), = self.data.batches(self.device)
                    out = self._apply_func(x, y, V)
            else:
                out = torch.zeros(V.shape, dtype=self.out_dtype, device=V.device)
                total, acc = 0, 0.0
                for x, y, n in self.data.batches(self.device):
                    if self.backend == "graph":
                        first = self._first_order(x, y)
                        out += self._apply_graph(first, V) * n
                        acc += float(first[3]) * n
                        del first
                    else:
                        out += self._apply_func(x, y, V) * n
                    total += n
                out /= total
                if self.backend == "graph":
                    self.loss = acc / total
                    self._check_loss()
        if scale is not None:
            out *= scale
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteHessian(self._where(f"a Hessian-vector product is not finite (loss {self.loss})"))
        self.hvps += V.shape[0]
        if self.on_hvp is not None:
            self.on_hvp(self.hvps)
        return out.detach()

    def _where(self, what):
        point = "at the model's weights" if self.at is None else "at this point"
        return (f"{what} {point}, so the Hessian is not defined there: check the data for NaN or inf "
                "(torch.isfinite on inputs and targets) and the model for overflow in its dtype. The loss "
                "surfaces (loss, plane, line) report such points as NaN; nothing was changed.")

    def _check_loss(self):
        if self.loss is not None and not np.isfinite(self.loss):
            raise NonFiniteHessian(self._where(f"the loss is {self.loss}"))

    def matvec_torch(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat_torch(v.reshape(1, -1))[0]

    def matvec(self, v) -> np.ndarray:
        v = torch.from_numpy(np.ascontiguousarray(np.asarray(v, dtype=np.float64).reshape(-1)))
        return self.matvec_torch(v).double().cpu().numpy()

    def matmat(self, V) -> np.ndarray:
        """float64 numpy ``V[P, m]`` -> ``H V`` as ``[P, m]`` (scipy's LinearOperator convention)."""
        V = torch.from_numpy(np.ascontiguousarray(np.asarray(V, dtype=np.float64).T))
        return self.matmat_torch(V).double().cpu().numpy().T

    def linear_operator(self):
        from scipy.sparse.linalg import LinearOperator

        P = self.num_parameters
        return LinearOperator((P, P), matvec=self.matvec, matmat=self.matmat, rmatvec=self.matvec,
                              dtype=np.float64)

    def quadratic_form(self, d: dict) -> float:
        """``d^T H d`` for a direction dict (float64 result)."""
        v = self.flatten({n: d[n].to(self.device) for n in self.names})
        return float((self.matvec_torch(v).double() * v.double()).sum())

    def release(self):
        """Free the stored graph (it holds the activations of the whole batch)."""
        self._graph = None

    @contextlib.contextmanager
    def progress(self, desc, enabled=True):
        """A ``tqdm.auto`` bar counting the products made inside the block (their number is not known in advance:
        Lanczos stops when it converges); yields ``stage(text)``, which shows the current stage beside it."""
        if not enabled:
            yield lambda text: None
            return
        from tqdm.auto import tqdm

        bar = tqdm(desc=desc, unit="HVP", leave=False)
        before = self.on_hvp

        def tick(n):
            bar.update(1)
            if before is not None:
                before(n)

        self.on_hvp = tick
        try:
            yield bar.set_postfix_str
        finally:
            self.on_hvp = before
            bar.close()

    @contextlib.contextmanager
    def running(self):
        """A computation that alternates products with numpy/scipy linear algebra (Lanczos, ARPACK, Hutch++):
        numpy's BLAS runs single-threaded meanwhile, and the graph is freed at the end, exceptions included.
        OpenBLAS's threads keep spinning for a while after each call (the tridiagonal eigh of every Lanczos step)
        and took the cores from the next product: lambda_min of the digits CNN took 6.7 instead of 4.0 s on 2
        cores.  The limit is process-wide while it lasts (threadpoolctl), and restored on exit."""
        try:
            with _single_threaded_blas():
                yield self
        finally:
            self.release()


def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # comes with scikit-learn; without it only the speed differs
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


@contextlib.contextmanager
def second_order_kernels():
    """Kernels that have a second derivative, for the forward passes whose graph is differentiated twice.

    Fused attention (SDPA's flash and memory-efficient CPU/CUDA kernels) and cuDNN's RNNs have no double backward;
    their composite forms (SDPA's math backend, the native RNN) compute the same function and do.  The fused weight
    norm (``torch._weight_norm``, behind ``parametrizations.weight_norm``) has a double backward that disagrees
    with the dense Hessian (not even symmetric) in torch 2.13; ``v * g / ||v||`` (Salimans & Kingma 2016, eq. 2)
    replaces it.  The forward passes of the plane keep the fused kernels."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_CompositeWeightNorm())
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError:  # older torch: its CPU SDPA is composite anyway
            pass
        else:
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        stack.enter_context(torch.backends.cudnn.flags(enabled=False))
        yield


# autograd nodes that stand for a missing derivative: "NotImplemented" (an op without a double-backward formula,
# raises when reached), "Error" (a once_differentiable backward, whose second derivative would silently be None)
_MISSING_DERIVATIVE_NODES = {"NotImplemented": "an operation without a second derivative",
                             "Error": "a custom autograd.Function marked @once_differentiable"}


def check_second_order(grads):
    """Raise, with what to change, when the first-order graph passes a node without a derivative: a product through
    it would raise, or for ``once_differentiable`` silently drop that part of the Hessian."""
    seen, stack = set(), [g.grad_fn for g in grads]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        what = _MISSING_DERIVATIVE_NODES.get(type(fn).__name__)
        if what is not None:
            raise RuntimeError(_explain(f"the gradient passes {what}"))
        stack.extend(f for f, _ in fn.next_functions)


def _explain(cause):
    return (f"Hessian-vector products need the second derivative of every operation in the forward pass, and one "
            f"has none: {cause}. Fused kernels are swapped for their composite forms already (SDPA's math backend, "
            "non-cuDNN RNNs); for a custom autograd.Function implement its backward with differentiable "
            "operations, or build the model with a plain implementation (e.g. HuggingFace's "
            "attn_implementation='eager'). The loss surfaces (plane, line, interpolate) do not need it.")


class _CompositeWeightNorm(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch._weight_norm:
            v, g = args[0], args[1]
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            return v * (g / torch.norm_except_dim(v, 2, dim))
        return func(*args, **kwargs)


_NO_DOUBLE_BACKWARD = ("double backward", "derivative for", "is not implemented", "differentiate twice")


@contextlib.contextmanager
def explain_double_backward():
    """Re-raise a missing second derivative with what to change."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as exc:
        msg = str(exc)
        if not any(k in msg for k in _NO_DOUBLE_BACKWARD):
            raise
        raise RuntimeError(_explain(msg.splitlines()[0])) from exc


__all__ = ["BACKENDS", "HessianOperator", "NonFiniteHessian"]
