"""Results are values: every attribute a result is built with (arrays, metrics, meta, name -> tensor dicts such as
a line's direction, a connection's bend and a surface's directions, the trust panel) is set by its constructor and
comes back from ``save``/``lw.load`` as it was, for every registered kind; ``execution`` alone stays in the process
(its facts are in ``meta``).  The surface widget's later trust panel is a new Surface, not a change to the old one."""
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets import examples
from landscape_widgets.results import _REGISTRY, _jsonable

from _hessian_cases import classification_data, small_mlp
from _trajdata import trained

CE = nn.CrossEntropyLoss()
PROCESS_ONLY = {"execution"}  # what ran in this process: None on a loaded result, its facts in meta
TENSOR_DICTS = {"direction", "bend"}

pytestmark = pytest.mark.usefixtures("one_thread")


def accuracy(out, y):
    return (out.argmax(-1) == y).float().mean()


def as_saved(value):
    """``value`` as the file's JSON gives it back (lists for tuples, strings for non-finite floats)."""
    return json.loads(json.dumps(_jsonable(value)))


def assert_same_tensors(a, b, what):
    assert (a is None) == (b is None), what
    if a is None:
        return
    assert list(a) == list(b), what  # the same names in the same order
    for name in a:
        assert b[name].dtype == a[name].dtype and torch.equal(a[name], b[name]), (what, name)


def assert_same_value(a, b, what):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype, what
        np.testing.assert_array_equal(b, a, err_msg=what)
    elif isinstance(a, float):
        assert isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b))), what
    elif a is None:
        assert b is None, what
    else:
        assert b == as_saved(a), what


def assert_round_trip(result, tmp_path, name):
    """Save ``result``, load it back, and compare every attribute the result was built with."""
    loaded = lw.load(result.save(tmp_path / name))
    assert type(loaded) is type(result)
    # what either holds (a class default such as ``metrics`` of a kind without them counts as held)
    names = {k for k in (*vars(result), *vars(loaded)) if k not in PROCESS_ONLY and not k.startswith("_")}
    for attr in names:
        assert hasattr(result, attr) and hasattr(loaded, attr), f"{name}.{attr}"  # none lost, none made up
    built = {k: getattr(result, k) for k in names}
    back = {k: getattr(loaded, k) for k in names}
    for attr, value in built.items():
        what = f"{name}.{attr}"
        if attr == "meta":
            assert back["meta"] == as_saved(value), what
        elif attr == "metrics":
            assert list(back["metrics"]) == list(value), what
            for k, v in value.items():
                np.testing.assert_array_equal(back["metrics"][k], v, err_msg=f"{what}[{k!r}]")
        elif attr in TENSOR_DICTS:
            assert_same_tensors(value, back[attr], what)
        elif attr == "directions":
            assert (value is None) == (back[attr] is None) and len(back[attr] or ()) == len(value or ()), what
            for k, (d, e) in enumerate(zip(value or (), back[attr] or ())):
                assert_same_tensors(d, e, f"{what}[{k}]")
        else:
            assert_same_value(value, back[attr], what)
    return loaded


@pytest.fixture(scope="module")
def hessian_ls():
    """A 160-parameter float64 MLP (with an eval-mode BatchNorm): Hessian results in a fraction of a second."""
    model = small_mlp()
    return lw.Landscape(model, CE, classification_data(model))


@pytest.fixture(scope="module")
def digits_pair():
    """Two digits MLPs (float32) and 200 samples."""
    x, y = examples.digits()
    return examples.digits_mlp(seed=0).eval(), examples.digits_mlp(seed=1).eval(), (x[:200], y[:200])


def test_every_registered_kind_is_covered():
    assert set(_REGISTRY) == {"Curve", "Surface", "SeedSpread", "Spectrum", "CurvatureMap", "Embedding"}


