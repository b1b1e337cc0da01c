"""Facts of the process every layer uses: the CPU allocator's warm-up, what an out-of-memory error looks like, a
wall clock."""
from __future__ import annotations

import platform
import time

import torch

WARM_BYTES = 30 * 2 ** 20  # below glibc's DEFAULT_MMAP_THRESHOLD_MAX (32 MiB on 64-bit)
_warmed = False


def warm_allocator(device) -> None:
    """Once per process, on CPUs with glibc: allocate and free one 30 MiB block.

    A per-point loop allocates and frees the same activations every point.  glibc serves blocks above its
    dynamic mmap threshold (128 KiB at start; raised to the size of the largest mmapped block freed so far, up to
    32 MiB) with mmap and returns them at free, so every point page-faults them in again: thousands of faults
    per point on the digits CNN (7 and 15 MB activations), 40-60 % of its time.  Freeing one mmapped 30 MiB block
    raises the threshold as glibc's own heuristic would after any such tensor (``mallopt`` would instead switch
    the heuristic off for good); nothing is set and nothing needs restoring.  Other allocators ignore it."""
    global _warmed
    if _warmed or torch.device(device).type != "cpu":
        return
    _warmed = True
    if platform.libc_ver()[0] == "glibc":
        block = torch.empty(WARM_BYTES, dtype=torch.uint8)  # untouched: no page is faulted in
        del block


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class Timer:
    """Seconds since construction, on each call."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self):
        return time.perf_counter() - self.t0
