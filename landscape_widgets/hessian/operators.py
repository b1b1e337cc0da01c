"""One place that builds the curvature operator a computation asks for (``curvature=``).

- ``"hessian"``: the Hessian of the loss (:class:`~.hvp.HessianOperator`; indefinite away from a minimum);
- ``"ggn"``: the Generalized Gauss-Newton ``J^T H_out J`` (:class:`~.ggn.GGNOperator`; needs ``loss_fn``);
- ``"fisher"``: the empirical Fisher ``(1/N) sum_i g_i g_i^T`` (:class:`~.fisher.FisherOperator`).

Every operator has :class:`~.hvp.HessianOperator`'s interface (``matmat_torch``, ``matvec``, ``hvps``,
``num_parameters``, ``progress``, ``running``, ...), so the solvers (Lanczos, SLQ, Hutch++) accept any of them.
"""
from __future__ import annotations

from .fisher import FisherOperator
from .ggn import GGNOperator
from .hvp import HessianOperator

OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": FisherOperator}
CURVATURES = tuple(OPERATORS)


def check_curvature(curvature) -> str:
    if curvature not in CURVATURES:
        raise ValueError(f"curvature={curvature!r} is not known; pass one of {', '.join(map(repr, CURVATURES))}")
    return curvature


def make_operator(curvature, private, data, objective, **options):
    """The operator of ``curvature`` over ``data`` at the private copy's weights; ``options`` go to its class."""
    return OPERATORS[check_curvature(curvature)](private, data, objective, **options)


__all__ = ["CURVATURES", "OPERATORS", "check_curvature", "make_operator"]
