"""The Dashboard keeps the random plane's trust panel under the plane, and each quantity it shows twice is either
the same value or labelled with what it is: the spectrum view repeats the plane's own panel, and its own
tr(H)/N (more products) names its estimator and products like the panel's."""
from __future__ import annotations

import copy

import pytest
from torch import nn

import landscape_widgets as lw
from landscape_widgets import examples

SPECTRUM = {"k": 2, "bottom": 1, "density": False}


@pytest.fixture(scope="module")
def dash():
    x, y = examples.digits()
    x, y = x[:300], y[:300]
    model = examples.digits_mlp(seed=0)
    start = copy.deepcopy(model.state_dict())
    examples.train(model, (x, y), epochs=5)
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    d = lw.Dashboard(ls, start=start, resolution=5, spectrum_options=SPECTRUM).wait(timeout=300)
    yield d
    d.close()


def test_the_panel_stays_under_the_plane(dash):
    assert dash.error == ""
    panel = dash.surface.trust
    assert panel is not None and dash.surface.surface.trust is panel
    assert dash.surface._trust["kappa"] == panel["kappa"] and "error" not in dash.surface._trust
    assert dash.surface._trust["saddle_threshold"] == panel["saddle_threshold"]


def test_the_spectrum_view_repeats_the_same_panel(dash):
    plane, shown = dash.surface.trust, dash.spectrum.trust
    for key in ("kappa", "lambda_max", "lambda_min", "lambda_min_error", "eig_ratio", "trace_over_n",
                "trace_over_n_stderr", "trace_method", "trace_samples", "hides_saddle"):
        assert shown[key] == plane[key], key
    assert dash.spectrum._trust["of"] == "Filter-normalized random plane"


def test_each_trace_is_labelled_by_its_estimator_and_products(dash):
    plane, spectrum = dash.surface._trust, dash.spectrum._trace
    assert (plane["trace_method"], plane["trace_samples"]) == ("hutch++", 30)
    assert (spectrum["method"], spectrum["samples"]) == ("hutch++", dash.spectrum.spectrum.meta["trace_samples"])
    if spectrum["per_parameter"] != plane["trace_over_n"]:  # two values of tr(H)/N: two labels
        assert (spectrum["method"], spectrum["samples"]) != (plane["trace_method"], plane["trace_samples"])
    # the two estimates agree within their error bars
    diff = abs(spectrum["per_parameter"] - plane["trace_over_n"])
    assert diff < 4 * (spectrum["stderr_per_parameter"] ** 2 + plane["trace_over_n_stderr"] ** 2) ** 0.5
    # the spectrum's lambda_max (tol 1e-6) lies within the panel's stated error bound of the panel's (tol 1e-3)
    assert abs(dash.spectrum._top[0] - plane["lambda_max"]) <= plane["lambda_max_error"]
    assert abs(dash.spectrum._bottom[0] - plane["lambda_min"]) <= plane["lambda_min_error"]


def test_a_spectrum_following_a_plain_surface_takes_its_own_numbers(dash):
    ls = dash.surface._ls
    w = lw.SpectrumWidget(ls, surface=dash.surface.surface, **SPECTRUM).wait(timeout=300)
    try:
        assert w.trust["lambda_max"] == w.spectrum.lambda_max and w.trust["trace"] == w.spectrum.trace
        assert w.trust["trace_samples"] == w._trace["samples"] and w.trust["tol"] == w.spectrum.meta["tol"]
    finally:
        w.close()
