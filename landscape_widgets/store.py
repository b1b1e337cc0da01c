"""Resumable runs: every finished tile of a grid is written atomically to a store directory.

Layout of ``store=path``::

    path/run.json                      the settings that define the run (model, data, loss, metrics, directions, grid)
    path/tiles/<start>-<stop>.npz      one finished tile: its values, the run key and a SHA-256 of the values

A tile file is written to a temporary name, flushed to disk and renamed (``os.replace`` is atomic on POSIX), so a
run killed at any moment (SIGKILL, power loss) leaves only whole tiles behind.  A restart with the same store
loads the finished tiles and computes only the missing ones.  A store made with other settings gives a
``ValueError`` naming what differs; a file that cannot be read back or whose checksum fails is reported with a
warning, deleted and recomputed.  A run with metrics keeps ``[points, 1 + M]`` values a tile (loss first), one
without them the flat losses; the metrics' names and functions are part of the settings, so runs with other
metrics (or none) never share tiles.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile

import numpy as np
import torch

from .data import batch_tensors

STORE_FORMAT = 1


def _sha(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if isinstance(a, torch.Tensor):
            a = a.detach().to("cpu").contiguous()
            h.update(str(a.dtype).encode() + str(tuple(a.shape)).encode())
            a = a.reshape(-1).view(torch.uint8).numpy() if a.numel() else np.zeros(0, np.uint8)
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _data_settings(data) -> dict:
    """What identifies the data: the bytes of a tensor pair, or the sizes of a DataLoader (whose batches may be
    shuffled, so their bytes are not a stable identity)."""
    out = {"kind": data.describe()["kind"]}
    if data.single is not None:
        out.update(num_samples=int(data.num_samples), sha256=_sha(*batch_tensors(data.single)))
    else:
        it = data.iterable
        out["num_batches"] = len(it) if hasattr(it, "__len__") else None
        ds = getattr(it, "dataset", None)
        out["dataset_len"] = len(ds) if ds is not None and hasattr(ds, "__len__") else None
        out["batch_size"] = getattr(it, "batch_size", None)
    return out


def _loss_settings(objective) -> dict:
    """A loss is identified by how it is computed (``objective.mode``) and the user's callable (:func:`_callable`)."""
    out = {"mode": objective.mode}
    fn = objective.fn
    if fn is None:
        return out
    out.update(_callable(fn))
    return out


def _metric_settings(objective) -> list:
    """Each metric by its name and its callable (:func:`_callable`), in order."""
    return [{"name": name, **_callable(fn)} for name, fn in objective.metrics.items()]


def _callable(fn) -> dict:
    """A callable by its function's name and bytecode, or its class, repr, plain attributes (``reduction``,
    ``label_smoothing``, ..., which nn losses leave out of their repr) and tensors (class weights).  No memory
    addresses: the same callable in another process must compare equal."""
    out = {}
    code = getattr(fn, "__code__", None)
    if code is not None:
        out.update({"function": f"{fn.__module__}.{fn.__qualname__}",
                    "code_sha256": hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()})
        return out
    if hasattr(fn, "__qualname__"):  # builtins, classes
        out["function"] = f"{getattr(fn, '__module__', '')}.{fn.__qualname__}"
        return out
    out["class"] = f"{type(fn).__module__}.{type(fn).__qualname__}"
    if isinstance(fn, torch.nn.Module):
        out["repr"] = repr(fn)
        out["attrs"] = {k: v for k, v in sorted(vars(fn).items())
                        if not k.startswith("_") and k != "training"
                        and isinstance(v, (bool, int, float, str, type(None)))}
        out["tensors_sha256"] = _sha(*(t for _n, t in sorted(fn.state_dict().items())))
    return out


def run_settings(kind, private, data, objective, dirs, coords, tile_size, *, buffer_dirs=None, **extra) -> dict:
    """The settings that define a run; two runs with equal settings compute the same numbers."""
    dir_arrays = [d[n] for d in dirs for n in private.names]
    for n in sorted(buffer_dirs or {}):
        dir_arrays += list(buffer_dirs[n])
    settings = {
        "format": STORE_FORMAT,
        "kind": kind,
        "model_sha256": private.fingerprint(),
        "data": _data_settings(data),
        "loss_fn": _loss_settings(objective),
        "moved": list(private.names),
        "directions_sha256": _sha(*dir_arrays),
        "points": int(len(coords)),
        "coords_sha256": _sha(np.asarray(coords, dtype=np.float64)),
        "tile_size": int(tile_size),
    }
    if objective.metrics:  # only then: a store made without metrics keeps its key
        settings["metrics"] = _metric_settings(objective)
    settings.update(extra)
    return json.loads(json.dumps(settings))  # plain JSON types, so a reloaded copy compares equal


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on every platform; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path, write):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


