"""A private, functional copy of the user's model.

The user's module is never written to: we deep-copy it once onto the evaluation device, put the copy in
eval mode, and write grid points into the copy's own tensors.  Every public computation refreshes the
copy from the user's current weights, so results always describe the model as it is now.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamInfo:
    name: str
    shape: tuple
    dtype: torch.dtype


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device; pass None, 'cpu' or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available; pass device='cpu'")
    return dev


def check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.is_floating_point() for p in model.parameters()):
        raise ValueError(
            "model has no floating-point parameters, so there is no landscape to explore; "
            "pass a module with at least one float parameter (e.g. an nn.Linear)")


PARAMS_RULES = ("requires_grad", "all", "names", "callable")


def unwrap(model: nn.Module) -> nn.Module:
    """The module a wrapper runs: ``torch.compile``'s ``_orig_mod``, ``DataParallel``/``DDP``'s ``module``.

    Everything is computed on the original module: its names carry no wrapper prefix, and Hessian products need
    double backward, which compiled graphs do not provide."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule":
            model = inner
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
    return model


def _aliases(named):
    """``{every name: the first name of the same tensor}`` from ``named_*(remove_duplicate=False)``."""
    first, out = {}, {}
    for n, t in named:
        out[n] = first.setdefault(id(t), n)
    return out


def select_params(module: nn.Module, params):
    """The moved parameters' names (``named_parameters()`` order) and the rule that chose them (``PARAMS_RULES``)."""
    floats = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    if params is None:
        names, rule = [n for n, p in floats if p.requires_grad], "requires_grad"
        if not names:
            raise ValueError("no floating-point parameter of the model has requires_grad=True, so nothing would "
                             "move; pass params='all', a list of parameter names, or a callable (name, tensor) -> "
                             "bool")
        return names, rule
    if isinstance(params, str):
        if params != "all":
            raise ValueError(f"params={params!r} is not known; pass None (the parameters with requires_grad=True), "
                             "'all', a list of parameter names, or a callable (name, tensor) -> bool")
        return [n for n, _p in floats], "all"
    if callable(params):
        names = []
        for n, p in floats:
            keep = params(n, p)
            if not isinstance(keep, (bool, int)) and not (isinstance(keep, torch.Tensor) and keep.numel() == 1):
                raise TypeError(f"params({n!r}, tensor) must return True or False, got {type(keep).__name__}")
            if bool(keep):
                names.append(n)
        rule = "callable"
    elif isinstance(params, (list, tuple, set, frozenset)) or hasattr(params, "__iter__"):
        given = list(params)
        if not all(isinstance(n, str) for n in given):
            raise TypeError("params must be parameter names (strings); pass e.g. [n for n, _ in "
                            "model.named_parameters() if 'lora' in n]")
        alias = _aliases(module.named_parameters(remove_duplicate=False))
        given = strip_prefixes(given, list(alias))
        unknown = [n for n in given if n not in alias]
        if unknown:
            raise ValueError(f"params names {unknown[:5]} are not parameters of the model; its parameters are "
                             f"{[n for n, _p in floats][:5]}{'...' if len(floats) > 5 else ''}")
        wanted = {alias[n] for n in given}
        not_float = [n for n in wanted if n not in dict(floats)]
        if not_float:
            raise ValueError(f"params {not_float[:5]} are not floating-point parameters; they cannot move")
        names, rule = [n for n, _p in floats if n in wanted], "names"
    else:
        raise TypeError(f"params must be None, 'all', a list of parameter names or a callable (name, tensor) -> "
                        f"bool, got {type(params).__name__}")
    if not names:
        raise ValueError("params selects no floating-point parameter, so nothing would move; the model's "
                         f"parameters are {[n for n, _p in floats][:8]}")
    return names, rule


def strip_prefixes(keys, known):
    """``keys`` without the prefix that ``torch.compile`` (``_orig_mod.``) or ``DataParallel``/``DDP``
    (``module.``) put before every name, where ``known`` (the model's names) do not have it."""
    keys = list(keys)
    known = set(known)
    changed = True
    while changed and keys:
        changed = False
        for prefix in ("_orig_mod.", "module."):
            if all(k.startswith(prefix) for k in keys) and not all(k in known for k in keys):
                keys = [k[len(prefix):] for k in keys]
                changed = True
    return keys


