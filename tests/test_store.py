"""Resumable runs: SIGKILL mid-grid then resume, mismatched settings, corrupt and truncated tile files."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets import examples
from landscape_widgets.driver import run_tiles
from landscape_widgets.store import open_store

from helpers import SmallNet, direct_loss

ROOT = pathlib.Path(__file__).resolve().parents[1]
RES = (24, 16)  # 64-point tiles of 4 rows: 6 tiles


def _digits_landscape(n=300, seed=0):
    x, y = examples.digits()
    return lw.Landscape(examples.digits_mlp(seed=seed), nn.CrossEntropyLoss(), (x[:n], y[:n]), device="cpu")


def _tiles(store):
    return sorted(p.name for p in (pathlib.Path(store) / "tiles").glob("*.npz"))


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from test_store import _digits_landscape, RES
    ls = _digits_landscape()
    # slow enough that the parent can kill us between and during tiles
    ls.plane(resolution=RES, store=sys.argv[1], progress=False, callback=lambda tile: time.sleep(0.7))
    print("finished")
""")


@pytest.mark.slow
def test_sigkill_mid_grid_then_resume_computes_only_missing_tiles(tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(ROOT / "tests")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while len(_tiles(store)) < 2 if store.exists() else True:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the child wrote no tiles in 300 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {name: (store / "tiles" / name).stat().st_mtime_ns for name in _tiles(store)}
    assert 2 <= len(before) < 6, before

    seen = []
    ls = _digits_landscape()
    resumed = ls.plane(resolution=RES, store=store, progress=False, callback=seen.append)
    info = resumed.meta["store"]
    assert info["tiles_loaded"] == len(before) and info["tiles_computed"] == 6 - len(before)
    assert info["tiles_recovered"] == 0
    for name, mtime in before.items():  # finished tiles were read, not rewritten
        assert (store / "tiles" / name).stat().st_mtime_ns == mtime
    assert sorted((t.start, t.stop) for t in seen) == [(s, s + 64) for s in range(0, 384, 64)]
    assert seen[-1].done == 384
    fresh = ls.plane(resolution=RES, progress=False)
    np.testing.assert_allclose(resumed.losses, fresh.losses, rtol=1e-6)
    assert not list((store / "tiles").glob("*.tmp"))


def test_store_round_trip_and_independent_values(tmp_path, small):
    model, (x, y) = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    first = ls.plane(resolution=(6, 3), store=tmp_path / "s", progress=False)
    assert first.meta["store"]["tiles_computed"] == 1 and len(_tiles(tmp_path / "s")) == 1
    again = ls.plane(resolution=(6, 3), store=tmp_path / "s", progress=False)
    assert again.meta["store"]["tiles_loaded"] == 1 and again.meta["store"]["tiles_computed"] == 0
    np.testing.assert_array_equal(first.losses, again.losses)
    base = {n: p.detach() for n, p in model.named_parameters()}
    d1, d2 = first.directions
    a, b = first.alphas[4], first.betas[2]
    params = {n: base[n] + a * d1[n] + b * d2[n] for n in base}
    assert again.losses[4, 2] == pytest.approx(direct_loss(model, params, x, y), rel=1e-5)
    settings = json.loads((tmp_path / "s" / "run.json").read_text())["settings"]
    assert settings["kind"] == "plane" and settings["points"] == 18 and settings["data"]["num_samples"] == 40


def test_store_line_and_interpolate_resume(tmp_path, small):
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    line = ls.line(steps=9, store=tmp_path / "line", progress=False)
    assert ls.line(steps=9, store=tmp_path / "line", progress=False).meta["store"]["tiles_loaded"] == 5
    np.testing.assert_array_equal(line.losses, ls.line(steps=9, progress=False).losses)
    start = SmallNet(seed=2)
    cur = ls.interpolate(start, steps=5, store=tmp_path / "interp", progress=False)
    cur2 = ls.interpolate(start, steps=5, store=tmp_path / "interp", progress=False)
    assert cur2.meta["store"]["tiles_computed"] == 0
    np.testing.assert_array_equal(cur.losses, cur2.losses)
    with pytest.raises(ValueError, match="other settings.*buffers"):
        ls.interpolate(start, steps=5, store=tmp_path / "interp", buffers="model", progress=False)


def _change_weights(ls):
    with torch.no_grad():
        next(ls.model.parameters()).add_(1e-3)


@pytest.mark.parametrize("change, field", [
    (dict(seed=1), "directions_sha256"),
    (dict(resolution=(6, 4)), "points"),
    (dict(span=0.5), "coords_sha256"),
    (dict(normalization="layer"), "directions_sha256"),
    ("weights", "model_sha256"),
    ("data", "data"),
    ("loss", "loss_fn"),
])
def test_store_with_other_settings_is_refused(tmp_path, small, change, field):
    model, (x, y) = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
    ls.plane(resolution=(6, 3), store=tmp_path, progress=False)
    kwargs = dict(resolution=(6, 3), store=tmp_path, progress=False)
    if change == "weights":
        _change_weights(ls)
    elif change == "data":
        ls = lw.Landscape(model, nn.CrossEntropyLoss(), (x[:30], y[:30]), device="cpu")
    elif change == "loss":
        ls = lw.Landscape(model, nn.CrossEntropyLoss(label_smoothing=0.1), (x, y), device="cpu")
    else:
        kwargs.update(change)
    with pytest.raises(ValueError, match=rf"other settings \(.*{field}: stored"):
        ls.plane(**kwargs)


def _grid(tmp_path):
    ls = _digits_landscape(n=100)
    ref = ls.plane(resolution=(12, 16), store=tmp_path, progress=False)  # 3 tiles of 64
    return ls, ref, [tmp_path / "tiles" / n for n in _tiles(tmp_path)]


def test_corrupt_and_truncated_tiles_are_recomputed(tmp_path):
    ls, ref, (t0, t1, t2) = _grid(tmp_path)
    t0.write_bytes(t0.read_bytes()[:50])                   # truncated by a crash of the file system
    t1.write_bytes(b"\0" * 300)                            # garbage
    with np.load(t2) as z:                                 # a valid archive whose values do not match the checksum
        payload = {k: z[k] for k in z.files}
    payload["values"] = payload["values"] + 1.0
    with open(t2, "wb") as fh:
        np.savez(fh, **payload)
    with pytest.warns(RuntimeWarning, match="corrupt or truncated"):
        again = ls.plane(resolution=(12, 16), store=tmp_path, progress=False)
    assert again.meta["store"]["tiles_recovered"] == 3 and again.meta["store"]["tiles_computed"] == 3
    np.testing.assert_allclose(again.losses, ref.losses, rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # repaired: the next run loads everything silently
        assert ls.plane(resolution=(12, 16), store=tmp_path, progress=False).meta["store"]["tiles_loaded"] == 3


def test_unreadable_run_json_is_rewritten_and_tiles_kept(tmp_path):
    ls, ref, _ = _grid(tmp_path)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="run.json is unreadable"):
        again = ls.plane(resolution=(12, 16), store=tmp_path, progress=False)
    assert again.meta["store"]["tiles_loaded"] == 3
    np.testing.assert_array_equal(again.losses, ref.losses)


def test_tile_of_another_run_is_refused(tmp_path):
    ls, _ref, tiles = _grid(tmp_path / "a")
    ls.plane(resolution=(12, 16), seed=3, store=tmp_path / "b", progress=False)
    foreign = tmp_path / "b" / "tiles" / tiles[0].name
    foreign.write_bytes(tiles[0].read_bytes())
    with pytest.raises(ValueError, match="of another run"):
        ls.plane(resolution=(12, 16), seed=3, store=tmp_path / "b", progress=False)


def test_store_argument_errors(tmp_path, small):
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        ls.plane(resolution=3, store=tmp_path / "file", progress=False)
    with pytest.raises(TypeError, match="store must be a directory path"):
        ls.plane(resolution=3, store=42, progress=False)


def test_run_tiles_cancel_keeps_finished_tiles(tmp_path):
    store = open_store(tmp_path, {"kind": "test"})
    calls = []

    def compute(todo):
        for s, e in todo:
            calls.append(s)
            yield s, e, np.arange(s, e, dtype=float)

    stop = [False]

    def on_tile(tile):
        stop[0] = True

    with pytest.raises(lw.Cancelled):
        run_tiles(10, 3, compute, on_tile=on_tile, cancel=lambda: stop[0], store=store)
    assert calls == [0] and _tiles(tmp_path) == ["000000000-000000003.npz"]
    store = open_store(tmp_path, {"kind": "test"})
    out = run_tiles(10, 3, compute, store=store)
    np.testing.assert_array_equal(out, np.arange(10.0))
    assert calls == [0, 3, 6, 9] and store.loaded == [(0, 3)]


def test_store_with_progress_bar_and_cached_callback(tmp_path, small, capsys):
    model, data = small
    ls = lw.Landscape(model, nn.CrossEntropyLoss(), data, device="cpu")
    ls.line(steps=9, store=tmp_path, progress=True)
    seen = []
    again = ls.line(steps=9, store=tmp_path, progress=True, callback=seen.append)
    assert [t.start for t in seen] == [0, 2, 4, 6, 8] and seen[-1].done == 9  # cached tiles still reach the widget
    np.testing.assert_array_equal(np.concatenate([t.values for t in seen]), again.losses)