def test_curves_keep_their_direction_and_bend(digits_pair, tmp_path):
    a, b, data = digits_pair
    ls = lw.Landscape(a, CE, data, metrics={"accuracy": accuracy})

    interp = ls.interpolate(b, steps=4, progress=False)
    assert interp.direction is None and interp.bend is None  # set by the constructor, not left missing
    loaded = assert_round_trip(interp, tmp_path, "interpolate")
    assert loaded.direction is None and loaded.bend is None and list(loaded.metrics) == ["accuracy"]

    line = ls.line(steps=4, progress=False)
    assert line.direction is not None and line.bend is None
    loaded = assert_round_trip(line, tmp_path, "line")
    assert set(loaded.direction) == {n for n, _ in a.named_parameters()}
    assert loaded.direction["0.weight"].dtype == torch.float32

    towards = ls.line(direction=b, steps=3, progress=False)  # raw units: theta_b - theta
    loaded = assert_round_trip(towards, tmp_path, "line_to_model")
    for n, p in a.named_parameters():
        torch.testing.assert_close(loaded.direction[n], b.state_dict()[n] - p.detach(), rtol=0, atol=1e-6)

    curve = ls.connect(b, epochs=1, steps=3, progress=False)
    assert curve.bend is not None and curve.direction is None
    loaded = assert_round_trip(curve, tmp_path, "connect")
    # the loaded bend is a bend: passed back, it draws the same curve without training
    again = ls.connect(b, bend=loaded.bend, steps=3, progress=False)
    np.testing.assert_array_equal(again.losses, curve.losses)


def test_surfaces_with_and_without_a_trust_panel(hessian_ls, tmp_path):
    plain = hessian_ls.plane(resolution=3, span=0.5, progress=False)
    assert plain.trust is None and "trust" not in plain.meta
    loaded = assert_round_trip(plain, tmp_path, "plane")
    assert loaded.trust is None

    trusted = hessian_ls.plane(resolution=3, span=0.5, progress=False, trust=True)
    assert trusted.trust is not None and trusted.meta["trust"] is trusted.trust  # meta mirrors the attribute
    assert set(trusted.trust) >= {"kappa", "lambda_max", "lambda_min", "hides_saddle"}
    loaded = assert_round_trip(trusted, tmp_path, "plane_trust")
    assert loaded.trust == as_saved(trusted.trust) and loaded.meta["trust"] is loaded.trust
    # the loaded directions draw the same plane
    again = hessian_ls.plane(directions=loaded, resolution=3, progress=False)
    np.testing.assert_array_equal(again.losses, trusted.losses)


def test_with_trust_is_a_new_value(hessian_ls, tmp_path):
    surf = hessian_ls.plane(resolution=3, span=0.5, progress=False)
    panel = hessian_ls.trust(surf, progress=False)
    with_panel = surf.with_trust(panel)
    assert with_panel is not surf and surf.trust is None and "trust" not in surf.meta  # the old value is as it was
    assert with_panel.trust is panel and with_panel.meta["trust"] is panel
    assert with_panel.losses is surf.losses and with_panel.directions is surf.directions
    assert with_panel.execution is surf.execution and with_panel.direction_meta == surf.direction_meta
    failed = with_panel.with_trust(None, error="RuntimeError: no double backward")
    assert failed.trust is None and "trust" not in failed.meta
    assert failed.meta["trust_error"] == "RuntimeError: no double backward"
    assert "trust_error" not in failed.with_trust(panel).meta
    assert_round_trip(failed, tmp_path, "trust_error")
    assert_round_trip(with_panel, tmp_path, "with_trust")


def test_a_pca_plane_keeps_its_path_and_direction_record(tmp_path):
    model, traj, data = trained(epochs=3, n=200)
    ls = lw.Landscape(model, CE, data)
    surf = ls.plane(directions="pca", trajectory=traj, resolution=3, progress=False)
    assert surf.path is not None and surf.direction_meta is not None
    loaded = assert_round_trip(surf, tmp_path, "pca_plane")
    assert loaded.direction_meta == as_saved(surf.direction_meta)
    emb = traj.embed(method="pca")
    assert_round_trip(emb, tmp_path, "embedding")


def test_hessian_results_and_the_seed_spread(hessian_ls, tmp_path):
    spread = hessian_ls.seed_spread([0, 1], resolution=3, span=0.5)
    assert_round_trip(spread, tmp_path, "seed_spread")
    spectrum = hessian_ls.spectrum(k=2, bottom=1, runs=2, steps=10, trace_samples=9, progress=False)
    assert_round_trip(spectrum, tmp_path, "spectrum")
    surf = hessian_ls.plane(resolution=3, span=0.5, progress=False)
    cmap = hessian_ls.curvature_map(surf, resolution=2, progress=False)
    assert_round_trip(cmap, tmp_path, "curvature_map")


