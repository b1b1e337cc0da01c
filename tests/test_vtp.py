"""Surface.to_vtp: VTK XML PolyData read back with ElementTree and a decoder of VTK's inline formats written here,
compared with the surface's arrays (and, for a computed plane, with losses from explicit functional arithmetic)."""
import base64
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from scipy.interpolate import RegularGridInterpolator

import landscape_widgets as lw
from helpers import SmallNet, assert_same, direct_loss, small_data, snapshot

TYPES = {"Float32": "<f4", "Float64": "<f8", "Int64": "<i8", "UInt8": "u1"}


def decode(el):
    """One DataArray: ascii text, or VTK's inline binary (base64 UInt64 byte count, then base64 of the bytes)."""
    dtype = np.dtype(TYPES[el.get("type")])
    text = (el.text or "").strip()
    if el.get("format") == "ascii":
        return np.array([float(t) for t in text.split()], dtype=dtype)
    assert el.get("format") == "binary"
    nbytes = int(np.frombuffer(base64.b64decode(text[:12]), "<u8")[0])  # 8 bytes -> 12 base64 characters
    raw = base64.b64decode(text[12:])
    assert len(raw) == nbytes
    return np.frombuffer(raw, dtype)


def read_vtp(path):
    root = ET.parse(path).getroot()
    assert (root.get("type"), root.get("byte_order"), root.get("header_type")) == ("PolyData", "LittleEndian",
                                                                                   "UInt64")
    pieces = []
    for piece in root.find("PolyData").findall("Piece"):
        out = {"n": int(piece.get("NumberOfPoints")),
               "counts": {k: int(piece.get(f"NumberOf{k}")) for k in ("Verts", "Lines", "Strips", "Polys")},
               "point_data": {el.get("Name"): decode(el) for el in piece.find("PointData")},
               "cell_data": {el.get("Name"): decode(el) for el in piece.find("CellData")}}
        pts = piece.find("Points/DataArray")
        assert pts.get("NumberOfComponents") == "3"
        out["points"] = decode(pts).reshape(-1, 3)
        out["dtype"] = pts.get("type")
        for kind in ("Polys", "Lines"):
            el = piece.find(kind)
            if el is not None:
                arrays = {a.get("Name"): decode(a) for a in el}
                out[kind] = (arrays["connectivity"], arrays["offsets"])
        pieces.append(out)
    return pieces


def grid_surface(nx=6, ny=4, path=None):
    a, b = np.linspace(-1.0, 1.5, nx), np.linspace(-0.5, 1.0, ny)
    A, B = np.meshgrid(a, b, indexing="ij")
    losses = 0.3 + 2.0 * (A - 0.3) ** 2 + (B + 0.1) ** 2 + 0.7 * A * B
    s = lw.Surface(a, b, losses, path=path)
    s.metrics = {"accuracy": 1.0 / (1.0 + losses), "error": losses / 7}
    return s


def expected_grid(s, z):
    """Points (alpha_i, beta_j, z_ij) with index j * nx + i and the quads (k, k+1, k+nx+1, k+nx): h52vtp's."""
    nx, ny = len(s.alphas), len(s.betas)
    points, quads = [], []
    for j in range(ny):
        for i in range(nx):
            points.append((s.alphas[i], s.betas[j], z[i, j]))
    for j in range(ny - 1):
        for i in range(nx - 1):
            k = j * nx + i
            quads.append((k, k + 1, k + nx + 1, k + nx))
    return np.array(points), np.array(quads)


def point_values(s, grid):
    return np.array([grid[i, j] for j in range(len(s.betas)) for i in range(len(s.alphas))])