class PrivateModel:
    """Deep copy of a module on ``device``, in eval mode, with all gradients off.

    ``names`` are the parameters that move (``params``: see :func:`select_params`; the coordinates of the
    landscape); ``all_names`` every floating-point parameter; ``buffer_names`` the floating-point buffers
    (BatchNorm statistics), which only the interpolation moves.  Names are ``named_parameters()``'s, of the
    unwrapped module (:func:`unwrap`): a parameter tied to several modules appears once; ``aliases`` maps every
    other name of it (as in a ``state_dict``) to that one.
    """

    def __init__(self, model: nn.Module, device: torch.device, params=None):
        check_model(model)
        self.wrapper = model
        model = unwrap(model)
        self.source = model
        self.device = device
        try:
            with torch.no_grad():
                module = copy.deepcopy(model)
        except Exception as exc:  # deepcopy of exotic modules (open files, locks) may fail
            raise TypeError(
                f"landscape_widgets needs a private copy of the model and copy.deepcopy failed: {exc}. "
                "Make the module deep-copyable (no open handles or locks as attributes)") from exc
        module.to(device)
        module.eval()
        module.requires_grad_(False)
        for p in module.parameters():
            p.grad = None
        self.module = module
        self.params = {n: p for n, p in module.named_parameters() if p.is_floating_point()}
        self.buffers = dict(module.named_buffers())
        self.all_names = list(self.params)
        self.names, self.params_rule = select_params(model, params)
        self.buffer_names = [n for n, b in self.buffers.items() if b.is_floating_point()]
        self.aliases = _aliases(module.named_parameters(remove_duplicate=False))
        self.aliases.update(_aliases(module.named_buffers(remove_duplicate=False)))
        self.info = [ParamInfo(n, tuple(self.params[n].shape), self.params[n].dtype) for n in self.names]
        self.refresh()

    def refresh(self) -> None:
        """Copy the user's current weights and buffers into the private copy (a read of the source)."""
        src_params = dict(self.source.named_parameters())
        src_buffers = dict(self.source.named_buffers())
        floats = {n for n, p in src_params.items() if p.is_floating_point()}
        if floats != set(self.params) or set(src_buffers) != set(self.buffers):
            raise RuntimeError("the model's parameters or buffers changed since the Landscape was created; "
                               "create a new lw.Landscape for the new architecture")
        self._fingerprint = None  # of the weights copied now (fingerprint())
        with torch.no_grad():
            self.base = {}
            for n, p in self.params.items():
                p.copy_(src_params[n].detach())
                self.base[n] = p.detach().clone()
            self.base_buffers = {}
            for n, b in self.buffers.items():
                b.copy_(src_buffers[n].detach())
                self.base_buffers[n] = b.detach().clone()

    def reset(self) -> None:
        """Put the base weights and buffers back into the private copy."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.base[n])
            for n, b in self.buffers.items():
                b.copy_(self.base_buffers[n])

    @property
    def num_parameters(self) -> int:
        """Scalars that move."""
        return sum(self.params[n].numel() for n in self.names)

    @property
    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def describe_params(self) -> dict:
        """What ``meta`` says about the moved set."""
        return {"moved_parameters": self.num_parameters, "moved_tensors": len(self.names),
                "total_parameters": self.total_parameters, "params_rule": self.params_rule}

    def fingerprint(self) -> str:
        """SHA-256 over names, shapes and bytes of the base weights and buffers (run provenance); computed once
        per :meth:`refresh` (a call's meta, store key, trust-panel checks and Hessian facts all ask for it)."""
        if self._fingerprint is None:
            self._fingerprint = self._hash()
        return self._fingerprint

    def _hash(self) -> str:
        h = hashlib.sha256()
        for store in (self.base, self.base_buffers):
            for n in sorted(store):
                t = store[n].detach().to("cpu").contiguous()
                h.update(n.encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(str(t.dtype).encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # no copy of the bytes
        return h.hexdigest()

    def canonical(self, given: dict, argname: str) -> dict:
        """``given`` (name -> value) under the model's own names: wrapper prefixes stripped, tied aliases mapped to
        the one name; two aliases with different values are an error."""
        keys = strip_prefixes(given, self.aliases)
        out, source = {}, {}
        for key, (orig, value) in zip(keys, given.items()):
            name = self.aliases.get(key, key)
            if name in out:
                a, b = out[name], value
                same = a is b or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                                  and a.shape == b.shape and torch.equal(a.detach().cpu(), b.detach().cpu()))
                if not same:
                    raise ValueError(f"{argname} gives different values for {source[name]!r} and {orig!r}, which "
                                     "are one tied parameter of the model; pass one value for it")
                continue
            out[name], source[name] = value, orig
        return out

def state_from(start, private: PrivateModel, *, need_buffers: bool, argname: str = "start"):
    """The moved parameters (and floating buffers) of ``start`` -- a module or a state_dict -- by name, on device.

    Accepts what ``state_dict()`` gives for the same architecture: tied duplicates, ``torch.compile``'s
    ``_orig_mod.`` and ``DataParallel``'s ``module.`` prefixes.  Parameters that do not move may be absent."""
    if isinstance(start, nn.Module):
        module = unwrap(start)
        sd = dict(module.named_parameters(remove_duplicate=False))
        sd.update(dict(module.named_buffers(remove_duplicate=False)))
    elif isinstance(start, dict):
        sd = start
    else:
        raise TypeError(f"{argname} must be a module of the same architecture or its state_dict, "
                        f"got {type(start).__name__}")
    sd = private.canonical(sd, argname)
    known = set(private.params) | set(private.buffers)
    extra = [n for n in sd if n not in known]
    if extra:
        raise ValueError(f"{argname} has tensor(s) the model does not have: {extra[:5]}; "
                         "pass a module of the same architecture or its state_dict")
    missing = [n for n in private.names if n not in sd]
    if missing:
        raise ValueError(f"{argname} lacks {len(missing)} parameter(s) of the model: {missing[:5]}; pass a module of "
                         "the same architecture or its full state_dict")
    missing = [n for n in private.buffer_names if n not in sd] if need_buffers else []
    if missing:
        raise ValueError(f"{argname} lacks {len(missing)} buffer(s) of the model: {missing[:5]}; pass its full "
                         "state_dict, or buffers='model' to keep the model's buffers")
    out = {}
    names = private.names + (private.buffer_names if need_buffers else [])
    for n in names:
        t = sd[n]
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{argname}[{n!r}] must be a tensor, got {type(t).__name__}")
        ref = private.base[n] if n in private.base else private.base_buffers[n]
        if tuple(t.shape) != tuple(ref.shape):
            raise ValueError(f"{argname}[{n!r}] has shape {tuple(t.shape)}, the model's is {tuple(ref.shape)}")
        out[n] = t.detach().to(device=private.device, dtype=ref.dtype)
    return out
