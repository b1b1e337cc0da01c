"""The early-stopping, thick-restarted Lanczos of hessian/lanczos.py against exact answers: dense Hessians of small
models (tests/_hessian_cases.py) and an explicit diagonal operator, and against ARPACK (scipy's eigsh) on the same
operator: the number of products it needs for the same tolerance."""
import numpy as np
import pytest
import torch
from torch import nn

from _hessian_cases import classification_data, dense_hessian, small_cnn, small_mlp
from landscape_widgets._model import PrivateModel
from landscape_widgets.data import DataSource
from landscape_widgets.hessian import HessianOperator
from landscape_widgets.hessian.lanczos import _arpack, extreme_eigenpairs, lanczos_residual

CE = nn.CrossEntropyLoss()


@pytest.fixture(scope="module", params=[small_mlp, small_cnn], ids=["mlp", "cnn"])
def case(request):
    model = request.param()
    x, y = classification_data(model)
    return model, x, y, dense_hessian(model, CE, x, y)


def operator(model, x, y):
    return HessianOperator(PrivateModel(model, torch.device("cpu")), DataSource((x, y)), CE)


def residuals(H, w, V):
    return np.linalg.norm(H @ V - V * w, axis=0)


@pytest.mark.parametrize("which,k", [("LA", 5), ("SA", 2), ("LA", 1)])
def test_lanczos_pairs_match_the_dense_hessian(case, which, k):
    model, x, y, H = case
    exact = np.linalg.eigvalsh(H)
    want = exact[::-1][:k] if which == "LA" else exact[:k]
    op = operator(model, x, y)
    w, V, info = extreme_eigenpairs(op, k, which, rng=np.random.default_rng(0), tol=1e-8)
    assert info["method"] == "lanczos" and info["converged"] and info["hvps"] == op.hvps
    np.testing.assert_allclose(w, want, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0, rtol=1e-10)
    assert np.all(residuals(H, w, V) <= 1e-6 * np.abs(H).max())
    assert np.abs(V[np.argmax(np.abs(V), axis=0), np.arange(k)]).min() > 0  # sign fixed: largest entry positive
    assert np.all(V[np.argmax(np.abs(V), axis=0), np.arange(k)] > 0)


def test_costs_about_what_arpack_costs(case):
    """ARPACK's test (residual <= tol |theta|), tightened and guarded (module docstring), after every product:
    the values are as accurate as eigsh's, for at most 1.5x its products (ARPACK tests only after each
    restart cycle of its ncv = 20 basis)."""
    model, x, y, H = case
    exact = np.linalg.eigvalsh(H)[::-1][:5]
    for tol in (1e-3, 1e-6):
        ours = operator(model, x, y)
        w, _, info = extreme_eigenpairs(ours, 5, "LA", rng=np.random.default_rng(3), tol=tol)
        theirs = operator(model, x, y)
        w_ref, _, _ = _arpack(theirs, 5, "LA", np.random.default_rng(3).standard_normal(ours.num_parameters), tol,
                              None, None)
        assert info["method"] == "lanczos" and ours.hvps <= 1.5 * theirs.hvps, (tol, ours.hvps, theirs.hvps)
        assert np.all(np.abs(w - exact) <= tol * np.abs(exact))
        assert np.all(np.abs(w_ref - exact) <= tol * np.abs(exact))


@pytest.mark.parametrize("tol", [1e-2, 1e-8])
def test_both_ends_from_one_run_match_the_dense_hessian(case, tol):
    """which="BE": lambda_min and lambda_max from one Krylov space, lambda_max to tol |lambda_max| and lambda_min
    to tol (lambda_max - lambda_min); fewer products than the two one-ended solves at the same tolerance."""
    model, x, y, H = case
    exact = np.linalg.eigvalsh(H)
    op = operator(model, x, y)
    w, V, info = extreme_eigenpairs(op, 1, "BE", rng=np.random.default_rng(0), tol=tol, min_steps=20)
    assert info["method"] == "lanczos" and info["converged"] and w.shape == (2,) and V.shape[1] == 2
    spread = exact[-1] - exact[0]
    assert abs(w[1] - exact[-1]) <= tol * abs(exact[-1]) and abs(w[0] - exact[0]) <= tol * spread
    if tol < 1e-4:  # converged pairs: the vectors are eigenvectors too
        assert np.all(residuals(H, w, V) <= 1e-5 * np.abs(H).max())
    two = operator(model, x, y)
    extreme_eigenpairs(two, 1, "LA", rng=np.random.default_rng(0), tol=tol, min_steps=20)
    extreme_eigenpairs(two, 1, "SA", rng=np.random.default_rng(1), tol=tol, min_steps=20)
    assert op.hvps < two.hvps
    with pytest.raises(ValueError, match="which='BE' gives one eigenpair at each end: pass k=1"):
        extreme_eigenpairs(op, 2, "BE", rng=np.random.default_rng(0))


