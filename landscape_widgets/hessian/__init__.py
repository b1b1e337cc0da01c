"""Hessian of the full-data loss: products (``hvp``), extreme eigenpairs (``lanczos``), spectral density
(``slq``), trace (``hutchinson``), the GGN (``ggn``) and the empirical Fisher (``fisher``) beside the Hessian
(``operators``), the ``Spectrum`` result (``spectrum``) and the trust panel (``trust``)."""
from .fisher import FisherOperator
from .ggn import GGNOperator
from .hvp import HessianOperator, NonFiniteHessian
from .spectrum import Spectrum, compute_spectrum

__all__ = ["FisherOperator", "GGNOperator", "HessianOperator", "NonFiniteHessian", "Spectrum", "compute_spectrum"]