@pytest.mark.parametrize("fmt", ["binary", "ascii"])
def test_points_polygons_and_point_data_equal_the_surface(tmp_path, fmt):
    s = grid_surface()
    written = s.to_vtp(tmp_path / "plane", format=fmt)
    assert written == str(tmp_path / "plane.vtp")
    (piece,) = read_vtp(written)
    points, quads = expected_grid(s, s.losses)
    assert piece["dtype"] == "Float32" and piece["n"] == len(points)
    np.testing.assert_array_equal(piece["points"], points.astype(np.float32))  # exact: one float32 rounding
    conn, offsets = piece["Polys"]
    np.testing.assert_array_equal(conn, quads.ravel())
    np.testing.assert_array_equal(offsets, 4 * np.arange(1, len(quads) + 1))
    assert piece["counts"] == {"Verts": 0, "Lines": 0, "Strips": 0, "Polys": len(quads)}
    pd = piece["point_data"]
    assert list(pd) == ["zvalue", "loss", "accuracy", "error", "finite"]
    for name, grid in (("zvalue", s.losses), ("loss", s.losses), ("accuracy", s.metrics["accuracy"]),
                       ("error", s.metrics["error"])):
        np.testing.assert_array_equal(pd[name], point_values(s, grid).astype(np.float32))
    np.testing.assert_array_equal(pd["finite"], 1)
    np.testing.assert_allclose(piece["cell_data"]["averaged zvalue"], points[quads, 2].mean(axis=1), rtol=1e-6)


def test_float64_is_exact_and_triangles_split_each_quad(tmp_path):
    s = grid_surface(5, 3)
    (piece,) = read_vtp(s.to_vtp(tmp_path / "plane.vtp", dtype="float64", cells="triangle"))
    points, quads = expected_grid(s, s.losses)
    assert piece["dtype"] == "Float64"
    np.testing.assert_array_equal(piece["points"], points)
    np.testing.assert_array_equal(piece["point_data"]["accuracy"], point_values(s, s.metrics["accuracy"]))
    conn, offsets = piece["Polys"]
    tris = [t for q in quads for t in ((q[0], q[1], q[2]), (q[0], q[2], q[3]))]
    np.testing.assert_array_equal(conn, np.ravel(tris))
    np.testing.assert_array_equal(offsets, 3 * np.arange(1, len(tris) + 1))