class TileStore:
    """A store directory bound to one run's settings; use :func:`open_store`."""

    def __init__(self, path, settings: dict):
        self.path = os.fspath(path)
        self.settings = settings
        self.key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        metrics = settings.get("metrics") or []
        self.tail = (1 + len(metrics),) if metrics else ()  # a point's values: [loss, metrics...] or the loss
        self.tiles_dir = os.path.join(self.path, "tiles")
        self.loaded, self.computed, self.recovered = [], [], []

    def _tile_path(self, start, stop):
        return os.path.join(self.tiles_dir, f"{start:09d}-{stop:09d}.npz")

    def save(self, start: int, stop: int, values) -> None:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (stop - start,) + self.tail:
            raise ValueError(f"tile [{start}, {stop}) needs values of shape {(stop - start,) + self.tail}, got "
                             f"shape {values.shape}")
        payload = {"values": values, "key": np.array(self.key), "start": np.array(start), "stop": np.array(stop),
                   "sha256": np.array(_sha(values))}
        _atomic_write(self._tile_path(start, stop), lambda fh: np.savez(fh, **payload))

    def load(self, start: int, stop: int):
        """The tile's values, or None when it is missing or unreadable (then it is deleted and recomputed)."""
        path = self._tile_path(start, stop)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                values, key = np.array(z["values"]), str(z["key"])
                span, digest = (int(z["start"]), int(z["stop"])), str(z["sha256"])
            ok = values.dtype == np.float64 and values.shape == (stop - start,) + self.tail and span == (start, stop) \
                and digest == _sha(values)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            ok, key, why = False, self.key, f"{type(exc).__name__}: {exc}"
        else:
            why = "its contents do not match its checksum or its place in the grid"
        if ok and key != self.key:
            raise ValueError(f"store {self.path!r} holds tile {os.path.basename(path)} of another run (run key "
                             f"{key[:12]}..., this run's is {self.key[:12]}...); pass a new store path or delete it")
        if not ok:
            warnings.warn(f"store {self.path!r}: tile file {os.path.basename(path)} is corrupt or truncated ({why});"
                          " it is recomputed", RuntimeWarning, stacklevel=3)
            os.remove(path)
            self.recovered.append((start, stop))
            return None
        return values

    def info(self) -> dict:
        return {"path": os.path.abspath(self.path), "key": self.key, "tiles_loaded": len(self.loaded),
                "tiles_computed": len(self.computed), "tiles_recovered": len(self.recovered)}


def _describe_difference(old: dict, new: dict) -> str:
    diffs = []
    for k in sorted(set(old) | set(new)):
        if old.get(k) != new.get(k):
            a, b = json.dumps(old.get(k))[:80], json.dumps(new.get(k))[:80]
            diffs.append(f"{k}: stored {a}, now {b}")
    return "; ".join(diffs)


def open_store(path, settings: dict) -> TileStore:
    """Create the store at ``path`` or check that the one there was made with the same ``settings``."""
    if isinstance(path, TileStore):
        path = path.path
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"store must be a directory path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"store={path!r} is a file; pass a directory path (it is created if missing)")
    store = TileStore(path, settings)
    os.makedirs(store.tiles_dir, exist_ok=True)
    run_file = os.path.join(path, "run.json")
    stored = None
    if os.path.exists(run_file):
        try:
            with open(run_file, encoding="utf-8") as fh:
                stored = json.load(fh)
            if not isinstance(stored, dict) or not isinstance(stored.get("settings"), dict):
                raise ValueError("no settings")
        except (OSError, ValueError) as exc:
            # the tiles carry the run key themselves, so a lost run.json is rewritten, not fatal
            warnings.warn(f"store {path!r}: run.json is unreadable ({exc}); rewriting it, tiles are checked "
                          "against this run's key", RuntimeWarning, stacklevel=2)
            stored = None
    if stored is not None and stored["settings"] != settings:
        diff = _describe_difference(stored["settings"], settings)
        raise ValueError(f"store {path!r} was made by a run with other settings ({diff}); "
                         "pass a new store path, or delete the old store to discard its tiles")
    if stored is None:
        text = json.dumps({"key": store.key, "settings": settings}, indent=1, sort_keys=True).encode()
        _atomic_write(run_file, lambda fh: fh.write(text))
    return store
