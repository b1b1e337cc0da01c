"""An independent reference for the zoo: explicit arithmetic, no landscape_widgets internals.

The loss at a point is computed on a deep copy of the model in eval mode with ``torch.func.functional_call``: the
point's value of every parameter is written under *every* name the parameter has (tied/shared parameters under each
alias), the batches are split and called as the API documents, the per-batch losses are averaged with the batches'
sample counts, in float64.  A second path (``loss_inplace``) writes the values into the copy's own Parameters instead;
the zoo's self-tests check that both agree, so the reference does not hinge on ``functional_call``'s tying rules.
"""
from __future__ import annotations

import copy
import contextlib
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call


# -- parameters -------------------------------------------------------------------------------------------------
def canonical(model) -> dict:
    """name -> Parameter, one entry per distinct floating-point Parameter (named_parameters() deduplicates)."""
    return {n: p for n, p in model.named_parameters() if p.is_floating_point()}


def aliases(model) -> dict:
    """canonical name -> every name of that Parameter (``named_parameters(remove_duplicate=False)``)."""
    first = {}
    out = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        key = first.setdefault(id(p), n)
        out.setdefault(key, []).append(n)
    return out


def moved_names(model, rule) -> list:
    """The parameters a ``params`` rule moves, in named_parameters() order (the API's documented rule)."""
    params = canonical(model)
    if rule is None:
        return [n for n, p in params.items() if p.requires_grad]
    if isinstance(rule, str) and rule == "all":
        return list(params)
    if callable(rule):
        return [n for n, p in params.items() if rule(n, p)]
    chosen = set(rule)
    return [n for n in params if n in chosen]


def float_buffers(model) -> dict:
    return {n: b for n, b in model.named_buffers() if b.is_floating_point()}


def strip_key(name, model):
    """Direction keys of a compiled model may carry torch.compile's ``_orig_mod.`` prefix; the reference evaluates the
    original module."""
    names = canonical(model)
    if name in names:
        return name
    for prefix in ("_orig_mod.", "module."):
        if name.startswith(prefix) and name[len(prefix):] in names:
            return name[len(prefix):]
    raise KeyError(f"{name!r} is no parameter of the reference model")


def normalize_dict(d, model) -> dict:
    return {strip_key(n, model): t for n, t in d.items()}


def point(model, moved, dirs, coeffs) -> dict:
    """canonical name -> value at theta + sum_k coeffs[k] dirs[k] (float64 arithmetic, then the parameter's dtype);
    parameters that do not move keep the model's values."""
    out = {}
    for n, p in canonical(model).items():
        base = p.detach()
        if n in moved:
            v = base.double()
            for c, d in zip(coeffs, dirs):
                v = v + float(c) * d[n].detach().double()
            out[n] = v.to(p.dtype)
        else:
            out[n] = base.clone()
    return out


def interpolation_point(model, start, moved, a) -> dict:
    """theta(a) = (1 - a) theta_start + a theta_model on the moved parameters; the model's values elsewhere."""
    out = {}
    for n, p in canonical(model).items():
        if n in moved:
            out[n] = ((1.0 - a) * start[n].detach().double() + a * p.detach().double()).to(p.dtype)
        else:
            out[n] = p.detach().clone()
    return out


def interpolation_buffers(model, start, a) -> dict:
    out = {}
    for n, b in float_buffers(model).items():
        out[n] = ((1.0 - a) * start[n].detach().double() + a * b.detach().double()).to(b.dtype)
    return out


# -- data and per-batch losses ----------------------------------------------------------------------------------
def _is_tensor_tuple(obj):
    return isinstance(obj, tuple) and len(obj) > 0 and all(isinstance(t, torch.Tensor) for t in obj)


def batches(data, *, pairs: bool) -> list:
    """The batches as documented: with a loss_fn an (inputs, targets) pair of tensors is one batch; without, a dict of
    tensors, a tuple of tensors or a tensor is one batch; anything else is a re-iterable of batches."""
    if pairs:
        if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
            return [tuple(data)]
        return list(data)
    if isinstance(data, torch.Tensor) or isinstance(data, Mapping) or _is_tensor_tuple(data):
        return [data]
    return list(data)


def first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        vals = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        vals = list(obj)
    else:
        return None
    for v in vals:
        t = first_tensor(v)
        if t is not None:
            return t
    return None


