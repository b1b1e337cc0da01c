"""Result objects: plain attributes (arrays and a ``meta`` dict), saved with their provenance.

Files are ``.npz`` archives without pickles: arrays under their names; tensor dicts (name -> tensor) under
``<attr>/<param>`` (a line's ``direction``, a connection's ``bend``) or ``<attr>/<k>/<param>`` (a surface's
``directions``); metrics under ``metrics/<name>`` (their order in ``meta["metrics"]``); and the meta dict as JSON,
so a result written today loads anywhere numpy does; a file without metrics loads with ``metrics == {}``.  Every
attribute a result is built with comes back from its file, except ``execution`` (what ran in this process; ``meta``
keeps its facts).

Typed fields (:class:`Field`, listed in a class's ``_fields``) are the facts code acts on: the model marks, the
kind of result and of its directions, the curvatures its direction kind found, barriers, the trust panel.  Each is
set at construction (given, or read from ``meta`` under its key where not given) and mirrored into ``meta`` under
the same key, so files keep one JSON record that older files and the front end read as before; loading sets
every field from that record.  ``meta`` itself is provenance: what ran, where, with which settings.
"""
from __future__ import annotations

import json
import math
import os
import types
import warnings
from dataclasses import dataclass

import numpy as np
import torch

FORMAT_VERSION = 1
_REGISTRY = {}


def register_result(cls):
    _REGISTRY[cls.__name__] = cls
    return cls


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def _cpu_tensors(tensors):
    """``tensors`` (name -> tensor) detached on the CPU, in their order; None stays None."""
    return None if tensors is None else {str(n): t.detach().cpu() for n, t in tensors.items()}


_DTYPE = "__dtype__/"  # the torch dtype of a tensor stored as float32 because numpy has no such dtype


def _put_tensors(payload, prefix, tensors):
    """Write name -> tensor under ``prefix/<name>`` as numpy arrays of the tensors' dtypes; a dtype numpy lacks
    (bfloat16, the float8 kinds) as float32, which holds each of its values exactly, with its name beside."""
    for name, t in tensors.items():
        key, t = f"{prefix}/{name}", t.detach().cpu()
        try:
            payload[key] = t.numpy()
        except TypeError:
            payload[key] = t.float().numpy()
            payload[_DTYPE + key] = np.array(str(t.dtype).removeprefix("torch."))


def _get_tensors(arrays, prefix):
    """What :func:`_put_tensors` wrote under ``prefix``, in the same order and dtypes; None when nothing was."""
    prefix += "/"
    out = {}
    for k, v in arrays.items():
        if k.startswith(prefix):
            t = torch.from_numpy(np.array(v))
            dtype = arrays.get(_DTYPE + k)
            out[k[len(prefix):]] = t if dtype is None else t.to(getattr(torch, str(dtype)))
    return out or None


def _metrics(metrics, losses) -> dict:
    """``metrics`` (name -> values) as float64 arrays shaped like ``losses``, in the order given."""
    out = {}
    for name, values in (metrics or {}).items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != losses.shape:
            raise ValueError(f"metric {name!r} has shape {values.shape}; it needs the shape of the losses, "
                             f"{losses.shape}")
        out[str(name)] = values
    return out


class Marks(dict):
    """Models marked on a line or a plane: their ``labels``, ``coords`` (one alpha per model on a line, ``[alpha,
    beta]`` per model on a plane) and ``losses`` (the loss at each mark; None where not evaluated).  A dict with the
    same keys (``meta["models"]``, what the front end reads), with those three as attributes."""

    def __init__(self, labels, coords, losses=None):
        super().__init__(labels=list(labels), coords=list(coords))
        if losses is not None:
            self["losses"] = [float(v) for v in losses]

    labels = property(lambda self: self["labels"])
    coords = property(lambda self: self["coords"])
    losses = property(lambda self: self.get("losses"))

    @classmethod
    def of(cls, value):
        """``value`` as Marks: Marks, a dict ``{"labels", "coords"[, "losses"]}`` (``meta["models"]``), or None."""
        if value is None or isinstance(value, Marks):
            return value
        return cls(value.get("labels") or [], value.get("coords") or [], value.get("losses"))

    def with_losses(self, losses) -> "Marks":
        return Marks(self.labels, self.coords, losses)

    def __repr__(self):
        return f"Marks({dict.__repr__(self)})"


