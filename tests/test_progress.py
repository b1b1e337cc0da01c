"""Every call that can take more than a second shows progress: planes (tqdm), the Hessian calls (a tqdm bar of the
products with the stage), and a script that builds widgets (one line per state and stage)."""
import torch
from torch import nn

import landscape_widgets as lw
from _hessian_cases import classification_data, small_mlp
from landscape_widgets.widgets.status import status_log


def _ls():
    torch.manual_seed(0)
    model = small_mlp()
    x, y = classification_data(model)
    return lw.Landscape(model, nn.CrossEntropyLoss(), (x, y))


def test_spectrum_trust_and_hessian_directions_show_a_bar_of_products(capsys):
    ls = _ls()
    spec = ls.spectrum(k=2, bottom=1, density=False, trace_samples=4)
    err = capsys.readouterr().err
    assert "spectrum" in err and "HVP" in err and "top" in err
    surf = ls.plane(directions="hessian", resolution=3)
    err = capsys.readouterr().err
    assert "Hessian directions" in err and "lambda_min" in err
    ls.trust(surf, spectrum=spec)
    assert "trust panel" in capsys.readouterr().err


def test_progress_false_is_silent(capsys):
    ls = _ls()
    spec = ls.spectrum(k=2, bottom=1, density=False, trace_samples=4, progress=False)
    ls.trust(ls.plane(resolution=3, progress=False), spectrum=spec, progress=False)
    ls.plane(directions="hessian", resolution=3, progress=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_script_sees_each_widgets_state_and_stage():
    lines = []
    with status_log(lambda w, status: lines.append((w._view, status))):
        w = lw.SurfaceWidget(_ls(), resolution=11, trust=True)
    views = {v for v, _s in lines}
    assert views == {"surface"}
    assert any("preview" in s for _v, s in lines) and any(s.startswith("11×11 in") for _v, s in lines)
    assert len(lines) < 12  # one line per state or stage, not one per tile
    w.close()