def sample_count(batch, *, pairs: bool) -> int:
    if pairs:
        return int(batch[1].shape[0]) if batch[1].dim() else int(first_tensor(batch[0]).shape[0])
    return int(first_tensor(batch).shape[0])


def call(module, inputs):
    if isinstance(inputs, Mapping):
        return module(**inputs)
    if isinstance(inputs, (list, tuple)):
        return module(*inputs)
    return module(inputs)


def output_loss(out):
    if hasattr(out, "loss") and out.loss is not None:
        return out.loss
    if isinstance(out, Mapping) and "loss" in out:
        return out["loss"]
    if isinstance(out, torch.Tensor) and out.numel() == 1:
        return out.reshape(())
    raise TypeError(f"the output {type(out).__name__} carries no loss")


class BatchLoss(nn.Module):
    """``forward(batch)`` = the loss of one batch, for whichever of the three conventions the case uses; the model is
    the submodule ``m`` (so that functional_call can put a point's values into it under ``m.<name>``)."""

    def __init__(self, model, loss_fn=None, batch_loss=None):
        super().__init__()
        self.m = model
        self.loss_fn = loss_fn
        self.batch_loss = batch_loss

    def forward(self, batch):
        if self.batch_loss is not None:
            return self.batch_loss(self.m, batch)
        if self.loss_fn is not None:
            x, y = batch
            return self.loss_fn(call(self.m, x), y)
        return output_loss(call(self.m, batch))