@pytest.mark.parametrize("which,k,basis", [("LA", 2, 6), ("SA", 2, 8), ("BE", 1, 8)])
def test_a_full_basis_restarts_thick_and_still_converges(case, which, k, basis):
    """min_basis below what tol 1e-10 needs: the basis restarts (Wu & Simon's thick restart) and the pairs are those
    of the dense Hessian, with the products of the restarts counted."""
    model, x, y, H = case
    exact = np.linalg.eigvalsh(H)
    want = exact[::-1][:k] if which == "LA" else exact[:k] if which == "SA" else exact[[0, -1]]
    op = operator(model, x, y)
    w, V, info = extreme_eigenpairs(op, k, which, rng=np.random.default_rng(0), tol=1e-10, min_basis=basis)
    assert info["method"] == "lanczos" and info["converged"] and info["basis"] == basis and info["restarts"] > 0
    assert info["hvps"] == op.hvps > basis
    np.testing.assert_allclose(w, want, rtol=1e-8, atol=1e-10 * np.abs(exact).max())
    assert np.all(residuals(H, w, V) <= 1e-7 * np.abs(H).max())


class Diagonal:
    """H = diag(d) as the operator interface extreme_eigenpairs uses (products counted)."""

    def __init__(self, d):
        self.d = torch.as_tensor(d, dtype=torch.float64)
        self.num_parameters, self.device, self.dtype, self.hvps = len(d), torch.device("cpu"), torch.float64, 0

    def matvec_torch(self, v):
        self.hvps += 1
        return self.d * v.double()

    def matvec(self, v):
        return self.matvec_torch(torch.from_numpy(np.asarray(v, dtype=np.float64).ravel())).numpy()

    def linear_operator(self):
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator((self.num_parameters,) * 2, matvec=self.matvec, dtype=np.float64)


def test_an_exhausted_krylov_space_gives_exact_values():
    """Four distinct eigenvalues (each ten times): the Krylov space of any start vector has dimension 4, so
    Lanczos is exact after 4 products and must stop there instead of dividing by beta = 0."""
    op = Diagonal(np.repeat([3.0, 1.0, -0.5, -2.0], 10))
    w, V, info = extreme_eigenpairs(op, 2, "LA", rng=np.random.default_rng(0), tol=1e-12)
    assert info["method"] == "lanczos" and op.hvps == 4
    np.testing.assert_allclose(w, [3.0, 1.0], rtol=1e-12)
    np.testing.assert_allclose(op.d.numpy()[:, None] * V, V * w, atol=1e-10)
    w, _, _ = extreme_eigenpairs(op, 1, "SA", rng=np.random.default_rng(1), tol=1e-12)
    np.testing.assert_allclose(w, [-2.0], rtol=1e-12)


def test_clustered_top_of_a_known_spectrum():
    """300 distinct eigenvalues, the top five within 2 % of each other (slow for any Krylov method)."""
    d = np.r_[np.linspace(1.0, 0.98, 5), np.linspace(-0.3, 0.9, 295)]
    op = Diagonal(np.random.default_rng(5).permutation(d))
    w, V, info = extreme_eigenpairs(op, 5, "LA", rng=np.random.default_rng(0), tol=1e-9)
    assert info["converged"]
    np.testing.assert_allclose(w, np.linspace(1.0, 0.98, 5), rtol=1e-8)
    np.testing.assert_allclose(op.d.numpy()[:, None] * V, V * w, atol=1e-4)
    # converged Ritz vectors are where a basis loses orthogonality: one reorthogonalization pass per step kept it
    np.testing.assert_allclose(V.T @ V, np.eye(5), atol=1e-10)


