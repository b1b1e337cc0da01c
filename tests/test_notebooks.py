"""Execute the shipped notebooks with nbclient (as CI does) and check the widget state they leave behind against
an independent computation in plain torch."""
from __future__ import annotations

import base64
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

pytestmark = pytest.mark.slow


def execute(name, tmp_path, monkeypatch):
    """Run a copy of ``notebooks/<name>`` in ``tmp_path`` (files it writes stay out of the checkout)."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    shutil.copy(NOTEBOOKS / name, tmp_path / name)
    # the kernel inherits the environment: the checkout's package is importable without `pip install -e .`
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    # nbclient runs in a child process: in this one it leaves an asyncio loop marked as running, which later
    # tests (and the widgets' "inside a kernel?" check) would see
    script = ("import nbformat, nbclient, sys; nb = nbformat.read(sys.argv[1], as_version=4); "
              "nbclient.NotebookClient(nb, timeout=300, kernel_name='python3', "
              "resources={'metadata': {'path': sys.argv[2]}}).execute(); nbformat.write(nb, sys.argv[1])")
    del nbclient
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / name), str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return nbformat.read(tmp_path / name, as_version=4)


def widgets(nb, anywidget_id=None, model_name=None):
    """The stored widget models, with their binary buffers decoded into the state as bytes."""
    state = nb.metadata["widgets"][WIDGET_STATE]["state"]
    out = []
    for model_id, model in state.items():
        s = copy.deepcopy(model["state"])
        s["__id"] = model_id
        for buf in model.get("buffers", []):
            assert buf["encoding"] == "base64"
            target = s
            for key in buf["path"][:-1]:
                target = target[key]
            target[buf["path"][-1]] = base64.b64decode(buf["data"])
        if anywidget_id and s.get("_anywidget_id", "").rsplit(".", 1)[-1] != anywidget_id:
            continue
        if model_name and model["model_name"] != model_name:
            continue
        out.append(s)
    return out


def f32(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)


def trained_digits_mlp():
    """The quickstart's model, trained here again: training is deterministic (private generators)."""
    from landscape_widgets import examples
    x, y = examples.digits()
    model = examples.digits_mlp(seed=0)
    init = copy.deepcopy(model.state_dict())
    examples.train(model, (x, y), epochs=30)
    return model, init, x, y


def plain_loss(model, state, x, y) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(torch.func.functional_call(model, state, (x,)), y))


def outputs_text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_quickstart_runs_and_stores_widget_state(tmp_path, monkeypatch):
    nb = execute("quickstart.ipynb", tmp_path, monkeypatch)
    (surface,) = widgets(nb, "SurfaceWidget")
    (curve,) = widgets(nb, "CurveWidget")
    assert surface["_view"] == "surface" and surface["_state"] == "done" and surface["error"] == ""
    assert surface["_shape"] == [21, 21]
    losses, alphas, betas = f32(surface["_losses"]).reshape(21, 21), f32(surface["_alphas"]), f32(surface["_betas"])
    np.testing.assert_allclose(alphas, np.linspace(-1, 1, 21), atol=1e-6)
    np.testing.assert_allclose(betas, np.linspace(-1, 1, 21), atol=1e-6)
    assert np.isfinite(losses).all() and (losses > 0).all()

    model, init, x, y = trained_digits_mlp()
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # the centre of the plane is the trained model itself
    np.testing.assert_allclose(losses[10, 10], plain_loss(model, trained, x, y), rtol=1e-4)
    assert losses[10, 10] == losses.min()

    assert curve["_view"] == "curve" and curve["_state"] == "done" and curve["error"] == ""
    assert [c["label"] for c in curve["_curves"]] == ["interpolation", "random line"]
    interp = curve["_curves"][0]
    a, l = f32(interp["alphas"]), f32(interp["losses"])
    np.testing.assert_allclose(a, np.linspace(-0.5, 1.5, 51), atol=1e-6)
    # theta(a) = (1 - a) theta_init + a theta_trained, evaluated independently at a few alphas
    for i in (0, 12, 25, 50):
        state = {k: (1 - a[i]) * init[k] + a[i] * trained[k] for k in trained}
        np.testing.assert_allclose(l[i], plain_loss(model, state, x, y), rtol=2e-4, atol=1e-6)
    assert len(f32(curve["_curves"][1]["losses"])) == 51

    text = outputs_text(nb)
    assert "surface (21, 21)" in text and "curve (51,)" in text
    assert (tmp_path / "quickstart-surface.html").stat().st_size > 100_000  # the snapshot, bundle inline


