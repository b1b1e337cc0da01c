"""spectrum, trust and Hessian directions of the zoo against a dense float64 Hessian (torch.autograd.functional.hessian
over the flattened moved parameters; GPT-2 and BERT with the math SDPA backend, whose double backward exists)."""
import numpy as np
import pytest

from zoo import models as Z
from zoo.checks import untouched
from zoo.reference import Reference, normalize_dict, point

HF = ("gpt2", "bert")
HESSIAN = [n for n in Z.BUILDERS]  # every case has hessian=True or a smaller hessian_params rule
EXACT_TRACE_MAX_P = 300  # up to here Hutch++ gets 3P + 3 products, which makes it exact (its sketch spans R^P)


def _setup(name):
    case = Z.build(name)
    ref = Reference(case)
    rule = case.hessian_params if case.hessian_params is not None else "__case__"
    ls = case.landscape(params=rule)
    moved = ref.moved(rule)
    H = ref.dense_hessian(moved, math_sdpa=name in HF)
    return case, ref, ls, moved, H


def _trace_kwargs(P):
    return {"trace_samples": 3 * P + 3} if P <= EXACT_TRACE_MAX_P else {}


def _check_trace(got, stderr, H, rel=1e-3):
    want = float(np.trace(H))
    if len(H) <= EXACT_TRACE_MAX_P:
        assert got == pytest.approx(want, rel=rel, abs=1e-4 * np.abs(np.linalg.eigvalsh(H)).max())
    else:
        assert abs(got - want) <= 4 * stderr + rel * abs(want), (got, want, stderr)


@pytest.mark.parametrize("name", HESSIAN)
def test_spectrum_and_trust_equal_dense_hessian(name):
    """spectrum: the 3 largest and 2 smallest eigenvalues and the trace (Hutch++ with 3P + 3 products: exact);
    trust of a plane (biases included: ignore=None, GPT-2's Hessian set is all 1-D): kappa = d^T H d / ||d||^2 for the
    plane's own directions, lambda_max, lambda_min, and its trace (default products: within its standard error)."""
    case, ref, ls, moved, H = _setup(name)
    ev = np.linalg.eigvalsh(H)
    scale = np.abs(ev).max()
    # low-precision models: their products are rounded in the dtype (README: 1 % bfloat16, 0.1 % float16 of scale)
    rel = case.hessian_rtol
    eig_abs, kappa_abs = (rel * scale, rel * scale) if case.tol else (1e-4 * scale, 1e-5 * scale)
    with untouched(case.model):
        spec = ls.spectrum(k=3, bottom=2, density=False, trace=True, **_trace_kwargs(len(H)))
        surf = ls.plane(resolution=(3, 3), ignore=None, progress=False, evaluator="loop")
        panel = ls.trust(surf)
        # another plane at the same weights: the Hessian facts are reused, only its two curvatures are computed
        surf2 = ls.plane(resolution=(3, 3), ignore=None, seed=1, progress=False, evaluator="loop")
        panel2 = ls.trust(surf2)
    assert panel2["reused_hessian_facts"] and panel2["hvps"] == 2
    for key in ("lambda_max", "lambda_min", "trace", "trace_stderr"):
        assert panel2[key] == panel[key], key
    for d, kappa in zip(surf2.directions, panel2["kappa"]):
        v = Reference.flat(normalize_dict(d, ref.model), moved)
        assert kappa == pytest.approx(v @ H @ v / (v @ v), rel=rel, abs=kappa_abs)
    assert spec.meta["moved_parameters"] == len(H)
    np.testing.assert_allclose(spec.top_eigenvalues, ev[::-1][:3], rtol=rel, atol=eig_abs)
    np.testing.assert_allclose(spec.bottom_eigenvalues, ev[:2], rtol=rel, atol=eig_abs)
    _check_trace(spec.trace, spec.trace_stderr, H, rel)
    for d, kappa in zip(surf.directions, panel["kappa"]):
        v = Reference.flat(normalize_dict(d, ref.model), moved)
        assert v @ v > 0
        assert kappa == pytest.approx(v @ H @ v / (v @ v), rel=rel, abs=kappa_abs)
    assert panel["lambda_max"] == pytest.approx(ev[-1], rel=rel, abs=eig_abs)
    assert panel["lambda_min"] == pytest.approx(ev[0], rel=rel, abs=eig_abs)
    assert panel["trace"] == pytest.approx(np.trace(H), rel=rel) if panel["trace_stderr"] == 0 else \
        abs(panel["trace"] - np.trace(H)) <= 4 * panel["trace_stderr"] + rel * abs(np.trace(H))


def test_spectrum_without_trace():
    """trace=False skips the trace (NaN) and keeps the eigenvalues."""
    case, ref, ls, moved, H = _setup("shared_linear")
    ev = np.linalg.eigvalsh(H)
    with untouched(case.model):
        spec = ls.spectrum(k=2, bottom=1, density=False, trace=False)
    assert np.isnan(spec.trace)
    np.testing.assert_allclose(spec.top_eigenvalues, ev[::-1][:2], rtol=1e-3)


@pytest.mark.parametrize("name", ["shared_linear", "tied_autoencoder", "frozen_lora", "l2_regularized", "batchnorm",
                                  "gpt2"])
def test_hessian_plane(name):
    """directions="hessian": d1 is the unit eigenvector of lambda_max of the moved set's Hessian, the plane's values
    are the losses at the reported points."""
    case, ref, ls, moved, H = _setup(name)
    ev = np.linalg.eigvalsh(H)
    with untouched(case.model):
        surf = ls.plane(directions="hessian", resolution=(3, 3), progress=False, evaluator="loop")
    d1, d2 = (normalize_dict(d, ref.model) for d in surf.directions)
    assert sorted(d1) == sorted(moved)
    v = Reference.flat(d1, moved)
    assert np.linalg.norm(v) == pytest.approx(1.0, rel=1e-4)
    assert v @ H @ v == pytest.approx(ev[-1], rel=1e-3)
    np.testing.assert_allclose(H @ v, ev[-1] * v, atol=1e-3 * abs(ev[-1]))
    want = np.array([[ref.loss(point(ref.model, moved, [d1, d2], [a, b])) for b in surf.betas] for a in surf.alphas])
    np.testing.assert_allclose(surf.losses, want, rtol=1e-5, atol=1e-6)


def test_trust_of_gpt2_with_all_parameters_and_the_tied_embedding():
    """GPT-2 with every parameter moving (the tied wte/lm_head among them): the panel's kappas equal the exact
    curvature along each direction (double backward through the math SDPA backend), and lambda_min <= kappa <=
    lambda_max."""
    case = Z.build("gpt2")
    ref = Reference(case)
    with untouched(case.model):
        ls = case.landscape()
        surf = ls.plane(resolution=(3, 3), progress=False, evaluator="loop")
        panel = ls.trust(surf)
    assert "transformer.wte.weight" in surf.directions[0] and "lm_head.weight" not in surf.directions[0]
    for d, kappa in zip(surf.directions, panel["kappa"]):
        d = normalize_dict(d, ref.model)
        want = ref.directional_curvature(d, math_sdpa=True) / float(sum((t.double() ** 2).sum() for t in d.values()))
        assert kappa == pytest.approx(want, rel=1e-3, abs=1e-6)
        assert panel["lambda_min"] - 1e-4 <= kappa <= panel["lambda_max"] + 1e-4
