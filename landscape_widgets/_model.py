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


class PrivateModel:
    """Deep copy of a module on ``device``, in eval mode, with all gradients off.

    ``names`` are the floating-point parameters (the coordinates of the landscape); ``buffer_names`` the
    floating-point buffers (BatchNorm statistics), which only the interpolation moves.
    """

    def __init__(self, model: nn.Module, device: torch.device):
        check_model(model)
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
        self.names = list(self.params)
        self.buffer_names = [n for n, b in self.buffers.items() if b.is_floating_point()]
        self.info = [ParamInfo(n, tuple(p.shape), p.dtype) for n, p in self.params.items()]
        self.refresh()

    def refresh(self) -> None:
        """Copy the user's current weights and buffers into the private copy (a read of the source)."""
        src_params = dict(self.source.named_parameters())
        src_buffers = dict(self.source.named_buffers())
        floats = {n for n, p in src_params.items() if p.is_floating_point()}
        if floats != set(self.params) or set(src_buffers) != set(self.buffers):
            raise RuntimeError("the model's parameters or buffers changed since the Landscape was created; "
                               "create a new lw.Landscape for the new architecture")
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
        return sum(p.numel() for p in self.params.values())

    def fingerprint(self) -> str:
        """SHA-256 over names, shapes and bytes of the base weights and buffers (run provenance)."""
        h = hashlib.sha256()
        for store in (self.base, self.base_buffers):
            for n in sorted(store):
                t = store[n].detach().to("cpu").contiguous()
                h.update(n.encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(str(t.dtype).encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # no copy of the bytes
        return h.hexdigest()


def state_from(start, private: PrivateModel, *, need_buffers: bool, argname: str = "start"):
    """Parameters (and floating buffers) of ``start`` -- a module or a state_dict -- by name, on device."""
    if isinstance(start, nn.Module):
        sd = dict(start.named_parameters())
        sd.update(dict(start.named_buffers()))
    elif isinstance(start, dict):
        sd = start
    else:
        raise TypeError(f"{argname} must be a module of the same architecture or its state_dict, "
                        f"got {type(start).__name__}")
    missing = [n for n in private.names if n not in sd]
    if need_buffers:
        missing += [n for n in private.buffer_names if n not in sd]
    if missing:
        hint = " (or pass buffers='model' to keep the model's buffers)" if need_buffers else ""
        raise ValueError(f"{argname} lacks {len(missing)} tensor(s) of the model: {missing[:5]}{hint}")
    known = set(private.names) | set(private.buffers)
    extra = [n for n in sd if n not in known]
    if extra:
        raise ValueError(f"{argname} has tensor(s) the model does not have: {extra[:5]}; "
                         "pass a module of the same architecture or its state_dict")
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
