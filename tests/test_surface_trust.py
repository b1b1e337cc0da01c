"""SurfaceWidget's own trust panel: the curvatures along its two directions
against the dense Hessian's quadratic forms, the eigenvalues against eigvalsh, and its life cycle."""
import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from helpers import assert_same, snapshot

CE = nn.CrossEntropyLoss()


@pytest.fixture(scope="module")
def case(mlp_case):
    return mlp_case[:4]


def flat(d, model):
    return np.concatenate([d[n].double().reshape(-1).numpy() for n, _ in model.named_parameters()])


@pytest.mark.parametrize("directions", ["random", "hessian"])
def test_panel_matches_the_dense_hessian(case, directions):
    model, x, y, H = case
    before = snapshot(model)
    w = lw.SurfaceWidget(lw.Landscape(model, CE, (x, y)), resolution=5, directions=directions, span=0.3)
    assert w.error == "" and w._state == "done"
    panel = w.trust
    assert panel is w.surface.meta["trust"]
    exact = np.linalg.eigvalsh(H)
    for d, kappa in zip(w.surface.directions, panel["kappa"]):
        v = flat(d, model)
        assert kappa == pytest.approx(v @ H @ v / (v @ v), rel=1e-6, abs=1e-10)
    assert panel["lambda_max"] == pytest.approx(exact[-1], rel=1e-4)
    assert panel["lambda_min"] == pytest.approx(exact[0], rel=1e-4)
    assert abs(panel["trace"] - np.trace(H)) < 4 * panel["trace_stderr"]
    assert w._trust["kappa"] == panel["kappa"] and w._trust["hides_saddle"] == panel["hides_saddle"]
    assert "trust panel: computing" not in w._status
    if directions == "hessian":  # its eigenvalues come from the plane's own meta, not from a second Lanczos run
        assert panel["lambda_max"] == w.surface.meta["lambda_max"]
        assert panel["kappa"][0] == pytest.approx(exact[-1], rel=1e-4)
        assert panel["kappa"][1] == pytest.approx(exact[0], rel=1e-4)
        # kappa(d2) < 0: the slice shows the strong negative curvature
        assert panel["strong_negative_curvature"] and not panel["hides_saddle"]
    assert_same(model, before)
    w.close()


def test_a_new_plane_gets_a_new_panel_and_trust_false_computes_none(case):
    model, x, y, _ = case
    ls = lw.Landscape(model, CE, (x, y))
    w = lw.SurfaceWidget(ls, resolution=5, seed=1)
    first = w.trust["kappa"]
    w.seed = 2
    w.wait(timeout=120)
    assert w.trust["kappa"] != first and w.surface.meta["seed"] == 2
    assert w.trust["kappa"] == pytest.approx(ls.trust(w.surface, trace_samples=30)["kappa"], rel=1e-9)
    w.close()
    off = lw.SurfaceWidget(ls, resolution=5, trust=False)
    assert off.trust is None and off._trust == {} and "trust" not in off.surface.meta
    assert "trust panel" not in off._status
    off.close()


def test_seed_median_panel_has_every_seeds_kappas(case):
    """The median view's panel: kappa along both directions of each seed's plane (against the dense Hessian and
    the directions plane() draws for that seed), their ranges, and the seeds whose plane hides a saddle."""
    model, x, y, H = case
    before = snapshot(model)
    ls = lw.Landscape(model, CE, (x, y))
    w = lw.SurfaceWidget(ls, resolution=11, seed=4, seeds=3, span=0.5)
    assert w._state == "done" and w.spread is not None
    panel = w.trust
    assert panel is w.surface.meta["trust"] and panel["seeds"] == [4, 5, 6] and "kappa" not in panel
    for s, pair in zip(panel["seeds"], panel["kappa_per_seed"]):
        for d, kappa in zip(ls.plane(seed=s, resolution=3, span=0.5, progress=False).directions, pair):
            v = flat(d, model)
            assert kappa == pytest.approx(v @ H @ v / (v @ v), rel=1e-6, abs=1e-10)
    per = np.array(panel["kappa_per_seed"])
    assert panel["kappa_range"] == [[per[:, j].min(), per[:, j].max()] for j in range(2)]
    assert panel["lambda_min"] == pytest.approx(np.linalg.eigvalsh(H)[0], rel=1e-4)
    hiding = [s for s, (k1, k2) in zip(panel["seeds"], per)
              if panel["strong_negative_curvature"] and k1 > 0 and k2 > 0]
    assert panel["hides_saddle_seeds"] == hiding and panel["hides_saddle"] == bool(hiding)
    assert w._trust["kappa_range"] == panel["kappa_range"] and "trust panel: computing" not in w._status
    assert_same(model, before)
    w.close()


def test_spread_panel_needs_random_planes_of_these_weights(case):
    model, x, y, _ = case
    ls = lw.Landscape(model, CE, (x, y))
    spread = ls.seed_spread(2, resolution=3, span=0.5)
    spread = lw.SeedSpread(spread.alphas, spread.betas, spread.seeds, spread.losses, spread.meta,
                           direction_kind="pca")  # a spread of directions not made from the seed alone
    with pytest.raises(ValueError, match="needs directions made from the seed alone"):
        ls.trust(spread)
    with pytest.raises(TypeError, match="an lw.Surface .* or an lw.SeedSpread"):
        ls.trust(spread.median)


def test_trust_must_be_a_bool(case):
    model, x, y, _ = case
    with pytest.raises(TypeError, match="trust must be True or False"):
        lw.SurfaceWidget(lw.Landscape(model, CE, (x, y)), trust="yes")


