"""The Generalized Gauss-Newton matrix of the full-data loss as a matrix-free operator beside the Hessian.

``G = (1/N) sum_b n_b J_b^T H_b J_b`` (Schraudolph 2002, "Fast curvature matrix-vector products for second-order
gradient descent", Neural Computation 14(7); Martens 2020, "New insights and perspectives on the natural gradient
method", JMLR 21, §8), with ``J_b`` the Jacobian of the model's outputs on batch ``b`` with respect to the moved
parameters and ``H_b`` the Hessian of the batch's loss with respect to those outputs. It is the Hessian without the
term that the outputs' own curvature contributes (``sum_k dL/dz_k d^2 z_k / dtheta^2``): for a loss convex in the
outputs (cross-entropy, MSE) ``H_b`` is positive semidefinite, so ``G`` is too (``lambda_min >= 0`` up to rounding),
and for a model linear in its parameters ``G`` equals the Hessian.

A product ``G v`` per batch is ``J v`` (the outputs' directional derivative), ``H_b (J v)`` (a Hessian-vector product of the loss in the
outputs alone) and ``J^T (.)`` (a backward pass).  The outputs enter the loss as detached leaves, so ``H_b`` is the
Hessian in the outputs as independent variables even where one output is computed from another.  Two backends:

- ``"graph"``: the batch's graph is built once per pass (once in all for a single batch) and ``J v`` comes from the
  double-vjp trick: ``J^T u`` is linear in a dummy ``u``, so ``d/du <J^T u, v> = J v``.  The vectors of a block go
  through the backward passes together (``is_grads_batched``, vmap over the vjp), one by one where vmap has no rule.
- ``"func"``: ``torch.func.jvp`` of the functional forward and ``torch.func.vjp``, vmapped over the block's vectors,
  with the same loop fallback.

The loss must be a function of the outputs, ``loss_fn(outputs, targets)``: a model's own loss (HuggingFace with
``loss_fn=None``) and ``batch_loss(model, batch)`` compute it inside, where the outputs cannot be separated.  The
outputs may be a tensor or a pytree of tensors (tuple, dict, HuggingFace ``ModelOutput``): the floating tensors the
loss depends on are the outputs ``z``.

The interface is :class:`~landscape_widgets.hessian.hvp.HessianOperator`'s (:class:`CurvatureOperator`), so
Lanczos, SLQ and Hutch++ take either.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from .. import accelerations
from ..driver import Cancelled, is_cancelled
from ..objective import as_objective
from ..runtime import warm_allocator
from .hvp import NonFiniteHessian, check_second_order, explain_double_backward, second_order_kernels

BACKENDS = ("auto", "graph", "func")
BATCHING = ("auto", "vmap", "loop")
# vectors per vmapped call, as for the Hessian: a batched backward holds this many copies of the activations' gradients
VMAP_ROWS = 16


class CurvatureOperator:
    """A curvature matrix of the loss (``objective``) over all of ``data`` at the private copy's base weights (or
    at ``weights``, name -> tensor), with :class:`~landscape_widgets.hessian.hvp.HessianOperator`'s interface.

    Vectors are flat over ``private.names``; ``matmat_torch(V[m, P])`` returns ``[m, P]`` in ``out_dtype`` (float32
    or wider) with one pass over the data for the block, ``matvec``/``matmat`` are float64 numpy (scipy's
    convention), ``hvps`` counts products, ``cancel`` (Event or callable) is checked before every pass and raises
    :class:`~landscape_widgets.Cancelled`, a non-finite loss or product raises :class:`NonFiniteHessian`.
    ``tuning`` is accepted for the interface: a batch's graph is held whole (no micro-batches).
    Subclasses give ``_products(V)`` (``V`` in the model's dtype) and set ``loss``."""

    curvature = None
    what = "curvature"

    def __init__(self, private, data, objective, *, backend="graph", cancel=None, on_hvp=None, weights=None,
                 tuning=None, batching="auto", vmap_rows=VMAP_ROWS, micro_batches=None):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not known; pass one of {', '.join(map(repr, BACKENDS))}")
        if batching not in BATCHING:
            raise ValueError(f"batching={batching!r} is not known; pass one of {', '.join(map(repr, BATCHING))} "
                             "('auto': vmap, the loop where vmap fails; 'loop': one at a time)")
        if isinstance(vmap_rows, bool) or not isinstance(vmap_rows, int) or vmap_rows < 1:
            raise ValueError(f"vmap_rows={vmap_rows!r} must be a positive int (vectors per vmapped call)")
        self.batching = batching
        self.vmap_rows = vmap_rows
        self.vmap_error = None  # why vmap failed for this model (then the loop runs from there on)
        self.choice = {}  # backend="auto": size class -> the backend measured faster
        self.timings = {}  # backend="auto": seconds per product of each backend when it was chosen
        self.private = private
        self.at = None if weights is None else {n: weights[n] for n in private.names}
        self.data = data
        self.objective = as_objective(objective)
        self.backend = backend
        self.cancel = cancel
        self.on_hvp = on_hvp
        self.tuning = tuning or accelerations.DEFAULT_TUNING
        self.names = list(private.names)
        self.shapes = [tuple(private.base[n].shape) for n in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.num_parameters = int(sum(self.sizes))
        self.dtype = private.base[self.names[0]].dtype
        # summed over batches and handed to the solvers in float32 or wider, as the Hessian's products
        self.out_dtype = torch.promote_types(self.dtype, torch.float32)
        self.device = private.device
        self.hvps = 0
        self.loss = None  # the full-data loss, known after the first pass
        warm_allocator(self.device)  # each product allocates activation-sized tensors: keep them off mmap

    def micro_batches(self):
        """None: these operators do not cut a batch into micro-batches (``micro_batches=`` is accepted, for the
        Hessian operator's interface, and not used)."""
        return None

    # -- flat <-> dict ---------------------------------------------------------------------------------------
    def flatten(self, d: dict) -> torch.Tensor:
        return torch.cat([d[n].reshape(-1).to(self.dtype) for n in self.names])

    def unflatten(self, v: torch.Tensor) -> dict:
        return {n: t.view(s) for n, t, s in zip(self.names, torch.split(v, self.sizes), self.shapes)}

    def _pieces(self, V: torch.Tensor) -> list:
        """``V[m, P]`` as one ``[m, *shape]`` tensor per moved parameter."""
        return [t.reshape((V.shape[0],) + s) for t, s in zip(torch.split(V, self.sizes, dim=1), self.shapes)]

    def _flat_rows(self, grads, like) -> torch.Tensor:
        """Per-parameter ``[m, *shape]`` tensors (None: zero) as ``[m, P]``."""
        m = like.shape[0]
        return torch.cat([(g.reshape(m, -1) if g is not None else like.new_zeros((m, s)))
                          for g, s in zip(grads, self.sizes)], dim=1)

    def _batched(self, rows, loop, vmapped):
        """``vmapped(part)`` per part of ``rows`` (at most ``vmap_rows`` long) while vmap applies, else
        ``loop(rows)``; the first failure of vmap is kept in ``vmap_error`` and the loop serves every later call
        (``batching="vmap"`` raises it instead).  ``rows`` is a tensor whose first dimension is cut."""
        m = rows.shape[0]
        if self.batching == "loop" or m == 1 or self.vmap_error is not None:
            return loop(rows)
        parts = -(-m // self.vmap_rows)
        bounds = [round(k * m / parts) for k in range(parts + 1)]
        try:
            return torch.cat([vmapped(rows[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
        except Exception as exc:  # noqa: BLE001 -- no batching rule, out of memory: the loop is exact
            if self.batching == "vmap":
                raise
            self.vmap_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            return loop(rows)

    @property
    def weights(self) -> dict:
        """The point the matrix is taken at: ``weights`` as given, else the private copy's base weights."""
        return self.private.base if self.at is None else self.at

    def _leaves(self):
        return [self.weights[n].detach().requires_grad_(True) for n in self.names]

    # -- products --------------------------------------------------------------------------------------------
    def matmat_torch(self, V: torch.Tensor) -> torch.Tensor:
        """``M V^T`` row by row: ``V[m, P]`` (any float dtype) -> ``[m, P]`` in ``out_dtype``, one pass over the data.

        As for the Hessian, a low-precision model gets each row scaled to a largest entry of 1 and scaled back
        (the matrix is linear), so that small entries keep their digits in float16's range."""
        if V.ndim != 2 or V.shape[1] != self.num_parameters:
            raise ValueError(f"vectors must have shape [m, {self.num_parameters}], got {tuple(V.shape)}")
        if is_cancelled(self.cancel):
            raise Cancelled(f"cancelled after {self.hvps} {self.what}-vector products")
        V = V.to(device=self.device)
        scale = None
        if self.dtype.itemsize < 4:
            wide = V.to(self.out_dtype)
            scale = wide.abs().amax(dim=1, keepdim=True)
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            V = wide / scale
        V = V.to(self.dtype)
        with torch.enable_grad():
            out = self._products(V)
        self._check_loss()
        if scale is not None:
            out *= scale
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteHessian(self._where(f"a {self.what}-vector product is not finite (loss {self.loss})"))
        self.hvps += V.shape[0]
        if self.on_hvp is not None:
            self.on_hvp(self.hvps)
        return out.detach()

    def _products(self, V):
        raise NotImplementedError

    def _where(self, what):
        point = "at the model's weights" if self.at is None else "at this point"
        return (f"{what} {point}, so the {self.what} is not defined there: check the data for NaN or inf "
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
        """float64 numpy ``V[P, m]`` -> ``M V`` as ``[P, m]`` (scipy's LinearOperator convention)."""
        V = torch.from_numpy(np.ascontiguousarray(np.asarray(V, dtype=np.float64).T))
        return self.matmat_torch(V).double().cpu().numpy().T

    def linear_operator(self):
        from scipy.sparse.linalg import LinearOperator

        P = self.num_parameters
        return LinearOperator((P, P), matvec=self.matvec, matmat=self.matmat, rmatvec=self.matvec,
                              dtype=np.float64)

    def quadratic_form(self, d: dict) -> float:
        """``d^T M d`` for a direction dict (float64 result)."""
        v = self.flatten({n: d[n].to(self.device) for n in self.names})
        return float((self.matvec_torch(v).double() * v.double()).sum())

    def release(self):
        """Free what is kept between products (a single batch's graph or per-sample gradients)."""

    @contextlib.contextmanager
    def progress(self, desc, enabled=True):
        """A ``tqdm.auto`` bar counting the products made inside the block; yields ``stage(text)``."""
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
        """A computation that alternates products with numpy/scipy linear algebra: numpy's BLAS single-threaded
        meanwhile (its spinning threads took the cores from the next product), what is kept freed at the end."""
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


def _candidates(flat) -> list:
    """Positions of the outputs' floating tensors that depend on the parameters."""
    return [i for i, t in enumerate(flat) if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]


def _grad(outputs, inputs, grad_outputs, batched, create_graph=False):
    """``torch.autograd.grad`` that keeps the graph, with None for inputs that do not depend on the outputs."""
    return torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, retain_graph=True, create_graph=create_graph,
                               allow_unused=True, is_grads_batched=batched)


class _OutputLoss:
    """The loss of one batch as a function of the model's outputs (detached leaves ``zd``), with its gradient
    ``gs`` kept differentiable: ``H_b w = d/dzd <gs, w>``.  ``used``: the candidates the loss depends on."""

    def __init__(self, objective, out, y, cand=None):
        flat, spec = tree_flatten(out)
        cand = _candidates(flat) if cand is None else cand
        if not cand:
            raise ValueError("the model's outputs do not depend on the moved parameters (no floating tensor output "
                             "with a gradient); check params=, and that the model returns tensors (a tensor, or a "
                             "tuple, dict or ModelOutput of tensors)")
        leaves = list(flat)
        for i in cand:
            leaves[i] = flat[i].detach().requires_grad_(True)
        loss = objective.reduce(tree_unflatten(leaves, spec), y)
        if not loss.requires_grad:
            raise ValueError("loss_fn(outputs, targets) does not depend on the model's outputs (no gradient); pass a "
                             "differentiable loss of the outputs such as torch.nn.CrossEntropyLoss()")
        gz = torch.autograd.grad(loss, [leaves[i] for i in cand], create_graph=True, allow_unused=True)
        keep = [k for k, g in enumerate(gz) if g is not None]
        self.used = [cand[k] for k in keep]            # positions in the flattened outputs
        self.zd = [leaves[cand[k]] for k in keep]
        self.gs = [gz[k] for k in keep]
        self.hlive = [k for k, g in enumerate(self.gs) if g.requires_grad]  # a loss linear in z_k: H's block is 0
        self.loss = loss.detach()

    def hvp(self, w, batched):
        """``H_b w`` for ``w`` (one tensor per used output, ``[m, *shape]`` when ``batched``); None: a zero block."""
        if not self.hlive:
            return [None] * len(self.zd)
        return list(_grad([self.gs[k] for k in self.hlive], self.zd, [w[k] for k in self.hlive], batched))


class _BatchGraph:
    """The graph of one batch for the ``"graph"`` backend: the forward pass, the loss in the outputs and the
    differentiable ``J^T u`` of the double-vjp trick."""

    def __init__(self, op, x, y):
        self.leaves = op._leaves()
        params = dict(zip(op.names, self.leaves))
        with second_order_kernels():
            out = op.objective.functional_forward(op.private.module, params, x)
            self.loss_of = _OutputLoss(op.objective, out, y)
            flat, _ = tree_flatten(out)
            self.zs = [flat[i] for i in self.loss_of.used]
            self.us = [torch.zeros_like(z, requires_grad=True) for z in self.zs]
            with explain_double_backward():  # J^T u as a function of u: what d/du <J^T u, v> = J v differentiates
                jtu = torch.autograd.grad(self.zs, self.leaves, grad_outputs=self.us, create_graph=True,
                                          allow_unused=True)
        self.live = [i for i, g in enumerate(jtu) if g is not None and g.requires_grad]
        self.jtu = jtu
        check_second_order([jtu[i] for i in self.live])
        self.loss = float(self.loss_of.loss)

    def apply(self, op, V):
        """``G_b V^T`` for ``V[m, P]``: vmapped backward passes (``is_grads_batched``) per ``vmap_rows`` vectors,
        else one vector at a time."""
        if not self.live or not self.zs:
            return torch.zeros(V.shape, dtype=op.out_dtype, device=V.device)
        return op._batched(V, lambda W: torch.cat([self._rows(op, w.unsqueeze(0), False) for w in W]),
                           lambda W: self._rows(op, W, True))

    def _rows(self, op, V, batched):
        m = V.shape[0]
        vs = op._pieces(V) if batched else [t[0] for t in op._pieces(V)]
        lead = (m,) if batched else ()
        with explain_double_backward():
            jv = _grad([self.jtu[i] for i in self.live], self.us, [vs[i] for i in self.live], batched)
            jv = [t if t is not None else z.new_zeros(lead + z.shape) for t, z in zip(jv, self.zs)]
            hjv = self.loss_of.hvp(jv, batched)
            keep = [k for k, t in enumerate(hjv) if t is not None]
            if not keep:
                return torch.zeros(V.shape, dtype=op.out_dtype, device=V.device)
            gv = _grad([self.zs[k] for k in keep], self.leaves, [hjv[k] for k in keep], batched)
        if not batched:
            gv = [None if g is None else g.unsqueeze(0) for g in gv]
        return op._flat_rows(gv, V).to(op.out_dtype)


class GGNOperator(CurvatureOperator):
    """``G = (1/N) sum_b n_b J_b^T H_b J_b`` (Schraudolph 2002; Martens 2020 §8) of ``loss_fn(outputs, targets)``
    over all of ``data``, with :class:`~landscape_widgets.hessian.hvp.HessianOperator`'s interface.

    Positive semidefinite for losses convex in the outputs (cross-entropy, MSE): ``lambda_min >= 0`` up to rounding.
    ``backend``: ``"graph"`` (double-vjp on a kept graph), ``"func"`` (``torch.func.jvp``/``vjp``) or ``"auto"``
    (each timed on the first single product and the first block of a single batch, the faster kept; ``"graph"``
    over several batches).  ``batching``: the block's vectors through vmap (``"auto"``: the loop where vmap fails,
    ``vmap_error`` says why), or ``"loop"``."""

    curvature = "ggn"
    what = "GGN"

    def __init__(self, private, data, objective, **options):
        super().__init__(private, data, objective, **options)
        mode = self.objective.mode
        if mode != "loss_fn":
            where = ("the model's own output loss (loss_fn=None) is computed inside its forward pass"
                     if mode == "output" else "batch_loss(model, batch) computes it together with the forward pass")
            raise ValueError(
                f"curvature='ggn' needs the loss as a function of the model's outputs, but {where}, where the outputs "
                "cannot be separated from it. Pass loss_fn(outputs, targets) with (inputs, targets) batches instead "
                "(for a HuggingFace model e.g. loss_fn=lambda out, labels: torch.nn.functional.cross_entropy("
                "out.logits.flatten(0, -2), labels.flatten()) with batches ({'input_ids': ...}, labels)), or use "
                "curvature='hessian' or curvature='fisher', which take every loss")
        self._graph = None   # the single batch's _BatchGraph

    def release(self):
        self._graph = None

    def _products(self, V):
        if self.data.single is not None:
            backend = self.backend if self.backend != "auto" else self._choose(V)
            return self._single_by(backend, V)
        out = torch.zeros(V.shape, dtype=self.out_dtype, device=V.device)
        total, acc = 0, 0.0
        backend = "func" if self.backend == "func" else "graph"
        for x, y, n in self.data.batches(self.device):
            if backend == "graph":
                graph = _BatchGraph(self, x, y)
                loss = graph.loss
                out += graph.apply(self, V) * n
                del graph
            else:
                part, loss = self._apply_func(x, y, V)
                out += part * n
            acc += loss * n
            total += n
        self.loss = acc / total
        return out / total

    def _single_by(self, backend, V):
        if backend == "graph":
            if self._graph is None:
                (x, y, _n), = self.data.batches(self.device)
                self._graph = _BatchGraph(self, x, y)
                self.loss = self._graph.loss
            self._check_loss()
            return self._graph.apply(self, V)
        (x, y, _n), = self.data.batches(self.device)
        out, self.loss = self._apply_func(x, y, V)
        return out

    def _choose(self, V):
        """``backend="auto"``: both backends compute the first single product and the first block, timed (the
        graph's build excluded: it is paid once per operator); the faster serves every later one of that kind."""
        kind = "single" if V.shape[0] == 1 else "block"
        if kind in self.choice:
            return self.choice[kind]
        if self._graph is None:
            self._single_by("graph", V[:1])
        seconds = {}
        for backend in ("graph", "func"):
            _sync(self.device)
            t = time.perf_counter()
            self._single_by(backend, V)
            _sync(self.device)
            seconds[backend] = (time.perf_counter() - t) / V.shape[0]
        self.choice[kind] = min(seconds, key=seconds.get)
        self.timings[kind] = {b: round(s, 6) for b, s in seconds.items()}
        return self.choice[kind]

    # -- "func": torch.func.jvp and vjp ------------------------------------------------------------------------
    def _apply_func(self, x, y, V):
        """``G_b V^T`` and the batch's loss: one ``vjp`` (the forward pass, kept for the block), a ``jvp`` per
        vector (vmapped per ``vmap_rows``), the loss's Hessian in the outputs between them."""
        base = {n: self.weights[n].detach() for n in self.names}
        module, objective = self.private.module, self.objective
        state = {}

        def outputs(params):
            flat, spec = tree_flatten(objective.functional_forward(module, params, x))
            cand = state.setdefault("cand", _candidates(flat))
            state["spec"] = spec
            state["other"] = {i: t for i, t in enumerate(flat) if i not in cand and not isinstance(t, torch.Tensor)}
            # tensors leave a transform only as its outputs or aux; other leaves (None, numbers) as they are
            aux = tuple(t for i, t in enumerate(flat) if i not in cand and isinstance(t, torch.Tensor))
            return tuple(flat[i] for i in cand), aux

        def forward(params):
            return outputs(params)[0]

        with second_order_kernels(), explain_double_backward():
            zs, vjp_fn, aux = torch.func.vjp(outputs, base, has_aux=True)
            cand, spec, other = state["cand"], state["spec"], state["other"]
            flat, rest = [], iter(aux)
            for i in range(spec.num_leaves):
                flat.append(zs[cand.index(i)] if i in cand else other[i] if i in other else next(rest))
            loss_of = _OutputLoss(objective, tree_unflatten(flat, spec), y, cand)
            if not loss_of.used:
                return torch.zeros(V.shape, dtype=self.out_dtype, device=V.device), float(loss_of.loss)
            used = [cand.index(i) for i in loss_of.used]

            def rows(W, batched):
                m = W.shape[0]
                lead = (m,) if batched else ()
                if batched:
                    jv = torch.func.vmap(lambda t: torch.func.jvp(forward, (base,), (t,))[1])(
                        dict(zip(self.names, self._pieces(W))))
                else:
                    jv = torch.func.jvp(forward, (base,), (self.unflatten(W[0]),))[1]
                hjv = loss_of.hvp([jv[k] for k in used], batched)
                cot = [z.new_zeros(lead + z.shape) for z in zs]
                for k, h in zip(used, hjv):
                    if h is not None:
                        cot[k] = h
                gv = (torch.func.vmap(vjp_fn) if batched else vjp_fn)(tuple(cot))[0]
                gv = [gv[n] if batched else gv[n].unsqueeze(0) for n in self.names]
                return self._flat_rows(gv, W).to(self.out_dtype)

            out = self._batched(V, lambda W: torch.cat([rows(w.unsqueeze(0), False) for w in W]),
                                lambda W: rows(W, True))
        return out, float(loss_of.loss)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["BACKENDS", "BATCHING", "CurvatureOperator", "GGNOperator"]