def test_zmax_clips_then_log_as_h52vtp(tmp_path):
    s = grid_surface()
    zmax = float(np.median(s.losses))
    (piece,) = read_vtp(s.to_vtp(tmp_path / "clip", zmax=zmax, log=True, dtype="float64"))
    z = np.log(np.minimum(s.losses, zmax) + 0.1)  # h52vtp: z[z > zmax] = zmax; z = np.log(z + 0.1)
    points, _ = expected_grid(s, z)
    np.testing.assert_allclose(piece["points"], points, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(piece["point_data"]["zvalue"], point_values(s, z), rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(piece["point_data"]["loss"], point_values(s, s.losses))  # unclipped
    (clipped,) = read_vtp(s.to_vtp(tmp_path / "clip-only", zmax=zmax, dtype="float64"))
    assert clipped["points"][:, 2].max() == zmax and clipped["point_data"]["loss"].max() == s.losses.max()
    (metric,) = read_vtp(s.to_vtp(tmp_path / "acc", values="accuracy", dtype="float64"))
    np.testing.assert_array_equal(metric["points"][:, 2], point_values(s, s.metrics["accuracy"]))


def test_non_finite_points_stay_as_data_and_their_cells_are_left_out(tmp_path):
    s = grid_surface()
    nx = len(s.alphas)
    s.losses[2, 1], s.losses[4, 2] = np.nan, np.inf
    (piece,) = read_vtp(s.to_vtp(tmp_path / "holes", dtype="float64"))
    bad = {1 * nx + 2, 2 * nx + 4}
    _, quads = expected_grid(s, s.losses)
    keep = [q for q in quads if not bad & set(q)]
    assert len(keep) == len(quads) - 8  # each interior point touches four cells, none shared here
    np.testing.assert_array_equal(piece["Polys"][0], np.ravel(keep))
    loss = piece["point_data"]["loss"]
    assert np.isnan(loss[1 * nx + 2]) and loss[2 * nx + 4] == np.inf
    finite = np.isfinite(s.losses)
    np.testing.assert_array_equal(piece["point_data"]["finite"], point_values(s, finite).astype(np.uint8))
    top = s.losses[finite].max()
    assert piece["points"][1 * nx + 2, 2] == top and piece["points"][2 * nx + 4, 2] == top
    assert np.isfinite(piece["points"]).all()
    assert np.isnan(piece["point_data"]["zvalue"][[1 * nx + 2, 2 * nx + 4]]).all()
    # with zmax, +inf is clipped like every other large loss and drawn; NaN is not
    (clipped,) = read_vtp(s.to_vtp(tmp_path / "clipped", zmax=3.0, format="ascii", dtype="float64"))
    assert clipped["points"][2 * nx + 4, 2] == 3.0 and clipped["point_data"]["loss"][2 * nx + 4] == np.inf
    assert len(clipped["Polys"][1]) == len(quads) - 4


def test_the_path_is_a_second_piece_on_the_interpolated_surface(tmp_path):
    track = np.array([[1.2, 0.9], [0.9, 0.6], [0.5, 0.4], [2.0, 0.2], [0.1, 0.05], [0.0, 0.0]])  # 4th: off the grid
    s = grid_surface(path=track)
    surface, path = read_vtp(s.to_vtp(tmp_path / "with-path", dtype="float64", zmax=3.0))
    z = np.minimum(s.losses, 3.0)
    on = RegularGridInterpolator((s.alphas, s.betas), z)
    inside = np.array([True, True, True, False, True, True])
    np.testing.assert_array_equal(path["points"][:, :2], track)
    np.testing.assert_allclose(path["points"][inside, 2], on(track[inside]), rtol=1e-12)
    loss = RegularGridInterpolator((s.alphas, s.betas), s.losses)(track[inside])
    np.testing.assert_allclose(path["point_data"]["loss"][inside], loss, rtol=1e-12)
    assert np.isnan(path["point_data"]["loss"][3]) and path["point_data"]["finite"].tolist() == [1, 1, 1, 0, 1, 1]
    conn, offsets = path["Lines"]
    assert conn.tolist() == [0, 1, 2, 4, 5] and offsets.tolist() == [3, 5]
    assert path["counts"]["Lines"] == 2 and list(path["point_data"]) == list(surface["point_data"])
    (alone,) = read_vtp(s.to_vtp(tmp_path / "no-path", with_path=False))
    assert alone["n"] == surface["n"]


def test_a_computed_plane_exports_its_exact_losses_and_loads_back_identically(tmp_path):
    model, (x, y) = SmallNet(seed=3), small_data(24)
    model.train()
    before, rng = snapshot(model), torch.get_rng_state()
    surf = lw.Landscape(model, torch.nn.CrossEntropyLoss(), (x, y)).plane(resolution=(4, 3), progress=False)
    first = surf.to_vtp(tmp_path / "computed", dtype="float64")
    assert_same(model, before)
    assert torch.equal(torch.get_rng_state(), rng)
    (piece,) = read_vtp(first)
    d1, d2 = surf.directions
    params = {n: p.detach() for n, p in model.named_parameters()}
    nx = len(surf.alphas)
    for j, b in enumerate(surf.betas):
        for i, a in enumerate(surf.alphas):
            ref = direct_loss(model, {n: p + a * d1[n] + b * d2[n] for n, p in params.items()}, x, y)
            assert piece["points"][j * nx + i].tolist() == pytest.approx([a, b, ref], rel=1e-5, abs=1e-6)
    again = lw.load(surf.save(tmp_path / "computed.npz")).to_vtp(tmp_path / "loaded", dtype="float64")
    with open(first, "rb") as f1, open(again, "rb") as f2:
        assert f1.read() == f2.read()


@pytest.mark.parametrize("bad, match", [({"zmax": "10"}, "zmax='10'"), ({"zmax": float("inf")}, "finite number"),
                                        ({"format": "xml"}, "'binary', 'ascii'"),
                                        ({"cells": "hex"}, "'quad', 'triangle'"),
                                        ({"dtype": "float16"}, "'float32', 'float64'"),
                                        ({"log": "yes"}, "True or False"),
                                        ({"values": "acc"}, "'loss', 'accuracy', 'error'")])
def test_bad_options_say_what_to_pass(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        grid_surface().to_vtp(tmp_path / "bad", **bad)
    assert not list(tmp_path.iterdir())


def test_a_line_of_points_is_no_surface(tmp_path):
    with pytest.raises(ValueError, match="2 x 2"):
        lw.Surface([0.0, 1.0], [0.5], np.ones((2, 1))).to_vtp(tmp_path / "line")