def test_sidepanel_runs_with_the_widget_in_a_sidecar(tmp_path, monkeypatch):
    nb = execute("sidepanel.ipynb", tmp_path, monkeypatch)
    (surface,) = widgets(nb, "SurfaceWidget")
    # the trait change from Python recomputed: the stored state is the new 31 x 31 grid
    assert surface["resolution"] == 31 and surface["_shape"] == [31, 31] and surface["_state"] == "done"
    assert len(f32(surface["_losses"])) == 31 * 31
    (panel,) = widgets(nb, model_name="SidecarModel")
    assert panel["title"] == "loss landscape"
    # (which widget the panel shows is checked in a real JupyterLab, tests/browser/test_jupyterlab.py: nbclient
    # captures only OutputModel, not the sidecar's own model)
    assert "(31, 31)" in outputs_text(nb)


def test_mode_connectivity_runs_and_its_curve_removes_the_barrier(tmp_path, monkeypatch):
    import landscape_widgets as lw
    from landscape_widgets import examples

    nb = execute("mode_connectivity.ipynb", tmp_path, monkeypatch)
    (surface,) = widgets(nb, "SurfaceWidget")
    assert surface["_state"] == "done" and surface["error"] == "" and surface["_shape"] == [13, 13]
    plane, line, curve = (lw.load(tmp_path / f) for f in ("plane.npz", "line.npz", "connect.npz"))
    assert [m["label"] for m in surface["_marks"]] == plane.meta["models"]["labels"] == ["model", "model_b", "model_c"]
    np.testing.assert_allclose([m["loss"] for m in surface["_marks"]], plane.meta["models"]["losses"], rtol=1e-12)

    # the notebook's models as it saved them (training again here would round differently), in plain torch
    x, y = examples.digits(flat=False)
    saved = torch.load(tmp_path / "digits-cnns.pt")
    sa, sb = saved[0], saved[1]
    model = examples.digits_cnn(seed=0).eval()  # plain_loss runs it as it is: BatchNorm with its statistics
    own = [plain_loss(model, s, x, y) for s in (sa, sb)]
    np.testing.assert_allclose(line.meta["barrier_ends"], own, rtol=1e-4)
    np.testing.assert_allclose(plane.meta["models"]["losses"][:2], own, rtol=1e-4)
    # the line theta_a + a (theta_b - theta_a), BatchNorm statistics moved along (num_batches_tracked is not used)
    for i in (0, 5, 10, 20):
        a = line.alphas[i]
        state = {k: sa[k] + a * (sb[k] - sa[k]) if sa[k].is_floating_point() else sa[k] for k in sa}
        np.testing.assert_allclose(line.losses[i], plain_loss(model, state, x, y), rtol=2e-4, atol=1e-6)
    seg = (line.alphas >= 0) & (line.alphas <= 1)
    assert line.meta["barrier"] == pytest.approx(line.losses[seg].max() - np.mean(own), rel=1e-3)
    straight = np.array(curve.meta["line_losses"])
    assert curve.meta["line_barrier"] == pytest.approx(straight.max() - straight[[0, -1]].mean(), rel=1e-9)
    assert curve.meta["barrier"] == pytest.approx(curve.losses.max() - curve.losses[[0, -1]].mean(), rel=1e-9)
    assert line.meta["barrier"] > 0.3 and curve.meta["barrier"] < curve.meta["line_barrier"] / 3
    assert "barrier on the straight line" in outputs_text(nb)
