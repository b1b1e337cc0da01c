"""Data sources: one batch, or any re-iterable of batches (a DataLoader, a list).

With ``loss_fn`` a batch is an ``(inputs, targets)`` pair.  Without it (the model's own loss, or ``batch_loss``) a
batch is whatever the model or ``batch_loss`` takes: a dict, a tuple such as ``(x, y, w)``, a tensor or any object.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import random
import sys
import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import torch


def to_device(obj, device, non_blocking=False):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device, non_blocking)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def batch_tensors(obj, depth=0):
    """The tensors inside a batch, in order (dict values, sequence items, dataclass fields, object attributes)."""
    if depth > 4:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from batch_tensors(v, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from batch_tensors(v, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        for v in vars(obj).values():
            yield from batch_tensors(v, depth + 1)


def first_tensor_size(batch):
    """The sample count of a batch: the first dimension of its first tensor (None if it holds none)."""
    for t in batch_tensors(batch):
        if t.ndim >= 1:
            return int(t.shape[0])
    return None


def index_batch(obj, idx, n, depth=0):
    """``obj`` with every tensor whose first dimension is ``n`` (the batch's samples) indexed by ``idx``."""
    if depth > 4:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj[idx.to(obj.device)] if obj.ndim and obj.shape[0] == n else obj
    if isinstance(obj, Mapping):
        return {k: index_batch(v, idx, n, depth + 1) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(index_batch(v, idx, n, depth + 1) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(index_batch(v, idx, n, depth + 1) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: index_batch(getattr(obj, f.name), idx, n, depth + 1)
                                           for f in dataclasses.fields(obj) if f.init})
    return obj


def _batch_size(inputs, targets) -> int:
    for obj in (targets, inputs):
        n = first_tensor_size(obj)
        if n is not None:
            return n
    raise ValueError("cannot tell the batch size: targets (or inputs) must be tensors with a batch dimension")


def _is_pair(data) -> bool:
    """``(inputs, targets)``: two entries, the targets a tensor (a list of two batches has a pair second)."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor) \
        and (isinstance(data[0], (torch.Tensor, Mapping)) or (isinstance(data[0], (tuple, list)) and all(
            isinstance(t, torch.Tensor) for t in data[0])))


def _is_one_batch(data) -> bool:
    """Without targets: a dict, a tensor, a tuple/list of tensors with one first dimension, or an object that is
    not a collection of batches."""
    if isinstance(data, (torch.Tensor, Mapping)):
        return True
    if isinstance(data, (tuple, list)):
        if data and all(isinstance(t, torch.Tensor) for t in data):
            sizes = {int(t.shape[0]) if t.ndim else None for t in data}
            return len(sizes) == 1
        return False
    return not isinstance(data, Iterable) or isinstance(data, (str, bytes))


@contextlib.contextmanager
def kept_rng(seed=None):
    """The global RNGs (torch's CPU generator, NumPy's and Python's) as they were: a DataLoader without its own
    generator draws its base seed from torch's at every ``iter()``, and a Dataset's augmentation may draw from any
    of them in the main process.  The user's random streams must not depend on how often the library reads the data,
    and every pass then also shuffles and augments alike.  ``seed``: run the block with all three seeded by it."""
    state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        if seed is not None:
            torch.random.default_generator.manual_seed(int(seed))  # the CPU generator only: CUDA's is not read
            np.random.seed(int(seed) % 2 ** 32)
            random.seed(int(seed))
        yield
    finally:
        torch.random.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])


_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn_user(message, category):
    """``warnings.warn`` pointing at the first caller outside the library (the user's call)."""
    level, frame = 2, sys._getframe(1)  # stacklevel 2 is the caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)


class DataChangesWarning(UserWarning):
    """The data differ between passes (random augmentation, a shuffled DataLoader with ``drop_last=True``): every
    pass of a landscape reads them again, so its values mix different data.  :func:`freeze` reads them once."""


def repeat_tolerance(dtypes) -> float:
    """The relative difference that rounding alone may give two passes over the same data: float32 sum-order
    differences are ~1e-6, so 1e-4 for float32 and float64; a few eps for bfloat16 and float16."""
    eps = max((torch.finfo(d).eps for d in dtypes if d is not None and d.is_floating_point), default=0.0)
    return max(1e-4, 4 * eps)


def same_loss(a, b, rtol, scale=0.0) -> bool:
    """``a`` and ``b`` equal to ``rtol`` relative to the larger of them and ``scale`` (the batch losses' mean size:
    a mean near zero of large batch losses keeps their rounding); two NaN, or two equal infinities, are the same."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return abs(a - b) <= rtol * max(abs(a), abs(b), scale)


def changes_message(first, second, rtol, where="at the model's weights") -> str:
    return (f"the data differ between passes: the loss {where} was {first:.6g} on one pass over the "
            f"data and {second:.6g} on another (rounding allows {rtol:.0e} relative). Every computation reads the "
            "data again (each tile of a plane, each line, the loss itself), so the landscape mixes different data "
            "and depends on the random state at the call: random augmentation in the Dataset (NumPy's, Python's "
            "or torch's RNG), a shuffled DataLoader with drop_last=True, or any loader whose batches change between "
            "epochs. Read the batches once, data = lw.freeze(data) (samples=... for a fixed subset), and pass that; "
            "or load the data without randomness (no augmentation; shuffle=False or drop_last=False). (A model or "
            "loss that draws random numbers in eval mode gives this warning too: its noise then differs by pass)")


def subset_indices(total: int, n: int, seed) -> torch.Tensor:
    """``n`` of ``range(total)``, drawn by a private generator seeded with ``seed`` (the global RNG untouched), in
    their order: the same subset at every call."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(total, generator=gen)[:n].sort().values


class Frozen:
    """Batches read once and kept in memory (:func:`freeze`): every pass yields the same batches in the same
    order."""

    def __init__(self, batches):
        self.batches = list(batches)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]

    def __repr__(self):
        return f"Frozen({len(self.batches)} batches)"


def _own_generators(data) -> list:
    """The private ``torch.Generator``s of a DataLoader (its own, its sampler's): reading advances them."""
    found = {}
    for obj in (data, getattr(data, "sampler", None), getattr(getattr(data, "batch_sampler", None), "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator):
            found[id(g)] = g
    return list(found.values())


def _samples_in(batch) -> int:
    if _is_pair(batch):
        return _batch_size(batch[0], batch[1])
    n = first_tensor_size(batch)
    return 1 if n is None else n


def freeze(data, samples=None, seed=0):
    """The batches of ``data`` read once and kept in memory, so that every pass of a landscape reads the same data.

    ``data``: a DataLoader or any iterable of batches (a one-shot generator too); each batch as the Landscape takes
    it (an ``(inputs, targets)`` pair, a dict, a tuple).  While reading, the global RNGs (torch, NumPy, Python) are
    seeded with ``seed`` (a shuffle, an augmentation or worker seeds drawn from them are then the same in every
    process and at every call) and restored after, as are the loader's own generators: no random state of the
    caller changes.
    ``samples``: keep only the first batches, until they hold at least that many samples (with ``shuffle=True``
    a random subset, drawn with ``seed``).  One batch of tensors is already fixed: it is returned as it is, or with
    ``samples`` a random subset of it (a private generator seeded with ``seed``) of the same structure.
    Returns a :class:`Frozen` list of batches (one batch: a batch)."""
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 1:
            raise ValueError(f"samples must be a positive int (how many samples to keep) or None for all, "
                             f"got {samples!r}")
    if isinstance(data, Frozen) and samples is None:
        return data
    if _is_pair(data) or _is_one_batch(data):
        n = first_tensor_size(data)
        if samples is None or n is None or samples >= n:
            return data
        return index_batch(data, subset_indices(n, samples, seed), n)
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise TypeError(f"freeze takes a DataLoader or an iterable of batches, got {type(data).__name__}")
    own = [(g, g.get_state()) for g in _own_generators(data)]
    kept, count = [], 0
    try:
        with kept_rng(seed):
            for batch in data:
                kept.append(batch)
                count += _samples_in(batch)
                if samples is not None and count >= samples:
                    break
    finally:
        for g, state in own:
            g.set_state(state)
    if not kept:
        raise ValueError("data yielded no batches; pass a DataLoader or iterable with at least one batch")
    return Frozen(kept)


class DataSource:
    """Yields ``(x, y, n)`` on the evaluation device: ``x`` the inputs and ``y`` the targets with ``loss_fn``, else
    ``x`` the whole batch and ``y`` None; ``n`` the batch's sample count.

    A single batch is moved to the device once and kept there; batches of an iterable are moved one at a time, so a
    DataLoader larger than device memory works.  ``data`` is kept as given (``raw``) for Dask workers.
    """

    def __init__(self, data, *, pairs=True):
        self.pairs = pairs
        self.raw = data
        self.single = None
        self.iterable = None
        if data is None:
            raise TypeError("data is required: pass the batch(es) the loss is computed on, e.g. (inputs, targets) "
                            "tensors or a DataLoader")
        if pairs and _is_pair(data):
            n = _batch_size(data[0], data[1])
            if n == 0:
                raise ValueError("data is empty (0 samples); pass (inputs, targets) with at least one sample")
            n_in = first_tensor_size(data[0])
            if n_in is not None and n_in != int(data[1].shape[0]) and data[1].ndim:
                raise ValueError(f"data inputs have {n_in} samples but targets have {data[1].shape[0]}; pass "
                                 "tensors with the same first dimension")
            self.single = (data[0], data[1])
            self.num_samples, self.num_batches = n, 1
        elif not pairs and _is_one_batch(data):
            n = first_tensor_size(data)
            if n == 0:
                raise ValueError("data is empty (0 samples); pass a batch with at least one sample")
            self.single = (data, None)
            self.num_samples, self.num_batches = (n if n is not None else 1), 1
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, torch.Tensor)):
            with kept_rng():
                one_shot = iter(data) is data
            if one_shot:
                raise TypeError("data is a one-shot iterator (e.g. a generator), but the landscape reads the data "
                                "many times; pass a DataLoader, a list of batches, or one batch")
            if hasattr(data, "__len__") and len(data) == 0:
                raise ValueError("data is empty; pass a DataLoader or list with at least one batch")
            self.iterable = data
            self.num_samples = None  # known after the first pass
            self.num_batches = len(data) if hasattr(data, "__len__") else None
        else:
            want = "(inputs, targets) tensors or an iterable of (inputs, targets) batches such as a DataLoader" \
                if pairs else "one batch (a dict, a tuple of tensors, a tensor) or an iterable of batches"
            raise TypeError(f"data must be {want}, got {type(data).__name__}")
        self._cache = {}
        self.checked = False  # whether the first evaluation's checks ran (engine.Problem.first_checks)

    @property
    def in_memory(self) -> bool:
        """Batches held in memory (one batch, a list or tuple of batches, :func:`freeze`'s): every pass reads the
        same tensors, so they cannot change between passes."""
        return self.single is not None or isinstance(self.iterable, (list, tuple, Frozen))

    def batches(self, device):
        if self.single is not None:
            key = str(device)
            if key not in self._cache:
                x, y = self.single
                self._cache = {key: (to_device(x, device), None if y is None else y.to(device))}
            x, y = self._cache[key]
            yield x, y, self.num_samples
            return
        with kept_rng():
            yield from self._stream(device)

    def _stream(self, device):
        total, count = 0, 0
        for batch in self.iterable:
            if self.pairs:
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise TypeError(
                        f"with loss_fn each batch of data must be an (inputs, targets) pair, got "
                        f"{type(batch).__name__}; when the model's output carries the loss (HuggingFace models "
                        "with labels in the batch) pass loss_fn=None, or pass batch_loss(model, batch) for any "
                        "other batch structure")
                x, y = batch
                n = _batch_size(x, y)
            else:
                x, y = batch, None
                n = first_tensor_size(batch)
                n = 1 if n is None else n
            if n == 0:
                continue
            total += n
            count += 1
            yield to_device(x, device, True), (None if y is None else to_device(y, device, True)), n
        if total == 0:
            raise ValueError("data yielded no samples; pass a DataLoader or list with at least one non-empty batch")
        self.num_samples, self.num_batches = total, count

    def subset(self, n, seed=0) -> "DataSource":
        """A fixed subset of about ``n`` samples, the same at every call: of one batch, ``n`` samples drawn by a
        private generator (seeded with ``seed``; the global RNG is untouched), in their order; of an iterable,
        its first batches until they hold ``n`` samples, kept in memory.  ``self`` when it has no more."""
        if self.single is not None and (self.num_samples is None or n >= self.num_samples):
            return self
        parts = self._parts(n, 1, seed, whole_ok=True)
        return self if parts is None else parts[0]

    def subsets(self, n, count, seed=0) -> list:
        """``count`` disjoint subsets of about ``n`` samples each, the first of them :meth:`subset` ``(n, seed)``:
        of one batch, consecutive slices of one private permutation (seeded with ``seed``); of an iterable,
        consecutive runs of batches holding at least ``n`` samples each.  For the spread of an estimate over
        independent draws of the data; a ``ValueError`` says how many subsets fit when the data hold fewer."""
        return self._parts(n, count, seed, whole_ok=False)

    def _parts(self, n, count, seed, whole_ok):
        if self.single is not None:
            total = self.num_samples
            if total is None or n * count > total:
                raise ValueError(self._too_few(n, count, total))
            perm = torch.randperm(total, generator=torch.Generator().manual_seed(int(seed)))
            x, y = self.single
            out = []
            for k in range(count):
                idx = perm[k * n:(k + 1) * n].sort().values  # k = 0: subset_indices(total, n, seed)
                picked = (index_batch(x, idx, total), None if y is None else index_batch(y, idx, total))
                out.append(self._kept(picked if self.pairs else picked[0], n, 1))
            return out
        groups, kept, count_now = [], [], 0
        with kept_rng():
            for batch in self.iterable:
                kept.append(batch)
                count_now += (_batch_size(*batch) if self.pairs else first_tensor_size(batch) or 1)
                if count_now >= n:
                    groups.append((kept, count_now))
                    kept, count_now = [], 0
                    if len(groups) == count:
                        break
        if len(groups) < count:
            if whole_ok:  # the whole data was read: no subset
                return None
            raise ValueError(self._too_few(n, count, sum(c for _, c in groups) + count_now))
        return [self._kept(batches, c, len(batches)) for batches, c in groups]

    def _kept(self, data, num_samples, num_batches) -> "DataSource":
        sub = DataSource(data, pairs=self.pairs)
        sub.num_samples, sub.num_batches = num_samples, num_batches
        sub.subset_of = self.num_samples
        return sub

    @staticmethod
    def _too_few(n, count, total):
        fits = 0 if not total else total // n
        return (f"{count} disjoint subsets of {n} samples need {n * count} samples, but the data hold "
                f"{total if total is not None else 'an unknown number of'}; pass fewer or smaller subsets "
                f"(at most {fits} of {n})")

    def describe(self) -> dict:
        kind = ("tensors" if self.pairs else "batch") if self.single is not None else type(self.iterable).__name__
        out = {"num_samples": self.num_samples, "num_batches": self.num_batches, "kind": kind}
        if getattr(self, "subset_of", False) is not False:
            out["subset_of"] = self.subset_of
        return out
