"""Data sources: one batch, or any re-iterable of batches (a DataLoader, a list).

With ``loss_fn`` a batch is an ``(inputs, targets)`` pair.  Without it (the model's own loss, or ``batch_loss``) a
batch is whatever the model or ``batch_loss`` takes: a dict, a tuple such as ``(x, y, w)``, a tensor or any object.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable, Mapping

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
def kept_rng():
    """The global CPU RNG as it was: a DataLoader without its own generator draws its base seed from it at every
    ``iter()``, and the user's random stream must not depend on how often the library reads the data (every pass
    then also shuffles alike)."""
    state = torch.random.get_rng_state()
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


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
        if self.single is not None:
            total = self.num_samples
            if total is None or n >= total:
                return self
            gen = torch.Generator().manual_seed(int(seed))
            idx = torch.randperm(total, generator=gen)[:n].sort().values
            x, y = self.single
            picked = (index_batch(x, idx, total), None if y is None else index_batch(y, idx, total))
            sub = DataSource(picked if self.pairs else picked[0], pairs=self.pairs)
        else:
            kept, count = [], 0
            with kept_rng():
                for batch in self.iterable:
                    kept.append(batch)
                    count += (_batch_size(*batch) if self.pairs else first_tensor_size(batch) or 1)
                    if count >= n:
                        break
            sub = DataSource(kept, pairs=self.pairs)
            if count < n:  # the whole data was read: no subset
                return self
            sub.num_samples, sub.num_batches = count, len(kept)
        sub.subset_of = self.num_samples
        return sub

    def describe(self) -> dict:
        kind = ("tensors" if self.pairs else "batch") if self.single is not None else type(self.iterable).__name__
        out = {"num_samples": self.num_samples, "num_batches": self.num_batches, "kind": kind}
        if getattr(self, "subset_of", False) is not False:
            out["subset_of"] = self.subset_of
        return out