def test_an_unconverged_run_returns_k_estimates_and_says_so():
    """tol 1e-14 on a clustered spectrum with one restart allowed in a basis of 9: the k best estimates come back,
    marked converged=False, after a bounded number of products."""
    d = np.r_[np.linspace(1.0, 0.999, 5), np.linspace(-0.3, 0.998, 395)]
    op = Diagonal(np.random.default_rng(2).permutation(d))
    w, V, info = extreme_eigenpairs(op, 5, "LA", rng=np.random.default_rng(0), tol=1e-14, maxiter=1, min_basis=8)
    assert not info["converged"] and info["method"] == "lanczos" and len(w) == 5 and V.shape == (400, 5)
    assert info["restarts"] == 1 and info["hvps"] == op.hvps < 30
    # Ritz values interlace (Cauchy): the i-th largest is at most the i-th largest eigenvalue, and inside the spectrum
    assert np.all(w <= np.sort(d)[::-1][:5] + 1e-12) and np.all(w >= d.min()) and list(w) == sorted(w, reverse=True)


def test_a_budget_below_what_k_needs_is_a_clear_error():
    op = Diagonal(np.random.default_rng(2).permutation(np.r_[np.linspace(1.0, 0.999, 5),
                                                              np.linspace(-0.3, 0.998, 395)]))
    with pytest.raises(ValueError, match=r"memory_budget=9600 bytes holds 3 vectors .* k=5 .*needs 14 "
                                         r".*pass memory_budget>=44800"):
        extreme_eigenpairs(op, 5, "LA", rng=np.random.default_rng(0), memory_budget=8 * 400 * 3)
    with pytest.raises(ValueError, match="memory_budget=-1 must be a positive int"):
        extreme_eigenpairs(op, 1, "LA", rng=np.random.default_rng(0), memory_budget=-1)
    w, V, info = extreme_eigenpairs(op, 1, "LA", rng=np.random.default_rng(0), vectors=False)
    assert V is None and info["converged"] and w[0] == pytest.approx(1.0, rel=1e-6)


def test_a_larger_basis_than_needed_gives_the_same_pairs(case):
    """A run that converges before its basis is full does the same arithmetic whatever the basis's capacity."""
    model, x, y, _H = case
    runs = []
    for basis in (60, 10_000):
        w, V, info = extreme_eigenpairs(operator(model, x, y), 3, "SA", rng=np.random.default_rng(0), tol=1e-10,
                                        min_basis=basis)
        assert info["method"] == "lanczos" and info["restarts"] == 0 and info["hvps"] > 16
        runs.append((w, V))
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])


class CountedPasses(torch.overrides.TorchFunctionMode):
    """Counts the Gram-Schmidt passes of lanczos_residual (one ``addmv_`` each)."""

    def __init__(self):
        super().__init__()
        self.passes = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.passes += func is torch.Tensor.addmv_
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("lost,passes", [(0.0, 1), (1e-9, 1), (100.0, 2)])
def test_reorthogonalization_repeats_a_pass_only_when_it_removed_more_than_rounding(lost, passes):
    """After the three-term recurrence ``w`` is orthogonal to the basis up to rounding, and one classical
    Gram-Schmidt pass suffices; when a pass removes most of ``w`` (orthogonality was lost), it runs a second
    (DGKS).  Either way ``w`` leaves orthogonal to the basis, with its norm returned."""
    rng = np.random.default_rng(0)
    Q = torch.from_numpy(np.linalg.qr(rng.standard_normal((400, 12)))[0].T.copy())  # 12 orthonormal rows
    j, a, b = 9, 0.7, 0.3
    z = torch.from_numpy(rng.standard_normal(400))
    z -= Q.T @ (Q @ z)  # the part that must survive: orthogonal to every row, also those beyond j
    w = z + a * Q[j] + b * Q[j - 1] + lost * (Q[0] + Q[4])
    with CountedPasses() as mode:
        norm = lanczos_residual(w, Q, j, a, b)
    assert mode.passes == passes
    assert float((Q[:j + 1] @ w).abs().max()) <= 1e-14 * norm
    torch.testing.assert_close(w, z, rtol=0, atol=1e-12)
    assert norm == pytest.approx(float(z.norm()), rel=1e-14)