def test_bfloat16_tensors_come_back_exactly(tmp_path):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(torch.bfloat16)
    x, y = torch.randn(20, 4, generator=gen).to(torch.bfloat16), torch.randint(0, 3, (20,), generator=gen)
    ls = lw.Landscape(model, CE, (x, y))
    line = ls.line(steps=3, progress=False)
    assert line.direction["0.weight"].dtype == torch.bfloat16
    assert_round_trip(line, tmp_path, "bf16_line")
    assert_round_trip(ls.plane(resolution=2, progress=False), tmp_path, "bf16_plane")


def test_the_widget_puts_each_panel_on_a_new_surface(hessian_ls):
    w = lw.SurfaceWidget(hessian_ls, resolution=5, span=0.5, preview_samples=None)
    assert w.trust is not None and w.surface.trust is w.trust and w.surface.meta["trust"] is w.trust
    assert w._trust["kappa"] == w.trust["kappa"]  # what the front end receives: the panel itself
    first = w.surface
    w.seed = 1
    assert w.surface is not first and first.trust is not w.trust  # the earlier plane keeps its own panel
    assert w.surface.trust is w.trust
    # the curvature layer of the plane shown belongs to it, panel and all: shown again, nothing is recomputed
    w.show = "curvature"
    kept, shown = w.curvature_map, w.surface
    assert kept is not None and w.surface.trust is w.trust
    w.show = "loss"
    w.show = "curvature"
    assert w.curvature_map is kept and w.surface is shown
    # a new plane while the layer is shown: the plane, its panel, then its map, which is the panel's plane's
    w.seed = 2
    assert w.surface.trust is w.trust and w.curvature_map is not kept
    kept = w.curvature_map
    w.show = "loss"
    w.show = "curvature"
    assert w.curvature_map is kept


def test_typed_fields_come_from_files_that_hold_only_the_meta_record(tmp_path):
    """Files keep one JSON record: a file written before results had typed fields (its meta keys alone) loads with
    every field set from them, and a result's fields and its meta never disagree."""
    meta = {"kind": "plane", "direction_kind": "hessian", "model_sha256": "abc", "device": "cpu",
            "num_parameters": 7, "lambda_max": 2.5, "lambda_min": "-inf", "span_rule": "s = ...", "cosine": 0.0,
            "models": {"labels": ["model", "model_b"], "coords": [[0.0, 0.0], [1.0, 0.0]], "losses": [1.0, 2.0]},
            "data": {"num_samples": 8, "subset_of": 80}, "trust": {"kappa": [1.0, 2.0]}, "trust_error": None}
    a = np.linspace(-1, 1, 3)
    path = tmp_path / "old.npz"
    np.savez(path, __kind__=np.array("Surface"), __format__=np.array(1), __meta__=np.array(json.dumps(meta)),
             alphas=a, betas=a, losses=np.ones((3, 3)))
    surf = lw.load(path)
    assert surf.kind == "plane" and surf.direction_kind == "hessian" and surf.fingerprint == "abc"
    assert surf.curvatures == (2.5, -math.inf) and surf.span_rule == "s = ..." and surf.num_parameters == 7
    assert surf.models.labels == ["model", "model_b"] and surf.models.losses == [1.0, 2.0]
    assert surf.models == meta["models"] and surf.data["subset_of"] == 80 and surf.trust == {"kappa": [1.0, 2.0]}
    assert surf.meta == meta  # the record stays as the file holds it

    curve_meta = {"kind": "connect", "barrier": 0.5, "barrier_at": 0.4, "line_losses": [1.0, "nan", 3.0],
                  "line_barrier": 1.5}
    np.savez(tmp_path / "curve.npz", __kind__=np.array("Curve"), __meta__=np.array(json.dumps(curve_meta)),
             alphas=a, losses=np.ones(3))
    curve = lw.load(tmp_path / "curve.npz")
    assert curve.kind == "connect" and curve.barrier == 0.5 and curve.line_barrier == 1.5 and curve.models is None
    np.testing.assert_array_equal(curve.line_losses, [1.0, np.nan, 3.0])

    built = lw.Curve(a, np.ones(3), {"kind": "line"}, models=lw.results.Marks(["model", "model_b"], [0.0, 1.0]))
    assert built.meta["models"] == {"labels": ["model", "model_b"], "coords": [0.0, 1.0]} == built.models
    with pytest.raises(TypeError, match="has no field"):
        lw.Curve(a, np.ones(3), modles=None)