def _float(value):
    return float(value)  # a non-finite number comes back from the JSON as "nan" / "inf", which float reads


def _floats(value):
    return np.asarray(value, dtype=np.float64)


def _listed(array):
    return np.asarray(array).tolist()  # as the JSON record keeps it


@dataclass(frozen=True)
class Field:
    """A typed attribute ``attr`` of a result, kept in ``meta[key]`` (``key`` defaults to ``attr``).

    ``read`` turns the meta value into the attribute (None stays None), ``write`` the attribute into the meta value
    (None: as it is); ``mirror=False``: read from ``meta`` only (a fact derived from a record the result keeps
    anyway); ``given_only``: at construction only the argument sets it, never ``meta`` (a field a new value
    replaces, as the trust panel of :meth:`Surface.with_trust`)."""
    attr: str
    key: str = None
    read: object = None
    write: object = None
    mirror: bool = True
    given_only: bool = False

    @property
    def meta_key(self) -> str:
        return self.key or self.attr

    def load(self, meta):
        value = meta.get(self.meta_key)
        return value if value is None or self.read is None else self.read(value)


# every result: what it is and at which weights it was computed (``Problem.describe``)
BASE_FIELDS = (Field("kind"), Field("fingerprint", "model_sha256"), Field("device"),
               Field("num_parameters", read=int))