def _to_double(obj):
    if isinstance(obj, torch.Tensor):
        return obj.double() if obj.is_floating_point() else obj
    if isinstance(obj, Mapping):
        return {k: _to_double(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_double(v) for v in obj)
    return obj


def _weight_norm_explicit(v, g, dim=0):
    """``torch._weight_norm`` written out: ``v * g / ||v||`` with the norm over every dimension but ``dim``."""
    if dim == -1:
        return v * (g / v.norm())
    dims = [i for i in range(v.dim()) if i != dim]
    return v * (g / v.norm(dim=dims, keepdim=True))


@contextlib.contextmanager
def explicit_weight_norm():
    """``torch._weight_norm`` (what ``nn.utils.parametrizations.weight_norm`` calls) replaced by its formula while the
    reference Hessian is taken: torch 2.13's own double backward of ``_weight_norm`` is wrong on CPU
    (``torch.autograd.gradgradcheck`` fails, the Hessian it gives is not even symmetric), the formula's is exact."""
    real = torch._weight_norm
    torch._weight_norm = _weight_norm_explicit
    try:
        yield
    finally:
        torch._weight_norm = real


class Reference:
    """The reference for one zoo case (its ``ref_model``, loss convention and data)."""

    def __init__(self, case):
        self.case = case
        self.model = case.ref_model
        self.pairs = case.loss_fn is not None
        self.batches = batches(case.data, pairs=self.pairs)
        self.counts = [sample_count(b, pairs=self.pairs) for b in self.batches]
        self.aliases = aliases(self.model)
        self._wrapper = None

    def moved(self, rule="__case__"):
        return moved_names(self.model, self.case.params if rule == "__case__" else rule)

    def _copy(self, dtype=None):
        m = copy.deepcopy(self.model)
        if dtype is not None:
            m = m.to(dtype)
        m.eval()
        return BatchLoss(m, self.case.loss_fn, self.case.batch_loss).eval()

    def _state(self, values: dict, buffers: dict | None = None) -> dict:
        state = {}
        for n, t in values.items():
            for alias in self.aliases[n]:
                state["m." + alias] = t
        for n, b in (buffers or {}).items():
            state["m." + n] = b
        return state

    def loss(self, values: dict, buffers: dict | None = None) -> float:
        """The sample-weighted mean over the batches at the parameter values ``values`` (canonical names; every
        parameter), in eval mode, through functional_call."""
        if self._wrapper is None:
            self._wrapper = self._copy()
        wrapper = self._wrapper
        state = self._state(values, buffers)
        total, acc = 0, 0.0
        with torch.no_grad():
            for b, n in zip(self.batches, self.counts):
                acc += float(functional_call(wrapper, state, (b,), strict=False).double()) * n
                total += n
        return acc / total

    def _copy_at(self, values: dict):
        """A deep copy (in its wrapper) whose own Parameters hold ``values``."""
        wrapper = self._copy()
        with torch.no_grad():
            own = canonical(wrapper.m)
            for n, t in values.items():
                own[n].copy_(t)
        return wrapper

    def loss_inplace(self, values: dict, buffers: dict | None = None) -> float:
        """The same through a deep copy whose own Parameters (and buffers) are overwritten."""
        wrapper = self._copy_at(values)
        m = wrapper.m
        with torch.no_grad():
            own_b = dict(m.named_buffers())
            for n, t in (buffers or {}).items():
                own_b[n].copy_(t)
            total, acc = 0, 0.0
            for b, n in zip(self.batches, self.counts):
                acc += float(wrapper(b).double()) * n
                total += n
        return acc / total

    def recompute_bn_loss(self, values: dict) -> float:
        """buffers="recompute": BatchNorm statistics re-estimated at the point by one train-mode pass over the data
        with cumulative averages (as torch.optim.swa_utils.update_bn), then the eval-mode loss."""
        wrapper = self._copy_at(values)
        m = wrapper.m
        with torch.no_grad():
            bns = [mod for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None
            m.train()
            for b in self.batches:
                if self.pairs:
                    call(m, b[0])
                elif self.case.batch_loss is not None:
                    self.case.batch_loss(m, b)
                else:
                    call(m, b)
            m.eval()
            total, acc = 0, 0.0
            for b, n in zip(self.batches, self.counts):
                acc += float(wrapper(b).double()) * n
                total += n
        return acc / total

    def base_values(self) -> dict:
        return {n: p.detach().clone() for n, p in canonical(self.model).items()}

    # -- Hessian ------------------------------------------------------------------------------------------------
    def dense_hessian(self, moved: list, *, math_sdpa=False) -> np.ndarray:
        """The exact Hessian of the loss over the flattened ``moved`` parameters (in ``moved`` order), float64, by
        torch.autograd.functional.hessian; the other parameters keep the model's values."""
        wrapper = self._copy(torch.float64)
        params = canonical(self.model)
        fixed = {n: p.detach().double() for n, p in params.items() if n not in moved}
        shapes = [params[n].shape for n in moved]
        sizes = [int(np.prod(s)) if len(s) else 1 for s in shapes]
        flat0 = torch.cat([params[n].detach().double().reshape(-1) for n in moved])
        data = [_to_double(b) for b in self.batches]
        total = float(sum(self.counts))

        def f(flat):
            values = dict(fixed)
            values.update({n: t.view(s) for n, t, s in zip(moved, torch.split(flat, sizes), shapes)})
            return self._mean_loss(wrapper, values, data, total)

        return self._hessian(f, flat0, math_sdpa).numpy()

    def _mean_loss(self, wrapper, values, data, total):
        state = self._state(values)
        loss = 0.0
        for b, n in zip(data, self.counts):
            loss = loss + functional_call(wrapper, state, (b,), strict=False) * (n / total)
        return loss

    @staticmethod
    def _hessian(f, x0, math_sdpa):
        """``torch.autograd.functional.hessian`` with the kernels that have exact second derivatives."""
        with contextlib.ExitStack() as stack:
            if math_sdpa:
                from torch.nn.attention import SDPBackend, sdpa_kernel
                stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            stack.enter_context(explicit_weight_norm())
            return torch.autograd.functional.hessian(f, x0, vectorize=True)

    def directional_curvature(self, d: dict, *, math_sdpa=False) -> float:
        """d^T H d = d^2/dt^2 L(theta + t d) at t = 0 (float64 double backward through one scalar): the curvature along
        ``d`` without a dense Hessian, for models too big for one; every parameter ``d`` names moves."""
        wrapper = self._copy(torch.float64)
        params = canonical(self.model)
        data = [_to_double(b) for b in self.batches]
        total = float(sum(self.counts))

        def phi(t):
            values = {n: p.detach().double() + (t[0] * d[n].detach().double() if n in d else 0.0)
                      for n, p in params.items()}
            return self._mean_loss(wrapper, values, data, total)

        return float(self._hessian(phi, torch.zeros(1, dtype=torch.float64), math_sdpa)[0, 0])

    @staticmethod
    def flat(d: dict, moved: list) -> np.ndarray:
        return np.concatenate([d[n].detach().double().reshape(-1).numpy() for n in moved])