def test_dashboard_keeps_the_panel_under_the_plane(case):
    """With or without a spectrum view the panel is under the plane; the spectrum view shows that same panel."""
    model, x, y, _ = case
    ls = lw.Landscape(model, CE, (x, y))
    d = lw.Dashboard(ls, resolution=5).wait(timeout=300)
    assert d.surface.trust is not None and d.surface._trust["kappa"] == d.surface.trust["kappa"]
    for key in ("kappa", "lambda_max", "lambda_min", "eig_ratio", "trace_over_n", "hides_saddle"):
        assert d.spectrum.trust[key] == d.surface.trust[key], key
    alone = lw.Dashboard(ls, resolution=5, spectrum=False).wait(timeout=300)
    assert alone.surface.trust["kappa"] == pytest.approx(d.spectrum.trust["kappa"], rel=1e-9)
    d.close()
    alone.close()


def test_the_hessian_facts_of_the_weights_are_computed_once(case):
    """A second plane's trust panel at the same weights costs only its two curvature products: lambda_max,
    lambda_min and the trace are kept per weights fingerprint (and equal a fresh computation); new weights, a
    looser-than-asked earlier panel or another seed compute them again."""
    model, x, y, _ = case
    ls = lw.Landscape(model, CE, (x, y))
    first = ls.trust(ls.plane(resolution=3, seed=0, progress=False), trace_samples=10, progress=False)
    second = ls.trust(ls.plane(resolution=3, seed=1, progress=False), trace_samples=10, progress=False)
    assert not first["reused_hessian_facts"] and second["reused_hessian_facts"] and second["hvps"] == 2
    fresh = lw.Landscape(model, CE, (x, y)).trust(ls.plane(resolution=3, seed=1, progress=False), trace_samples=10,
                                                  progress=False)
    for key in ("lambda_max", "lambda_min", "trace", "trace_stderr", "kappa"):
        assert second[key] == fresh[key], key
    assert not ls.trust(ls.plane(resolution=3, seed=1, progress=False), trace_samples=20,
                        progress=False)["reused_hessian_facts"]  # more samples than any earlier panel
    assert not ls.trust(ls.plane(resolution=3, seed=1, progress=False), trace_samples=10, seed=5,
                        progress=False)["reused_hessian_facts"]
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    moved = ls.trust(ls.plane(resolution=3, seed=1, progress=False), trace_samples=10, progress=False)
    assert not moved["reused_hessian_facts"] and moved["lambda_max"] != second["lambda_max"]


def test_the_first_panel_arrives_as_it_grows(case):
    """The widget's first trust panel shows the kappas first, then the eigenvalues, then everything; each step
    equals the final panel's values."""
    model, x, y, _ = case
    w = lw.SurfaceWidget(lw.Landscape(model, CE, (x, y)), resolution=5)
    steps = []
    w.observe(lambda c: steps.append(dict(c["new"])), names=["_trust"])
    try:
        w.seed = 1  # a new plane (its facts are cached now: the steps come at once, in the same order)
        w.wait()
        grown = [s for s in steps if s]
        assert [sorted(k for k in ("kappa", "lambda_max", "trace") if k in s) for s in grown] == [
            ["kappa"], ["kappa", "lambda_max"], ["kappa", "lambda_max", "trace"]]
        assert grown[0]["partial"] and grown[1]["partial"] and "partial" not in grown[2]
        assert grown[0]["kappa"] == grown[2]["kappa"] and grown[1]["lambda_max"] == grown[2]["lambda_max"]
    finally:
        w.close()


def test_new_weights_start_lanczos_from_the_last_eigenvectors(case):
    """After the weights move (a training step), the next panel's Lanczos starts from the previous panel's
    eigenvectors: the same eigenvalues as a cold start (both equal the dense Hessian's), in fewer products."""
    import copy

    from _hessian_cases import dense_hessian
    model, x, y, _ = case
    model = copy.deepcopy(model)
    ls = lw.Landscape(model, CE, (x, y))
    first = ls.trust(ls.plane(resolution=3, seed=0, progress=False), trace_samples=4, progress=False)
    assert not first["warm_start"]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.002)
    snap = snapshot(model)
    surf = ls.plane(resolution=3, seed=0, progress=False)
    warm = ls.trust(surf, trace_samples=4, progress=False)
    cold = lw.Landscape(model, CE, (x, y)).trust(surf, trace_samples=4, progress=False)
    assert warm["warm_start"] and not warm["reused_hessian_facts"] and not cold["warm_start"]
    eig = np.linalg.eigvalsh(dense_hessian(model, CE, x, y))
    for panel in (warm, cold):
        assert panel["lambda_max"] == pytest.approx(eig[-1], rel=1e-5)
        assert panel["lambda_min"] == pytest.approx(eig[0], rel=1e-5, abs=1e-5 * abs(eig[-1]))
    assert warm["hvps"] < cold["hvps"], (warm["hvps"], cold["hvps"])
    assert_same(model, snap)


def test_a_warm_start_must_be_a_vector_of_the_parameters():
    from landscape_widgets.hessian.lanczos import extreme_eigenpairs

    class Diagonal:  # H = diag(1..40): a Lanczos operator without a model
        num_parameters, hvps, device = 40, 0, torch.device("cpu")

        def matvec(self, v):
            self.hvps += 1
            return torch.arange(1, 41, dtype=torch.float64) * v

    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="v0 must be a finite, nonzero vector of the 40 parameters"):
        extreme_eigenpairs(Diagonal(), 1, "LA", rng=rng, v0=np.zeros(40))
    with pytest.raises(ValueError, match="v0 must be"):
        extreme_eigenpairs(Diagonal(), 1, "LA", rng=rng, v0=np.ones(39))
