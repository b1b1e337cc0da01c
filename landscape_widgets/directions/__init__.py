"""Direction kinds: one module per method, each a :class:`~.kind.DirectionKind` object in ``KINDS``.

A new kind is one module with a ``DirectionKind`` subclass (what it needs, its defaults and controls, ``make``, and
how it presents its plane: ``describe``, ``axis_labels``, ``marks``, ``curvatures``), registered here or with
:func:`register`; nothing else in the library names it.

Besides the named kinds, ``directions=`` may be the directions themselves (``EXPLICIT``: dicts ``{parameter name:
tensor}``) or other models (``MODELS``: modules, or dicts as ``module.state_dict()`` returns them, which carry its
``_metadata``; :mod:`.models` says the rule): :func:`kind_of` tells which.
"""
from __future__ import annotations

from ..results import Surface
from .explicit import ExplicitKind, check_direction, explicit_directions
from .gaussian import RandomKind, random_directions
from .hessian import HessianKind, hessian_directions
from .kind import CONTROLS, KINDS, NEEDS, UNNAMED, DirectionKind, FunctionKind, Made, kind_named
from .models import ModelsKind, check_not_weights, given_models, line_axis, model_directions
from .normalization import NORMALIZATIONS, check_ignore, check_normalization, cosine, normalize
from .pca import PCAKind, pca_directions

KINDS.update({k.name: k for k in (RandomKind(), HessianKind(), PCAKind())})
EXPLICIT = ExplicitKind()
MODELS = ModelsKind()
UNNAMED.update({MODELS.name: MODELS, EXPLICIT.name: EXPLICIT})


def register(kind, fn=None, **declarations):
    """Add a direction kind: a :class:`DirectionKind` object, or a name and a function
    ``fn(private, count, **options) -> (dirs, meta)`` with the declarations of :class:`FunctionKind`."""
    if fn is not None:
        kind = FunctionKind(kind, fn, **declarations)
    if not isinstance(kind, DirectionKind) or not kind.name:
        raise TypeError("register a DirectionKind with a name, or register(name, fn)")
    unknown = [n for n in kind.needs if n not in NEEDS] + [c for c in kind.controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"kind {kind.name!r} declares unknown needs or controls {unknown}; needs are among "
                         f"{NEEDS}, controls among {CONTROLS}")
    KINDS[kind.name] = kind
    return kind


def kind_of(spec, argname="directions") -> DirectionKind:
    """The kind of a ``directions=`` argument: a registered name, other models (``MODELS``: modules or their
    ``state_dict()``, see :mod:`.models`), or explicit dicts (or a surface's own)."""
    if isinstance(spec, str):
        if spec not in KINDS:
            raise ValueError(f"{argname}={spec!r} is not a known direction kind; pass one of "
                             f"{', '.join(repr(k) for k in KINDS)}, explicit direction dict(s) or other models")
        return KINDS[spec]
    if given_models(spec, argname) is not None:
        return MODELS
    return EXPLICIT


def make_directions(spec, private, count, *, argname, **options) -> Made:
    """``count`` directions of the kind ``spec`` (a name, or the dict / pair of dicts themselves)."""
    check_normalization(options.get("normalization"))
    check_ignore(options.get("ignore", "biasbn"))
    if isinstance(spec, Surface):
        return _same_as(spec, private, count, argname)
    kind = kind_of(spec, argname)
    if kind is MODELS:
        return _by(MODELS, MODELS.make(private, count, given=given_models(spec, argname), argname=argname,
                                       **options))
    if kind is not EXPLICIT:
        if kind.max_count is not None and count > kind.max_count:
            raise ValueError(f"the {kind.name!r} kind gives at most {kind.max_count} directions, {count} were asked "
                             "for")
        return _by(kind, kind.make(private, count, **options))
    given = [spec] if isinstance(spec, dict) else list(spec) if isinstance(spec, (tuple, list)) else None
    if given is None or len(given) != count:
        want = "a dict {parameter name: tensor}" if count == 1 else "a pair (d1, d2) of dicts {parameter name: tensor}"
        raise TypeError(f"{argname} must be a kind name ({', '.join(repr(k) for k in KINDS)}) or {want}")
    check_not_weights(given, private, argname)
    return _by(EXPLICIT, EXPLICIT.make(private, count, given=given, argname=argname, **options))


def _by(kind, made) -> Made:
    """``made`` with the kind that made it, which presents it (labels, marks, curvatures)."""
    made.kind = made.kind or kind
    return made


def _same_as(surface, private, count, argname) -> Made:
    """The directions of an earlier plane, as it made them (its kind's record, grid and path): reused, not made
    again (the Hessian eigenvectors or PCA components of a preview for its full grid)."""
    if not surface.directions or len(surface.directions) != count:
        raise ValueError(f"{argname}: the surface has no {count} directions (loaded from a file without them?); "
                         "pass the directions themselves or a kind name")
    dirs = [check_direction(dict(d), private, f"{argname}.directions[{k}]") for k, d in enumerate(surface.directions)]
    meta = dict(surface.direction_meta) if surface.direction_meta is not None else \
        {"direction_kind": "explicit", "seed": None, "normalization": "none", "ignore": None}
    kind = kind_named(surface.direction_kind if surface.direction_meta is not None else EXPLICIT.name)
    return Made(dirs, meta, span=surface.span, path=surface.path, kind=kind or EXPLICIT)


__all__ = ["CONTROLS", "EXPLICIT", "KINDS", "MODELS", "NEEDS", "NORMALIZATIONS", "DirectionKind", "FunctionKind",
           "Made", "cosine", "explicit_directions", "hessian_directions", "kind_named", "kind_of", "line_axis",
           "make_directions", "model_directions", "normalize", "pca_directions", "random_directions", "register"]
