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
block.  ``backend="func"`` uses ``torch.func.jvp`` over ``torch.func.grad`` (forward-over-reverse) instead, on the
same micro-batches; ``backend="auto"`` times both on the first single product and on the first block and keeps the
faster for each.

A block ``V[m, P]`` is applied row by row (``batching="loop"``) or in one vmapped product per ``vmap_rows`` vectors
(``"vmap"``: ``torch.autograd.grad(..., is_grads_batched=True)`` for the graph, ``torch.func.vmap`` over the
tangents for func); where vmap fails for a model (an op without a batching rule) the operator remembers why
(``vmap_error``) and runs the loop.  ``"auto"`` (the default) vmaps off the CPU and loops on it, where the loop was
as fast or faster on every model measured (``benchmarks/hessian.py``: the micro-batches are sized for one vector's
activations, and vmap multiplies them by the block).
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from .. import accelerations
from ..driver import Cancelled, is_cancelled
from ..runtime import warm_allocator
from ..objective import as_objective

BACKENDS = ("auto", "graph", "func")
BATCHING = ("auto", "vmap", "loop")
# vectors per vmapped call: a batched double backward holds this many copies of the batch's activation gradients
VMAP_ROWS = 16
PLAN = "plan"  # micro_batches=PLAN: the operator plans the micro-batches of its data itself


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
    ``backend``: ``"graph"``, ``"func"`` or ``"auto"`` (measured, see the module docstring; ``choice`` and
    ``timings`` say what it chose and why; its timing products are not counted in ``hvps``).  ``batching``,
    ``vmap_rows``: how a block is applied.  ``micro_batches``: another operator's :meth:`micro_batches` over the
    same data, reused instead of planned again.
    """

    def __init__(self, private, data, objective, *, backend="graph", cancel=None, on_hvp=None, weights=None,
                 tuning=None, batching="auto", vmap_rows=VMAP_ROWS, micro_batches=PLAN):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not known; pass one of {', '.join(map(repr, BACKENDS))}")
        if batching not in BATCHING:
            raise ValueError(f"batching={batching!r} is not known; pass one of {', '.join(map(repr, BATCHING))} "
                             "('vmap': a block's vectors in one vmapped product, the loop where vmap fails; 'loop': "
                             "one product per vector; 'auto': vmap off the CPU, the loop on it)")
        if isinstance(vmap_rows, bool) or not isinstance(vmap_rows, int) or vmap_rows < 1:
            raise ValueError(f"vmap_rows={vmap_rows!r} must be a positive int (vectors per vmapped call)")
        self.private = private
        self.at = None if weights is None else {n: weights[n] for n in private.names}
        self.data = data
        self.objective = as_objective(objective)  # or a plain loss_fn(outputs, targets)
        self.backend = backend
        self.batching = batching
        self.vmap_rows = vmap_rows
        self.vmap_error = None  # why vmap failed for this model (then every block runs the loop)
        self.choice = {}  # backend="auto": size class ("single", "block") -> the backend measured faster
        self.timings = {}  # backend="auto": the seconds per product each backend took when it was chosen
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
        self._chunks = None  # [(x_i, y_i, weight n_i / n)] of the one in-memory batch (backend "func")
        self._micro = micro_batches  # PLAN, or another operator's micro_batches() over the same data
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

    def _plan(self, x, y, n):
        """``[(x_i, y_i, n_i)]`` micro-batches of the one batch on a CPU where that is exact, else None."""
        if isinstance(self._micro, str):
            self._micro = None
            if self.device.type == "cpu":
                with torch.inference_mode():
                    self._micro = accelerations.plan_micro_batches(
                        self.private.module, self.objective, x, y, n, tuning=self.tuning,
                        min_samples=min(HVP_MIN_SAMPLES, self.tuning.get("micro_min_samples")))
        return self._micro

    def micro_batches(self):
        """The micro-batch plan of the one in-memory batch (None: whole; ``PLAN`` while not yet made), for another
        operator over the same data and private copy (``micro_batches=``): a curvature map plans once, not per
        point.  The plan's exactness is checked at the private copy's base weights either way."""
        return self._micro

    def _graphs(self):
        """The first-order graphs of the one batch: per micro-batch on a CPU when that is exact, else one."""
        (x, y, n), = self.data.batches(self.device)
        chunks = self._plan(x, y, n)
        if chunks is None:
            return [(self._first_order(x, y), 1.0)]
        return [(self._first_order(a, b), m / n) for a, b, m in chunks]

    def _pieces(self):
        """``[(x_i, y_i, n_i / n)]`` of the one batch, as ``_graphs`` cuts it (backend "func")."""
        if self._chunks is None:
            (x, y, n), = self.data.batches(self.device)
            chunks = self._plan(x, y, n)
            self._chunks = [(x, y, 1.0)] if chunks is None else [(a, b, m / n) for a, b, m in chunks]
        return self._chunks

    def _rows(self, m):
        """Row slices of a block of ``m`` vectors, each at most ``vmap_rows`` long and of nearly equal lengths."""
        parts = -(-m // self.vmap_rows)
        bounds = [round(k * m / parts) for k in range(parts + 1)]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def _batched(self, V, loop, vmapped):
        """``vmapped(rows)`` per row slice of ``V`` when vmap applies (``batching="vmap"``, or ``"auto"`` off the
        CPU), else ``loop(V)``.  On a CPU the loop was as fast or faster on every model measured: the micro-batches
        are sized for one vector's activations, and a vmapped block multiplies them (digits CNN 189 vs 415 ms per
        product in blocks of 16, GPT-2 of 136k parameters 174 vs 362 ms, 1 thread; ``benchmarks/hessian.py``).
        The first vmap failure (an op without a batching rule, or out of memory) is remembered in ``vmap_error``
        and every later block of this operator runs the loop, which is exact."""
        if self.batching == "loop" or V.shape[0] == 1 or self.vmap_error is not None or (
                self.batching == "auto" and self.device.type == "cpu"):
            return loop(V)
        try:
            return torch.cat([vmapped(V[rows]) for rows in self._rows(V.shape[0])])
        except Exception as exc:  # noqa: BLE001 -- any failure of the batched form leaves the loop
            self.vmap_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            return loop(V)

    def _unflatten_rows(self, V):
        """``V[m, P]`` -> name -> ``[m, *shape]`` (the batched tangents of one vmapped call)."""
        m = V.shape[0]
        return {n: t.reshape(m, *s) for n, t, s in zip(self.names, torch.split(V, self.sizes, dim=1), self.shapes)}

    def _flat_rows(self, hv, like, m):
        return torch.cat([(h if h is not None else torch.zeros((m,) + tuple(p.shape), dtype=p.dtype,
                                                               device=p.device)).reshape(m, -1)
                          for h, p in zip(hv, like)], dim=1).to(self.out_dtype)

    def _apply_graph(self, first, V):
        """Double backward through one stored first-order graph (Pearlmutter eq. 4); a block in one vmapped
        backward (``is_grads_batched``) per ``vmap_rows`` vectors."""
        leaves, grads, live, _ = first
        if not live:
            return torch.zeros(V.shape, dtype=self.out_dtype, device=V.device)
        outputs = [grads[i] for i in live]

        def loop(V):
            out = torch.empty(V.shape, dtype=self.out_dtype, device=V.device)
            for r in range(V.shape[0]):
                vs = self.unflatten(V[r])
                with explain_double_backward():
                    hv = torch.autograd.grad(outputs, leaves, grad_outputs=[vs[self.names[i]] for i in live],
                                             retain_graph=True, allow_unused=True)
                out[r] = self._flat_rows(hv, leaves, 1)[0]
            return out

        def vmapped(V):
            vs = self._unflatten_rows(V)
            hv = torch.autograd.grad(outputs, leaves, grad_outputs=[vs[self.names[i]] for i in live],
                                     retain_graph=True, allow_unused=True, is_grads_batched=True)
            return self._flat_rows(hv, leaves, V.shape[0])

        return self._batched(V, loop, vmapped)

    def _apply_func(self, x, y, V):
        """Forward-over-reverse: ``jvp`` of ``grad`` of the batch loss (the forward pass is repeated per call);
        a block in one ``torch.func.vmap`` over the tangents per ``vmap_rows`` vectors.  Returns ``(H V, loss)``."""
        base = {n: self.weights[n].detach() for n in self.names}
        module, objective = self.private.module, self.objective

        def loss_of(params):
            loss = objective.functional(module, params, x, y)
            return loss, loss.detach()

        grad_fn = torch.func.grad(loss_of, has_aux=True)

        def product(tangent):
            _, hv, loss = torch.func.jvp(grad_fn, (base,), (tangent,), has_aux=True)
            return hv, loss

        seen = []

        def loop(V):
            out = torch.empty(V.shape, dtype=self.out_dtype, device=V.device)
            for r in range(V.shape[0]):
                with second_order_kernels(), explain_forward_ad(), explain_double_backward():
                    hv, loss = product(self.unflatten(V[r]))
                out[r] = self.flatten(hv).to(self.out_dtype)
                seen.append(loss)
            return out

        def vmapped(V):
            with second_order_kernels():
                hv, loss = torch.func.vmap(product)(self._unflatten_rows(V))
            seen.append(loss.reshape(-1)[0])
            return self._flat_rows([hv[n] for n in self.names], [base[n] for n in self.names], V.shape[0])

        out = self._batched(V, loop, vmapped)
        return out, float(seen[-1])

    def _single(self, V):
        """``H V`` over the one in-memory batch by the operator's backend (``"auto"``: the one chosen)."""
        backend = self.backend if self.backend != "auto" else self._choose(V)
        return self._single_by(backend, V)

    def _single_by(self, backend, V):
        out = torch.zeros(V.shape, dtype=self.out_dtype, device=V.device)
        if backend == "graph":
            if self._graph is None:
                self._graph = self._graphs()
                self.loss = sum(float(g[3]) * w for g, w in self._graph)
            self._check_loss()
            for g, w in self._graph:  # H v = sum_i (n_i / n) H_i v over the micro-batches
                out += self._apply_graph(g, V) * w
            return out
        loss = 0.0
        for x, y, w in self._pieces():
            hv, part = self._apply_func(x, y, V)
            out += hv * w
            loss += part * w
        self.loss = loss
        self._check_loss()
        return out

    def _choose(self, V):
        """``backend="auto"``: at the first single product and the first block, each backend computes it once,
        timed (the graph's build excluded: it is paid once per operator), and the faster serves every later
        product of that kind; both results are the same ``H V`` (the chosen one is returned)."""
        kind = "single" if V.shape[0] == 1 else "block"
        if kind in self.choice:
            return self.choice[kind]
        if self._graph is None:
            self._single_by("graph", V[:1])  # builds the graph; this untimed product is discarded
        seconds = {}
        for backend in ("graph", "func"):
            _sync(self.device)
            t = time.perf_counter()
            try:
                self._single_by(backend, V)
            except RuntimeError:
                if backend == "graph":
                    raise
                continue  # an op without forward-mode AD (e.g. CPU LSTM): double backward it is
            _sync(self.device)
            seconds[backend] = (time.perf_counter() - t) / V.shape[0]
        self.choice[kind] = min(seconds, key=seconds.get)
        self.timings[kind] = {b: round(s, 6) for b, s in seconds.items()}
        return self.choice[kind]

    def _loader(self, V):
        """``H V`` over several batches: each batch's graph (or jvp) serves the whole block, then is freed."""
        out = torch.zeros(V.shape, dtype=self.out_dtype, device=V.device)
        total, acc = 0, 0.0
        backend = self.backend if self.backend != "auto" else self.choice.get("loader", "graph")
        for x, y, n in self.data.batches(self.device):
            if backend == "graph":
                first = self._first_order(x, y)
                out += self._apply_graph(first, V) * n
                acc += float(first[3]) * n
                del first
            else:
                hv, loss = self._apply_func(x, y, V)
                out += hv * n
                acc += loss * n
            total += n
        out /= total
        self.loss = acc / total
        self._check_loss()
        return out

    def matmat_torch(self, V: torch.Tensor) -> torch.Tensor:
        """``H V^T``: ``V[m, P]`` (any float dtype) -> ``[m, P]`` in ``out_dtype`` (float32 or wider), one pass over
        the data for the whole block, each batch's products vmapped over the block (``batching``).

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
            out = self._single(V) if self.data.single is not None else self._loader(V)
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
        self._chunks = None

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


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


# torch.func's forward-over-reverse fails where an op has no forward-mode derivative (the CPU LSTM's mkldnn layer),
# and on a weight used transposed in a tied decoder (a zero tangent of the transpose written in place, torch 2.13)
_NO_FORWARD_AD = ("forward AD", "forward-mode", "ZeroTensors are immutable")


@contextlib.contextmanager
def explain_forward_ad():
    """Re-raise a failure of torch.func's forward-over-reverse (``backend="func"``) with what to pass instead."""
    try:
        yield
    except (RuntimeError, NotImplementedError) as exc:
        msg = str(exc)
        if not any(k in msg for k in _NO_FORWARD_AD):
            raise
        raise RuntimeError(f"backend='func' (forward-over-reverse) cannot differentiate this model: "
                           f"{msg.splitlines()[0]}. Pass backend='graph' (double backward, reverse mode only) or "
                           "backend='auto'.") from exc


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


__all__ = ["BACKENDS", "BATCHING", "HessianOperator", "NonFiniteHessian"]
