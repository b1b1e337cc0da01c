"""Directions through other models: the plane through the model theta and two others theta_b, theta_c (Li et al.
2018, arXiv 1712.09913, their code's ``--model_file2/3``; loss-landscapes' ``planar_interpolation``) and the line
through theta and theta_b (Goodfellow et al. 2015; Garipov et al. 2018, arXiv 1802.10026).

Over the moved parameters, in raw units (no normalization), by one Gram-Schmidt step::

    d1 = theta_b - theta,   a_c = <theta_c - theta, d1> / |d1|^2,   d2 = (theta_c - theta) - a_c d1

so that theta sits at (0, 0), theta_b at (1, 0) and theta_c at (a_c, 1).  The kind's record keeps these marks as
``"models"``: ``{"labels": ["model", "model_b", "model_c"], "coords": [[0, 0], [1, 0], [a_c, 1]]}`` (a line:
``coords`` ``[0, 1]``); the result's ``models`` (:class:`~landscape_widgets.results.Marks`) adds ``losses``, the
loss at each mark.  Floating buffers (BatchNorm statistics) get the same
construction (:attr:`~.kind.Made.buffer_dirs`), so ``buffers="interpolate"`` gives each model its own statistics at
its mark.  Parameters that do not move must be equal in the three models.

The default grid covers the three marks with a margin of ``MARGIN`` (a quarter) of their extent on each side:
alpha over ``[min(0, a_c), max(1, a_c)]``, beta over ``[0, 1]``.

Which ``directions=`` are models (:func:`given_models`): an ``nn.Module``, or a dict that carries the ``_metadata``
attribute of what ``module.state_dict()`` returns (kept by ``torch.save``/``torch.load`` and ``copy.deepcopy``).  A
plain dict ``{parameter name: tensor}`` is always an explicit direction; a plain dict of another model's weights
(``dict(sd)``, a comprehension, safetensors) is loaded into a module first (``m.load_state_dict(d)``) and that
module passed.  A pair must be two models or two directions, not one of each.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._model import state_from, strip_prefixes, unwrap
from ..results import Marks
from .kind import DirectionKind, Made
from .normalization import flat_dot

MARGIN = 0.25
LABELS = ("model", "model_b", "model_c")
PARALLEL_TOL = 1e-5  # |d2| / |theta_c - theta| below this: theta_c lies on the line (float32 rounding is ~1e-7)


def is_model(obj) -> bool:
    """A module, or a dict as ``module.state_dict()`` returns it (with its ``_metadata``)."""
    return isinstance(obj, nn.Module) or (isinstance(obj, dict) and hasattr(obj, "_metadata"))


def given_models(spec, argname="directions"):
    """The models in ``spec`` (one model, or a tuple/list of them) as a list, or None when ``spec`` holds none."""
    items = list(spec) if isinstance(spec, (tuple, list)) else [spec]
    models = [is_model(item) for item in items]
    if not any(models):
        return None
    if not all(models):
        raise TypeError(f"{argname} mixes models and direction dicts; pass models only (modules or their "
                        "module.state_dict()) for the plane or line through them, or direction dicts only "
                        "{parameter name: tensor}")
    return items


def check_not_weights(given, private, argname):
    """A plain dict that names buffers of the model holds another model's weights, not a direction: say how to pass
    it (a plain dict is always read as a direction, see the module docstring)."""
    for k, d in enumerate(given):
        if not isinstance(d, dict):
            continue
        keys = strip_prefixes([n for n in d if isinstance(n, str)], private.aliases)
        buffers = [n for n in keys if private.aliases.get(n, n) in private.buffers]
        if buffers:
            where = f"{argname}[{k}]" if len(given) > 1 else argname
            raise ValueError(f"{where} names buffer(s) {buffers[:3]} of the model, so it looks like another model's "
                             "weights, but a plain dict is read as a direction {parameter name: tensor}. For the "
                             "plane or line through other models pass the modules or module.state_dict() itself "
                             "(a plain dict copy loses its _metadata: load it into a module with "
                             "m.load_state_dict(d) and pass m); for a direction leave the buffers out")


def model_state(obj, private, *, argname, need_buffers) -> dict:
    """The moved parameters (and floating buffers when ``need_buffers``) of another model, by the model's names, on
    its device (``state_from``), after checking that the parameters that do not move equal the model's and that
    every value is finite.  A state_dict has no non-persistent buffers (``register_buffer(..., persistent=False)``,
    constants such as rotary frequencies): those are the model's own."""
    if isinstance(obj, dict) and need_buffers:
        saved = set(private.module.state_dict())
        given = private.canonical(obj, argname)
        extra = {n: private.base_buffers[n] for n in private.buffer_names if n not in given and n not in saved}
        if extra:
            obj = {**given, **extra}
    state = state_from(obj, private, need_buffers=need_buffers, argname=argname)
    if isinstance(obj, nn.Module):
        module = unwrap(obj)
        given = dict(module.named_parameters(remove_duplicate=False))
    else:
        given = obj
    given = private.canonical(given, argname)
    fixed = [n for n in private.all_names if n not in private.names and n in given]
    differ = []
    for n in fixed:
        t = given[n]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(private.base[n].shape):
            differ.append(n)
            continue
        if not torch.equal(t.detach().to(device=private.device, dtype=private.base[n].dtype), private.base[n]):
            differ.append(n)
    if differ:
        raise ValueError(f"{argname} differs from the model in parameter(s) {differ[:5]}, which this Landscape keeps "
                         f"fixed (params rule {private.params_rule!r}); the models must share every parameter that "
                         "does not move: pass models with the same fixed parameters, or params= to lw.Landscape to "
                         "move those too")
    bad = [n for n, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"{argname} has NaN or inf in {bad[:5]}; pass a model with finite weights")
    return state


