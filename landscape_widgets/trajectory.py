"""``Trajectory``: the weights of a model along its optimization path, recorded step by step, memory-bounded.

Every ``record(model)`` copies the floating-point parameters (``named_parameters()`` order) into one flat
float32 numpy vector on the CPU; the model is only read.

Memory bound: the stored snapshots never take more than ``max_bytes`` (default 256 MiB).  When the next snapshot
would cross the budget, every other stored snapshot is dropped and the recording stride doubles (the snapshots kept
are those with record index ``r % stride == 0``, plus always the latest one).  A run of any length therefore keeps
between about ``capacity / 2`` and ``capacity = max_bytes // snapshot_bytes`` evenly spaced snapshots, always the
first and the last, and recording costs O(capacity) memory, not O(steps).  The per-record losses and steps of the
snapshots kept travel with them.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from ._model import strip_prefixes, unwrap

DEFAULT_MAX_BYTES = 256 * 2 ** 20
MIN_SNAPSHOTS = 3  # the first, the latest and one more: what a 2-D PCA needs


def _float_tensors(source, names=None):
    """``[(name, tensor)]`` of the floating-point parameters of a module, or of the float tensors of a state_dict.

    Names are the original module's: a ``torch.compile``'d or ``DataParallel`` module is unwrapped and a state_dict
    loses their ``_orig_mod.`` / ``module.`` prefix, as ``Landscape`` names them; a parameter tied to several
    modules appears once for a module."""
    if isinstance(source, nn.Module):
        items = [(n, p) for n, p in unwrap(source).named_parameters() if p.is_floating_point()]
    elif isinstance(source, dict):
        keys = strip_prefixes(source, names or ())
        items = [(k, t) for k, t in zip(keys, source.values())
                 if isinstance(t, torch.Tensor) and t.is_floating_point()]
    else:
        raise TypeError(f"model must be a torch.nn.Module or a state_dict, got {type(source).__name__}")
    if names is not None:
        have = dict(items)
        missing = [n for n in names if n not in have]
        if missing:
            raise ValueError(f"the checkpoint lacks tensor(s) {missing[:5]} that the trajectory records; "
                             "record checkpoints of one architecture only")
        items = [(n, have[n]) for n in names]
    return items


class Trajectory:
    """Snapshots ``theta_i`` of a model's parameters along training (Li et al. 2018, arXiv 1712.09913, §7).

    ``traj.record(model, loss=...)`` once per step or epoch you want kept.  ``max_bytes`` bounds the snapshot
    store (see the module docstring for how); ``len(traj)`` is the number of snapshots kept, ``traj.steps`` and
    ``traj.losses`` their step numbers and losses (NaN where none was given), ``traj.matrix()`` the
    ``[len(traj), num_parameters]`` array of them.
    """

    def __init__(self, *, max_bytes=DEFAULT_MAX_BYTES):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes <= 0:
            raise ValueError(f"max_bytes={max_bytes!r} must be a positive int (the snapshot budget in bytes)")
        self.max_bytes = int(max_bytes)
        self.names = None
        self.shapes = None
        self.num_parameters = 0
        self.stride = 1
        self.num_recorded = 0
        self._snaps = []  # (record index, step, loss, vector)

    # -- recording ----------------------------------------------------------------------------------------------
    def record(self, model, *, loss=None, step=None):
        """Keep a copy of ``model``'s floating-point parameters (a module or a state_dict); returns ``self``."""
        items = _float_tensors(model, self.names)
        if self.names is None:
            if not items:
                raise ValueError("model has no floating-point parameters to record; pass a module with at least "
                                 "one float parameter")
            self.names = [n for n, _t in items]
            self.shapes = [tuple(t.shape) for _n, t in items]
            self.num_parameters = int(sum(t.numel() for _n, t in items))
            if self.capacity < MIN_SNAPSHOTS:
                raise ValueError(
                    f"max_bytes={self.max_bytes} holds fewer than {MIN_SNAPSHOTS} snapshots of "
                    f"{self.snapshot_bytes} bytes ({self.num_parameters} float32 parameters); pass "
                    f"max_bytes >= {MIN_SNAPSHOTS * self.snapshot_bytes}")
        else:
            for (n, t), shape in zip(items, self.shapes):
                if tuple(t.shape) != shape:
                    raise ValueError(f"parameter {n!r} has shape {tuple(t.shape)} but was recorded with shape "
                                     f"{shape}; record one architecture per trajectory")
        vec = np.empty(self.num_parameters, dtype=np.float32)
        flat = torch.from_numpy(vec)
        off = 0
        with torch.no_grad():
            for _n, t in items:
                k = t.numel()
                flat[off:off + k].copy_(t.detach().reshape(-1))
                off += k
        if loss is not None:
            loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        r = self.num_recorded
        step = r if step is None else int(step)
        # the previous latest snapshot was kept only because it was the latest
        if self._snaps and self._snaps[-1][0] % self.stride != 0:
            self._snaps.pop()
        self._snaps.append((r, step, np.nan if loss is None else loss, vec))
        self.num_recorded += 1
        while len(self._snaps) > self.capacity:
            self.stride *= 2
            last = self._snaps[-1]
            self._snaps = [s for s in self._snaps[:-1] if s[0] % self.stride == 0] + [last]
        return self

    @classmethod
    def from_checkpoints(cls, checkpoints, *, losses=None, steps=None, model=None, max_bytes=DEFAULT_MAX_BYTES):
        """A trajectory from saved checkpoints: state_dicts, modules or paths of ``torch.save``'d state_dicts.

        ``model`` (optional) says which entries are parameters: without it every floating-point tensor of the
        first checkpoint is recorded (BatchNorm running statistics included).  Paths are loaded one at a time with
        ``torch.load(weights_only=True, map_location="cpu")``, so a long list never sits in memory at once.
        """
        if isinstance(checkpoints, (str, os.PathLike, dict, nn.Module)):
            raise TypeError("checkpoints must be a list of state_dicts, modules or paths, not a single one")
        checkpoints = list(checkpoints)
        for argname, arg in (("losses", losses), ("steps", steps)):
            if arg is not None and len(arg) != len(checkpoints):
                raise ValueError(f"{argname} has {len(arg)} entries for {len(checkpoints)} checkpoints; "
                                 "pass one per checkpoint")
        traj = cls(max_bytes=max_bytes)
        names = None if model is None else [n for n, _t in _float_tensors(model)]
        for i, ck in enumerate(checkpoints):
            if isinstance(ck, (str, os.PathLike)):
                ck = torch.load(ck, map_location="cpu", weights_only=True)
            if isinstance(ck, dict) and isinstance(ck.get("state_dict"), dict):
                ck = ck["state_dict"]
            if names is not None and isinstance(ck, dict):
                ck = dict(_float_tensors(ck, names))
            traj.record(ck, loss=None if losses is None else losses[i], step=None if steps is None else steps[i])
        return traj

    def embed(self, method="pca", dims=2, seed=0, **options):
        """This trajectory embedded by ``lw.embed`` (see there): an :class:`~landscape_widgets.Embedding`."""
        from .embedding import embed

        return embed([self], method=method, dims=dims, seed=seed, **options)

    # -- reading ------------------------------------------------------------------------------------------------
    @property
    def snapshot_bytes(self) -> int:
        return 4 * self.num_parameters

    @property
    def capacity(self) -> int:
        """How many snapshots fit in ``max_bytes``."""
        return self.max_bytes // max(self.snapshot_bytes, 1)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored snapshots (<= ``max_bytes``)."""
        return sum(s[3].nbytes for s in self._snaps)

    def __len__(self):
        return len(self._snaps)

    @property
    def steps(self) -> np.ndarray:
        return np.array([s[1] for s in self._snaps], dtype=np.int64)

    @property
    def losses(self) -> np.ndarray:
        return np.array([s[2] for s in self._snaps], dtype=np.float64)

    def vectors(self) -> list:
        """The stored snapshots as flat float32 arrays (the store itself, not copies: do not modify them)."""
        return self.consistent()[2]

    def consistent(self):
        """``(steps, losses, vectors)`` of one moment: a widget thread may read while training still records."""
        snaps = list(self._snaps)  # one atomic copy of the list; record() replaces or appends, never edits entries
        return (np.array([s[1] for s in snaps], dtype=np.int64), np.array([s[2] for s in snaps], dtype=np.float64),
                [s[3] for s in snaps])

    def columns(self, names=None) -> np.ndarray:
        """Indices of the flat vector that belong to parameters ``names`` (all when None), in that order."""
        self._check_recorded()
        if names is None:
            return np.arange(self.num_parameters)
        offsets, off = {}, 0
        for n, shape in zip(self.names, self.shapes):
            k = int(np.prod(shape, dtype=np.int64))
            offsets[n] = (off, off + k)
            off += k
        missing = [n for n in names if n not in offsets]
        if missing:
            raise ValueError(f"the trajectory has no record of parameter(s) {missing[:5]}; record the same model "
                             "(or pass model= to Trajectory.from_checkpoints)")
        return np.concatenate([np.arange(*offsets[n]) for n in names])

    def matrix(self, names=None, dtype=np.float32) -> np.ndarray:
        """``[len(traj), P]``: row i is snapshot i flattened (parameters ``names`` only, when given)."""
        self._check_recorded()
        cols = None if names is None else self.columns(names)
        out = np.empty((len(self._snaps), self.num_parameters if cols is None else len(cols)), dtype=dtype)
        for i, s in enumerate(self._snaps):
            out[i] = s[3] if cols is None else s[3][cols]
        return out

    def state_dict(self, i=-1) -> dict:
        """Snapshot ``i`` as ``{parameter name: float32 tensor}``."""
        self._check_recorded()
        vec, out, off = torch.from_numpy(self._snaps[i][3]), {}, 0
        for n, shape in zip(self.names, self.shapes):
            k = int(np.prod(shape, dtype=np.int64))
            out[n] = vec[off:off + k].reshape(shape).clone()
            off += k
        return out

    def _check_recorded(self):
        if not self._snaps:
            raise ValueError("the trajectory is empty; call traj.record(model) during training first")

    def __repr__(self):
        return (f"Trajectory({len(self)} snapshots of {getattr(self, 'num_parameters', 0)} parameters, "
                f"{self.num_recorded} recorded, stride {self.stride}, {self.nbytes / 2 ** 20:.1f} of "
                f"{self.max_bytes / 2 ** 20:.0f} MiB)")