class Result:
    """Base class: subclasses list their array attributes in ``_arrays`` and optional ones in ``_optional``, their
    name -> tensor dicts (or None) in ``_tensor_dicts``, tuples of such dicts in ``_direction_sets`` and their typed
    fields in ``_fields`` (:class:`Field`); ``metrics`` (name -> array shaped like ``losses``, Li et al.'s accuracy
    beside the loss) is saved with them."""

    execution = None  # set on results the engine computed in this process
    metrics = types.MappingProxyType({})  # results without metrics; read-only, so no instance shares a dict
    _arrays: tuple = ()
    _optional: tuple = ()
    _tensor_dicts: tuple = ()
    _direction_sets: tuple = ()
    _fields: tuple = BASE_FIELDS

    def _set_fields(self, given=None, *, loading=False):
        """Set every typed field from ``given`` (attr -> value) or, where not given, from ``self.meta``, and mirror
        each into ``self.meta`` (a ``given_only`` field without a value takes its key out: the two never disagree)."""
        given = given or {}
        for f in self._fields:
            value = given.get(f.attr)
            if value is not None and f.read is not None:
                value = f.read(value)
            elif value is None and (loading or not f.given_only):
                value = f.load(self.meta)
            setattr(self, f.attr, value)
            if loading or not f.mirror:
                continue  # a loaded record stays as the file holds it
            if value is not None:
                self.meta[f.meta_key] = value if f.write is None else f.write(value)
            elif f.given_only:
                self.meta.pop(f.meta_key, None)

    @classmethod
    def _field_names(cls, fields: dict) -> dict:
        unknown = sorted(set(fields) - {f.attr for f in cls._fields})
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {unknown}; its fields are "
                            f"{[f.attr for f in cls._fields]}")
        return fields

    def save(self, path) -> str:
        """Write the result and its meta to ``path`` (``.npz`` appended if missing); returns the path."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        payload = {"__kind__": np.array(type(self).__name__),
                   "__format__": np.array(FORMAT_VERSION),
                   "__meta__": np.array(json.dumps(_jsonable(self.meta)))}
        for name in self._arrays + self._optional:
            value = getattr(self, name, None)
            if value is not None:
                payload[name] = np.asarray(value)
        for name, value in (self.metrics or {}).items():
            payload[f"metrics/{name}"] = np.asarray(value)
        for attr in self._tensor_dicts:
            tensors = getattr(self, attr, None)
            if tensors is not None:
                _put_tensors(payload, attr, tensors)
        for attr in self._direction_sets:
            dirs = getattr(self, attr, None)
            if dirs is None:
                continue
            for k, d in enumerate(dirs):
                _put_tensors(payload, f"{attr}/{k}", d)
        tmp = path + ".tmp"
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **payload)
        os.replace(tmp, path)
        return path

    @classmethod
    def _from_payload(cls, arrays: dict, meta: dict):
        obj = cls.__new__(cls)
        for name in cls._arrays + cls._optional:
            setattr(obj, name, arrays.get(name))
        for attr in cls._tensor_dicts:
            setattr(obj, attr, _get_tensors(arrays, attr))
        for attr in cls._direction_sets:
            keys = sorted({int(k.split("/")[1]) for k in arrays if k.startswith(attr + "/")})
            setattr(obj, attr, tuple(_get_tensors(arrays, f"{attr}/{idx}") for idx in keys) if keys else None)
        stored = {k[len("metrics/"):]: np.asarray(v) for k, v in arrays.items() if k.startswith("metrics/")}
        order = [n for n in meta.get("metrics") or [] if n in stored]
        obj.metrics = {n: stored[n] for n in order + [n for n in stored if n not in order]}
        obj.meta = meta
        obj._set_fields(loading=True)
        return obj

    def __repr__(self):
        shapes = ", ".join(f"{n}={tuple(np.shape(getattr(self, n)))}" for n in self._arrays
                           if getattr(self, n, None) is not None)
        return f"{type(self).__name__}({shapes})"


def load(path):
    """Load any result written by ``result.save(path)``."""
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    kind = str(arrays.pop("__kind__"))
    meta = json.loads(str(arrays.pop("__meta__")))
    arrays.pop("__format__", None)
    if kind not in _REGISTRY:
        raise ValueError(f"{path} holds a {kind!r} result, which this version of landscape_widgets cannot read")
    return _REGISTRY[kind]._from_payload(arrays, meta)


def _xarray():
    try:
        import xarray as xr
    except ImportError as exc:  # optional dependency
        raise ImportError("to_xarray() needs xarray: pip install xarray") from exc
    return xr


def _attrs(meta):
    out = {}
    for k, v in meta.items():
        out[k] = v if isinstance(v, (str, int, float)) else json.dumps(_jsonable(v))
    return out


def _to_xarray(result, coords, dims):
    """The losses as a DataArray named "loss"; with metrics a Dataset of "loss" and every metric (same dims)."""
    xr = _xarray()
    loss = xr.DataArray(result.losses, coords=coords, dims=dims, name="loss", attrs=_attrs(result.meta))
    if not result.metrics:
        return loss
    variables = {"loss": loss}
    variables.update({name: xr.DataArray(values, coords=coords, dims=dims, name=name)
                      for name, values in result.metrics.items()})
    return xr.Dataset(variables, attrs=_attrs(result.meta))


@register_result
class Curve(Result):
    """A 1-D loss profile: ``losses[i] = L(theta(alphas[i]))``.  ``execution``: what evaluated it
    (:class:`~landscape_widgets.engine.Execution`; None for a loaded file, whose ``meta`` keeps the same facts).
    ``metrics``: name -> values at the same points (``Landscape(metrics=...)``), ``{}`` without them.
    ``direction``: the line's direction d, name -> tensor (``Landscape.line``), else None; ``bend``: the bend of a
    Bézier curve between two models, name -> tensor (``Landscape.connect``), else None.  Both are saved.

    Typed fields (keyword arguments, else read from ``meta``): ``kind`` ("interpolation", "line", "connect"),
    ``direction_kind`` (a line's), ``models`` (:class:`Marks` on alpha: a line through models, an interpolation),
    ``barrier`` and ``barrier_at`` (the loss barrier between the two models and where the path peaks,
    :func:`~landscape_widgets.connect.loss_barrier`), and for a Bézier curve ``line_losses`` (the straight line's
    losses at the same t) and ``line_barrier``; plus ``fingerprint``, ``device``, ``num_parameters``."""

    _arrays = ("alphas", "losses")
    _tensor_dicts = ("direction", "bend")
    _fields = BASE_FIELDS + (Field("direction_kind"), Field("models", read=Marks.of),
                             Field("barrier", read=_float), Field("barrier_at", read=_float),
                             Field("line_losses", read=_floats, write=_listed), Field("line_barrier", read=_float))

    def __init__(self, alphas, losses, meta=None, execution=None, metrics=None, direction=None, bend=None,
                 **fields):
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.meta = dict(meta or {})
        self.execution = execution
        self.metrics = _metrics(metrics, self.losses)
        self.direction = _cpu_tensors(direction)
        self.bend = _cpu_tensors(bend)
        self._set_fields(self._field_names(fields))

    @property
    def span(self) -> tuple:
        """``(alphas[0], alphas[-1])``: the interval the curve covers."""
        return (float(self.alphas[0]), float(self.alphas[-1])) if len(self.alphas) else None

    def to_xarray(self):
        """A DataArray "loss" over "alpha"; with metrics a Dataset of "loss" and every metric."""
        return _to_xarray(self, {"alpha": self.alphas}, ("alpha",))

    def plot(self, ax=None, **options):
        """A static matplotlib figure (:func:`landscape_widgets.plot.plot_curve`); returns the Axes."""
        from .plot import plot_curve
        return plot_curve(self, ax=ax, **options)


@register_result
class Surface(Result):
    """A 2-D loss surface: ``losses[i, j] = L(theta + alphas[i] * d1 + betas[j] * d2)`` (numpy "ij" indexing).

    ``path`` [n, 2]: a trajectory projected on the plane (PCA directions), else None; ``execution`` as in
    :class:`Curve`; ``direction_meta``: what the direction kind recorded about ``directions`` (also in ``meta``),
    so that ``plane(directions=surface)`` draws the same plane again without recomputing them; ``metrics``:
    name -> ``[len(alphas), len(betas)]`` values at the same points, ``{}`` without them; ``trust``: the trust panel
    (:meth:`Landscape.trust <landscape_widgets.Landscape.trust>`, a dict), else None, also ``meta["trust"]``, which
    the saved file keeps.  A surface is a value: :meth:`with_trust` gives the same plane with another panel.

    Typed fields (keyword arguments, else read from ``meta``): ``kind`` ("plane"), ``direction_kind``, ``models``
    (:class:`Marks` of a plane through models), ``lambda_max`` and ``lambda_min`` (the curvatures the direction kind
    found, Hessian directions; :attr:`curvatures`), ``span_rule`` (how the kind chose the grid), ``cosine`` (of d1
    and d2), ``path_steps`` and
    ``path_losses`` (the steps and recorded losses of ``path``), ``data`` (the data it was computed on, with
    ``num_samples`` and ``subset_of`` for a subset), ``trust`` and ``trust_error`` (why the panel could not be
    computed); plus ``fingerprint``, ``device``, ``num_parameters``."""

    _arrays = ("alphas", "betas", "losses")
    _optional = ("path",)
    _direction_sets = ("directions",)
    _fields = BASE_FIELDS + (Field("direction_kind"), Field("models", read=Marks.of),
                             Field("lambda_max", read=_float), Field("lambda_min", read=_float), Field("span_rule"),
                             Field("cosine", read=_float),
                             Field("path_steps", read=list), Field("path_losses", read=_floats, write=_listed),
                             Field("data"), Field("trust", given_only=True),
                             Field("trust_error"))

    def __init__(self, alphas, betas, losses, directions=None, meta=None, path=None, execution=None,
                 direction_meta=None, metrics=None, trust=None, curvatures=None, **fields):
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.betas = np.asarray(betas, dtype=np.float64)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.metrics = _metrics(metrics, self.losses)
        self.directions = directions
        self.meta = dict(meta or {})
        self.path = path
        self.execution = execution
        self.direction_meta = dict(direction_meta) if direction_meta is not None else None
        if direction_meta is not None:
            self.meta.setdefault("direction_keys", sorted(direction_meta))
        fields = dict(self._field_names(fields), trust=trust)
        if curvatures is not None:  # (lambda_max, lambda_min) as the direction kind knows them
            fields.update(lambda_max=curvatures[0], lambda_min=curvatures[1])
        # meta["trust"] mirrors the attribute (readers of meta, the JSON of the file): the two never disagree
        self._set_fields(fields)

    @property
    def curvatures(self):
        """``(lambda_max, lambda_min)`` the direction kind found for this plane (Hessian directions), else None:
        the trust panel reuses them instead of solving again."""
        if self.lambda_max is None or self.lambda_min is None:
            return None
        return self.lambda_max, self.lambda_min

    def with_trust(self, trust, *, error=None) -> "Surface":
        """The same plane with the trust panel ``trust`` (None: without one), a new Surface sharing this one's arrays
        and directions; ``error``: why the panel could not be computed (``trust_error``, also
        ``meta["trust_error"]``)."""
        meta = {k: v for k, v in self.meta.items() if k not in ("trust", "trust_error")}
        return type(self)(self.alphas, self.betas, self.losses, self.directions, meta, path=self.path,
                          execution=self.execution, direction_meta=self.direction_meta, metrics=self.metrics,
                          trust=trust, trust_error=error)

    @classmethod
    def _from_payload(cls, arrays, meta):
        obj = super()._from_payload(arrays, meta)
        keys = meta.get("direction_keys")
        obj.direction_meta = None if keys is None else {k: meta[k] for k in keys if k in meta}
        return obj

    @property
    def span(self) -> tuple:
        """``((alphas[0], alphas[-1]), (betas[0], betas[-1]))``: the rectangle the grid covers."""
        if not len(self.alphas) or not len(self.betas):
            return None
        return (float(self.alphas[0]), float(self.alphas[-1])), (float(self.betas[0]), float(self.betas[-1]))

    def to_xarray(self):
        """A DataArray "loss" over ("alpha", "beta"); with metrics a Dataset of "loss" and every metric."""
        return _to_xarray(self, {"alpha": self.alphas, "beta": self.betas}, ("alpha", "beta"))

    def plot(self, ax=None, **options):
        """A static matplotlib figure, contours or 3-D (:func:`landscape_widgets.plot.plot_surface`); returns the
        Axes."""
        from .plot import plot_surface
        return plot_surface(self, ax=ax, **options)

    def to_vtp(self, path, *, log=False, zmax=None, values="loss", **options) -> str:
        """Write a VTK PolyData file for ParaView, as Li et al.'s ``h52vtp.py``
        (:func:`landscape_widgets.vtk.write_vtp`); returns its path."""
        from .vtk import write_vtp
        return write_vtp(self, path, log=log, zmax=zmax, values=values, **options)


@register_result
class SeedSpread(Result):
    """The same plane for several seeds (``Landscape.seed_spread``): ``losses[k, i, j]`` for ``seeds[k]``, the
    per-cell ``median`` and ``iqr``
    (75th minus 25th percentile, NaN-aware), and ``sharpness[k]`` (Keskar et al. 2017 Metric 2.1 on the grid).
    ``metrics``: name -> ``[k, i, j]`` values per seed, as ``losses``; ``{}`` without them.

    Typed fields (keyword arguments, else read from ``meta``): ``center_loss`` (L0 of the sharpness),
    ``direction_kind``, ``normalization`` and ``ignore`` (the settings that, with a seed, make each plane's
    directions again), ``cosines`` (of d1 and d2, per seed); plus ``fingerprint``, ``device``, ``num_parameters``."""

    _arrays = ("alphas", "betas", "seeds", "losses", "median", "iqr", "sharpness")
    _fields = BASE_FIELDS + (Field("center_loss", read=_float), Field("direction_kind"), Field("normalization"),
                             Field("ignore"), Field("cosines", read=list))

    def __init__(self, alphas, betas, seeds, losses, meta=None, metrics=None, **fields):
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.betas = np.asarray(betas, dtype=np.float64)
        self.seeds = np.asarray(seeds, dtype=np.int64)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.metrics = _metrics(metrics, self.losses)
        self.meta = dict(meta or {})
        self._set_fields(self._field_names(fields))
        self.median, self.iqr = spread(self.losses)
        self.sharpness = np.array([sharpness(s, self.center_loss) for s in self.losses])

    def plot(self, ax=None, **options):
        """A static matplotlib figure: median or IQR contours, or a slice with the 25-75 % band
        (:func:`landscape_widgets.plot.plot_seed_spread`); returns the Axes."""
        from .plot import plot_seed_spread
        return plot_seed_spread(self, ax=ax, **options)


@register_result
class CurvatureMap(Result):
    """The Hessian's extreme eigenvalues on a plane (``Landscape.curvature_map``; Li et al. 2018, arXiv 1712.09913,
    §6).

    ``lambda_max[i, j]`` and ``lambda_min[i, j]``: the largest and the smallest eigenvalue of the Hessian of the loss
    at ``theta + alphas[i] d1 + betas[j] d2`` (numpy "ij" layout, as ``Surface.losses``); ``ratio = |lambda_min /
    lambda_max|`` (Li et al.'s map: near 0 the landscape is locally convex, larger values show more negative
    curvature; NaN where the loss is not finite, inf where ``lambda_max = 0``); ``losses``: the loss at each point;
    ``meta``: the eigen-solver's settings, the Hessian-vector products per point, timings.  Typed fields:
    ``direction_kind`` (of the surface's plane), ``fingerprint``, ``device``, ``num_parameters``."""

    _arrays = ("alphas", "betas", "lambda_max", "lambda_min", "ratio", "losses")
    _fields = BASE_FIELDS + (Field("direction_kind"), Field("data"))

    def __init__(self, alphas, betas, lambda_max, lambda_min, losses, meta=None, **fields):
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.betas = np.asarray(betas, dtype=np.float64)
        self.lambda_max = np.asarray(lambda_max, dtype=np.float64)
        self.lambda_min = np.asarray(lambda_min, dtype=np.float64)
        self.ratio = eig_ratio(self.lambda_max, self.lambda_min)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.meta = dict(meta or {})
        self._set_fields(self._field_names(fields))

    @property
    def span(self) -> tuple:
        """``((alphas[0], alphas[-1]), (betas[0], betas[-1]))``: the rectangle the grid covers."""
        return (float(self.alphas[0]), float(self.alphas[-1])), (float(self.betas[0]), float(self.betas[-1]))

    def to_xarray(self):
        """A Dataset of lambda_max, lambda_min, ratio and losses over ("alpha", "beta")."""
        xr = _xarray()
        dims = ("alpha", "beta")
        return xr.Dataset({name: (dims, getattr(self, name)) for name in ("lambda_max", "lambda_min", "ratio",
                                                                          "losses")},
                          coords={"alpha": self.alphas, "beta": self.betas}, attrs=_attrs(self.meta))


def eig_ratio(lambda_max, lambda_min):
    """``|lambda_min / lambda_max|`` per cell, as Li et al.'s ``plot_2d_eig_ratio`` (``np.divide``: inf where
    ``lambda_max = 0 != lambda_min``, NaN for 0/0 and where either is NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(np.asarray(lambda_min, dtype=np.float64) / np.asarray(lambda_max, dtype=np.float64))


def spread(losses):
    """Per-cell median and inter-quartile range over the first axis (NaN losses are ignored, all-NaN stays NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells
        q25, med, q75 = np.nanpercentile(losses, [25, 50, 75], axis=0)
    return med, q75 - q25


def sharpness(losses, center_loss) -> float:
    """``100 (max L - L0) / (1 + L0)`` over the finite losses of one grid (Keskar et al. 2017, Metric 2.1)."""
    finite = np.asarray(losses, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0 or center_loss is None or not np.isfinite(center_loss):
        return float("nan")
    return float(100.0 * (finite.max() - center_loss) / (1.0 + center_loss))