def _diff(a, b, names):
    """``a - b`` in float64, per name."""
    return {n: a[n].double() - b[n].double() for n in names}


def model_directions(private, count, *, given=(), argname="directions", buffers="interpolate", normalization=None,
                     **_) -> Made:
    """d1 (and d2) through the ``count`` models ``given`` (see the module docstring); ``buffers`` "interpolate"
    reads the models' floating buffers and gives their directions too."""
    if normalization not in (None, "none"):
        raise ValueError(f"normalization={normalization!r} does not apply to planes through models: their "
                         "coordinates are in raw units so that every model sits at its own mark; pass "
                         "normalization=None")
    if len(given) != count:
        want = "one other model: direction=model_b" if count == 1 else \
            "two other models: directions=(model_b, model_c)"
        raise ValueError(f"{argname}: a {'line' if count == 1 else 'plane'} through models needs {want} (modules "
                         f"or their state_dict()), got {len(given)}")
    labels = LABELS[:count + 1]
    with_buffers = buffers == "interpolate"
    states = [model_state(m, private, argname=argname if count == 1 else f"{argname}[{k}] ({labels[k + 1]})",
                          need_buffers=with_buffers) for k, m in enumerate(given)]
    bad = [n for n in private.names if not torch.isfinite(private.base[n]).all()]
    if bad:
        raise ValueError(f"the model has NaN or inf in {bad[:5]}; a plane through models needs finite weights")
    names, bnames = private.names, (private.buffer_names if with_buffers else [])
    d1 = _diff(states[0], private.base, names)
    n1 = flat_dot(d1, d1)
    if n1 == 0.0:
        raise ValueError(f"{labels[1]} has the model's own weights (on the moved parameters), so there is no "
                         "direction to it; pass a different model")
    dirs64 = [d1]
    bdirs64 = [_diff(states[0], private.base_buffers, bnames)]
    a_c = None
    if count == 2:
        dc = _diff(states[1], private.base, names)
        a_c = flat_dot(dc, d1) / n1
        d2 = {n: dc[n] - a_c * d1[n] for n in names}
        nc, n2 = flat_dot(dc, dc), flat_dot(d2, d2)
        if nc == 0.0 or n2 <= (PARALLEL_TOL ** 2) * nc:
            why = "has the model's own weights" if nc == 0.0 else \
                f"lies on the line through the model and model_b (its part orthogonal to it is {n2 ** 0.5:.3g}, " \
                f"{(n2 / nc) ** 0.5:.2g} of its distance {nc ** 0.5:.3g})"
            raise ValueError(f"model_c {why}, so the three models span no plane; pass a third model off that line")
        dirs64.append(d2)
        dc_b = _diff(states[1], private.base_buffers, bnames)
        bdirs64.append({n: dc_b[n] - a_c * bdirs64[0][n] for n in bnames})
    dirs = [{n: d[n].to(private.base[n].dtype) for n in names} for d in dirs64]
    buffer_dirs = None
    if with_buffers:
        buffer_dirs = {n: [bd[n].to(private.base_buffers[n].dtype) for bd in bdirs64] for n in bnames}
    norms = [flat_dot(d, d) ** 0.5 for d in dirs64]
    if count == 2:
        coords = [[0.0, 0.0], [1.0, 0.0], [a_c, 1.0]]
        lo, hi = min(0.0, a_c), max(1.0, a_c)
        span = ((lo - MARGIN * (hi - lo), hi + MARGIN * (hi - lo)), (-MARGIN, 1.0 + MARGIN))
    else:
        coords = [0.0, 1.0]
        span = ((-MARGIN, 1.0 + MARGIN),)
    meta = {"direction_kind": "models", "seed": None, "normalization": "none", "ignore": None,
            "direction_norms": norms, "models": {"labels": list(labels), "coords": coords},
            **({} if a_c is None else {"a_c": a_c})}
    return Made(dirs, meta, span=span, buffer_dirs=buffer_dirs)


def line_axis(steps) -> np.ndarray:
    """``steps`` points from about ``-MARGIN`` to ``1 + MARGIN`` on which 0 and 1 are exact grid points:
    ``k / q`` for integers k, with q of the parity that makes the margins equal."""
    n1 = steps - 1
    q = max(1, min(n1, int(round(n1 / (1.0 + 2.0 * MARGIN)))))
    if (n1 - q) % 2:
        q = q + 1 if q < n1 else q - 1
    p = (n1 - q) // 2
    return np.arange(-p, q + p + 1, dtype=np.float64) / q


class ModelsKind(DirectionKind):
    """The plane (or line) through the model and other models, in raw units (Li et al.'s ``--model_file2/3``)."""

    name = "models"
    default_normalization = "none"
    chooses_span = True
    max_count = 2
    moves_buffers = True

    def make(self, private, count, *, given=(), **options) -> Made:
        return model_directions(private, count, given=list(given), **options)

    def marks(self, meta):
        return Marks.of(meta.get("models"))

    def describe(self, meta, span=None):
        marks = self.marks(meta)
        labels = (marks.labels if marks is not None else None) or list(LABELS)
        a_c = meta.get("a_c")
        where = f", {labels[-1]} at α={float(a_c):.3g}, β=1" if a_c is not None else ""
        return f"plane through {', '.join(labels)} (raw units{where})"
