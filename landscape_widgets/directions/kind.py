"""What a direction kind is: an object that declares what it needs, its defaults and its controls, makes
directions and presents them (a description, axis labels, the marks on its plane, the curvatures it found).
Landscape, the static plots, the surface widget, the trust panel and the front end read these declarations; none of
them switches on a kind's name.  A kind reads only its own record (the ``meta`` of its :class:`Made`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEEDS = ("loss", "trajectory")  # "loss": the objective, the data, the caller's cancel flag and progress setting
CONTROLS = ("seed", "normalization", "seeds")  # the surface widget's controls a kind may offer
# the registry lives here, below every result module, so that presentation (plots) can look a kind up by the name
# a result records without importing the kinds' implementations
KINDS = {}  # the kinds a ``directions=`` string names (``directions.register`` adds to them)
UNNAMED = {}  # the kinds of given directions and of other models, which no ``directions=`` string names


def kind_named(name) -> "DirectionKind":
    """The kind a result's ``direction_kind`` names: a registered one or an unnamed one; None if unknown."""
    return KINDS.get(name) or UNNAMED.get(name)


@dataclass
class Made:
    """The directions of one call: ``dirs`` (one ``{name: tensor}`` per axis), ``meta`` (facts the result keeps),
    the kind's default ``span`` (one ``(lo, hi)`` per axis; None: -1..1), a ``path`` ``[n, count]`` drawn on
    the plane (None: no path) and, for kinds that move buffers (``DirectionKind.moves_buffers``), ``buffer_dirs``
    ``{buffer name: [one tensor per axis]}`` (BatchNorm statistics moved with the same coordinates); ``kind``:
    the :class:`DirectionKind` that made them (set by ``directions.make_directions``)."""
    dirs: list
    meta: dict
    span: tuple = None
    path: np.ndarray = None
    buffer_dirs: dict = None
    kind: "DirectionKind" = None


class DirectionKind:
    """Base class of the direction kinds (``directions.KINDS``).

    ``needs``: what :meth:`make` gets besides the model (:data:`NEEDS`); ``default_normalization``; ``controls``:
    the surface widget controls that change its directions (:data:`CONTROLS`); ``seeded``: the directions are a
    function of ``(seed, normalization, ignore)`` alone, so a seed spread can make them again; ``chooses_span``: its
    directions come with their own grid (:attr:`Made.span`) unless the caller gives a span; ``max_count``: the
    most directions it gives (None: any number); ``moves_buffers``: it also gives buffer directions
    (:attr:`Made.buffer_dirs`), so ``buffers="interpolate"`` applies, and :meth:`make` gets ``buffers=``."""

    name = ""
    needs = ()
    default_normalization = "filter"
    controls = ()
    seeded = False
    chooses_span = False
    max_count = None
    moves_buffers = False
    preparing = ""  # what a view says while the directions are made, when that takes a while

    def make(self, private, count, *, seed=0, normalization=None, ignore="biasbn", **needs) -> Made:
        raise NotImplementedError

    def describe(self, meta: dict, span=None) -> str:
        """One line for a title or status: what the plane shows (``meta`` of its surface, ``span`` its half-width
        when the user chose one)."""
        return f"{self.name} plane"

    def curvatures(self, meta: dict):
        """``(lambda_max, lambda_min)`` the kind already computed for this surface, or None."""
        return None

    def axis_labels(self, meta: dict) -> tuple:
        """The labels of the plane's two axes (``meta``: the kind's record), as a static plot prints them."""
        return "α", "β"

    def marks(self, meta: dict):
        """The points the kind marks on its line or plane (:class:`~landscape_widgets.results.Marks`, losses not
        yet evaluated), or None."""
        return None

    def spec(self) -> dict:
        """What the front end needs to know: which controls apply and the default normalization."""
        return {"name": self.name, "controls": list(self.controls), "needs": list(self.needs),
                "default_normalization": self.default_normalization, "chooses_span": self.chooses_span}


class FunctionKind(DirectionKind):
    """A kind made from a function ``f(private, count, **options) -> (dirs, meta)`` (``directions.register``);
    ``meta`` may carry ``path`` and ``default_span``."""

    def __init__(self, name, fn, *, needs=(), default_normalization="filter", controls=(), seeded=False,
                 chooses_span=False):
        self.name, self.fn, self.needs = name, fn, tuple(needs)
        self.default_normalization, self.controls, self.seeded = default_normalization, tuple(controls), seeded
        self.chooses_span = chooses_span

    def make(self, private, count, **options) -> Made:
        dirs, meta = self.fn(private, count, **options)
        meta = dict(meta)
        path, span = meta.pop("path", None), meta.pop("default_span", None)
        meta.setdefault("direction_kind", self.name)
        return Made(list(dirs), meta, span=span, path=path)
