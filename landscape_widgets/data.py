"""Data sources: one ``(inputs, targets)`` pair of tensors, or any re-iterable of such batches."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def _to(obj, device, non_blocking=False):
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: _to(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device, non_blocking) for v in obj)
    return obj


def _batch_size(inputs, targets) -> int:
    for obj in (targets, inputs):
        if isinstance(obj, torch.Tensor) and obj.ndim >= 1:
            return int(obj.shape[0])
        if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], torch.Tensor) and obj[0].ndim >= 1:
            return int(obj[0].shape[0])
        if isinstance(obj, Mapping):
            for v in obj.values():
                if isinstance(v, torch.Tensor) and v.ndim >= 1:
                    return int(v.shape[0])
    raise ValueError("cannot tell the batch size: targets (or inputs) must be tensors with a batch dimension")


def call_model(module, inputs):
    if isinstance(inputs, Mapping):
        return module(**inputs)
    if isinstance(inputs, (list, tuple)):
        return module(*inputs)
    return module(inputs)


class DataSource:
    """Yields ``(inputs, targets, n)`` on the evaluation device.

    A single pair of tensors is moved to the device once and kept there; batches of an iterable are moved one
    at a time, so a DataLoader larger than device memory works.
    """

    def __init__(self, data):
        self.single = None
        self.iterable = None
        if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor) \
                and isinstance(data[1], torch.Tensor):
            n = _batch_size(data[0], data[1])
            if n == 0:
                raise ValueError("data is empty (0 samples); pass (inputs, targets) with at least one sample")
            if data[0].shape[0] != data[1].shape[0]:
                raise ValueError(f"data inputs have {data[0].shape[0]} samples but targets have "
                                 f"{data[1].shape[0]}; pass tensors with the same first dimension")
            self.single = (data[0], data[1])
            self.num_samples = n
            self.num_batches = 1
        elif isinstance(data, Iterable) and not isinstance(data, (str, bytes, torch.Tensor)):
            if iter(data) is data:
                raise TypeError("data is a one-shot iterator (e.g. a generator), but the landscape reads the data "
                                "many times; pass a DataLoader, a list of (inputs, targets) batches, or tensors")
            if hasattr(data, "__len__") and len(data) == 0:
                raise ValueError("data is empty; pass a DataLoader or list with at least one batch")
            self.iterable = data
            self.num_samples = None  # known after the first pass
            self.num_batches = len(data) if hasattr(data, "__len__") else None
        else:
            raise TypeError("data must be (inputs, targets) tensors or an iterable of (inputs, targets) "
                            f"batches such as a DataLoader, got {type(data).__name__}")
        self._cache = {}

    def batches(self, device):
        if self.single is not None:
            key = str(device)
            if key not in self._cache:
                self._cache = {key: (self.single[0].to(device), self.single[1].to(device))}
            x, y = self._cache[key]
            yield x, y, self.num_samples
            return
        total, count = 0, 0
        for batch in self.iterable:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise TypeError("each batch of data must be an (inputs, targets) pair, got "
                                f"{type(batch).__name__}")
            x, y = batch
            n = _batch_size(x, y)
            if n == 0:
                continue
            total += n
            count += 1
            yield _to(x, device, True), _to(y, device, True), n
        if total == 0:
            raise ValueError("data yielded no samples; pass a DataLoader or list with at least one non-empty batch")
        self.num_samples, self.num_batches = total, count

    def describe(self) -> dict:
        return {"num_samples": self.num_samples, "num_batches": self.num_batches,
                "kind": "tensors" if self.single is not None else type(self.iterable).__name__}
