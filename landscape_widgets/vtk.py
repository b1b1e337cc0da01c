"""A :class:`~landscape_widgets.Surface` as a VTK XML PolyData file (``.vtp``) for ParaView, as Li et al.'s
``h52vtp.py`` (arXiv 1712.09913, the rendered surfaces of Fig. 1 and 5) writes it, without a vtk dependency.

The grid's points are ``(alpha_i, beta_j, z_ij)``, point ``k = j * len(alphas) + i`` (alpha fastest, h52vtp's
order), with the height ``z = values`` clipped at ``zmax`` and then, with ``log=True``, ``z = ln(z + 0.1)``
(h52vtp's order and offset).  The cells are the grid's quads ``(k, k+1, k+nx+1, k+nx)`` (or two triangles each).
Point data: ``zvalue`` (the height, h52vtp's array), ``loss`` and every array of ``surface.metrics`` as computed
(unclipped), and ``finite`` (1 where the height is finite); cell data: ``averaged zvalue`` (the mean height of a
cell's corners, as h52vtp; of a polyline's points in the path's piece).

Non-finite values (h52vtp never sees them): a point whose height is NaN or inf (after clipping, so +inf with
``zmax`` is drawn at ``zmax``) keeps its index and its NaN/inf point data, but gets the largest finite height as
its z and belongs to no cell: the cells touching it are left out, so ParaView shows a hole where the loss diverged.
The optional second piece is ``surface.path`` as a polyline at the heights interpolated bilinearly on the grid
(its point data interpolated likewise; points outside the grid or in a cell with a non-finite corner are not
connected).
"""
from __future__ import annotations

import base64
import os
from xml.sax.saxutils import quoteattr

import numpy as np

from .plot import values_of

FORMATS = ("binary", "ascii")
CELLS = ("quad", "triangle")
DTYPES = {"float32": ("Float32", "<f4", "%.9g"), "float64": ("Float64", "<f8", "%.17g")}
LOG_OFFSET = 0.1  # h52vtp: np.log(z + 0.1)


def heights(values, *, log=False, zmax=None):
    """The points' z for ``values``: clipped at ``zmax`` (None: no clipping), then ``ln(z + 0.1)`` with ``log``."""
    z = np.asarray(values, dtype=np.float64).copy()
    if zmax is not None:
        z = np.minimum(z, zmax)  # NaN stays NaN
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.log(z + LOG_OFFSET)
    return z


def _check(log, zmax, format, cells, dtype):
    if not isinstance(log, (bool, np.bool_)):
        raise ValueError(f"log={log!r} must be True or False")
    if zmax is not None and (isinstance(zmax, bool) or not isinstance(zmax, (int, float, np.integer, np.floating))
                             or not np.isfinite(zmax)):
        raise ValueError(f"zmax={zmax!r} must be a finite number (the height to clip at) or None")
    for value, name, allowed in ((format, "format", FORMATS), (cells, "cells", CELLS), (dtype, "dtype", DTYPES)):
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not known; pass one of {', '.join(map(repr, allowed))}")


class _Writer:
    def __init__(self, format, dtype):
        self.format = format
        self.float_type, self.float_code, self.float_fmt = DTYPES[dtype]

    def array(self, name, data, vtk_type, code, fmt, components=1, indent=8):
        data = np.ascontiguousarray(np.asarray(data).astype(code, copy=False).ravel())
        head = (f'{" " * indent}<DataArray type="{vtk_type}" Name={quoteattr(name)} '
                f'NumberOfComponents="{components}" format="{self.format}">')
        if self.format == "binary":
            # VTK's inline binary: base64 of the UInt64 byte count, then base64 of the bytes, each padded alone
            body = (base64.b64encode(np.array([data.nbytes], "<u8").tobytes())
                    + base64.b64encode(data.tobytes())).decode("ascii")
        else:
            body = " ".join(fmt % v for v in data.tolist())
        return f"{head}\n{' ' * (indent + 2)}{body}\n{' ' * indent}</DataArray>\n"

    def floats(self, name, data, components=1):
        return self.array(name, data, self.float_type, self.float_code, self.float_fmt, components)

    def ints(self, name, data):
        return self.array(name, data, "Int64", "<i8", "%d")

    def piece(self, points, point_data, cell_data, kind, connectivity, offsets):
        counts = {"Verts": 0, "Lines": 0, "Strips": 0, "Polys": 0}
        counts[kind] = len(offsets)
        out = [f'    <Piece NumberOfPoints="{len(points)}" '
               + " ".join(f'NumberOf{k}="{v}"' for k, v in counts.items()) + ">\n",
               '      <PointData Scalars="zvalue">\n']
        for name, (data, integer) in point_data.items():
            out.append(self.array(name, data, "UInt8", "<u1", "%d") if integer else self.floats(name, data))
        out.append("      </PointData>\n      <CellData>\n")
        out += [self.floats(name, data) for name, data in cell_data.items()]
        out.append("      </CellData>\n      <Points>\n")
        out.append(self.floats("Points", points, components=3))
        out.append(f"      </Points>\n      <{kind}>\n")
        out += [self.ints("connectivity", connectivity), self.ints("offsets", offsets)]
        out.append(f"      </{kind}>\n    </Piece>\n")
        return "".join(out)


def _grid_cells(ok, nx, ny, cells):
    """Connectivity and offsets of the cells whose corners are all ``ok`` (``ok`` flat, alpha fastest)."""
    i, j = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), indexing="xy")
    k = (j * nx + i).ravel()  # lower-left corner of every cell, h52vtp's order
    quads = np.stack([k, k + 1, k + nx + 1, k + nx], axis=1)  # counter-clockwise: normals point up (+z)
    polys = quads if cells == "quad" else np.stack([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]], axis=1).reshape(-1, 3)
    polys = polys[ok[polys].all(axis=1)]
    return polys, polys.shape[1] * np.arange(1, len(polys) + 1)


def bilinear(alphas, betas, grid, points):
    """``grid[i, j]`` at ``(alphas[i], betas[j])`` interpolated bilinearly at ``points [m, 2]``; NaN outside the grid
    and where a corner of the point's cell is not finite."""
    alphas, betas = np.asarray(alphas, np.float64), np.asarray(betas, np.float64)
    a, b = points[:, 0], points[:, 1]
    inside = (a >= alphas[0]) & (a <= alphas[-1]) & (b >= betas[0]) & (b <= betas[-1])
    i = np.clip(np.searchsorted(alphas, a, side="right") - 1, 0, len(alphas) - 2)
    j = np.clip(np.searchsorted(betas, b, side="right") - 1, 0, len(betas) - 2)
    ta = (a - alphas[i]) / (alphas[i + 1] - alphas[i])
    tb = (b - betas[j]) / (betas[j + 1] - betas[j])
    corners = np.stack([grid[i, j], grid[i + 1, j], grid[i, j + 1], grid[i + 1, j + 1]])
    weights = np.stack([(1 - ta) * (1 - tb), ta * (1 - tb), (1 - ta) * tb, ta * tb])
    out = (corners * weights).sum(axis=0)
    out[~inside | ~np.isfinite(corners).all(axis=0)] = np.nan
    return out


def write_vtp(surface, path, *, values="loss", log=False, zmax=None, format="binary", cells="quad",
              dtype="float32", with_path=True) -> str:
    """Write ``surface`` to ``path`` (``.vtp`` appended if missing) as the module docstring says; returns the path.

    ``values``: the height, "loss" or a name in ``surface.metrics``; ``log``, ``zmax``: as h52vtp's ``--log``,
    ``--zmax``; ``format``: "binary" (base64 of the raw bytes, the default) or "ascii" (h52vtp's: 9 or 17
    significant digits, so values read back as written, ``nan``/``inf`` as such); ``cells``: "quad" or "triangle";
    ``dtype``: "float32" (h52vtp's) or "float64"; ``with_path``: also write ``surface.path`` as a second piece.
    """
    _check(log, zmax, format, cells, dtype)
    _name, z_values = values_of(surface, values)
    alphas = np.asarray(surface.alphas, np.float64)
    betas = np.asarray(surface.betas, np.float64)
    nx, ny = len(alphas), len(betas)
    if nx < 2 or ny < 2:
        raise ValueError(f"a surface file needs at least 2 x 2 grid points, this grid has {nx} x {ny}")
    z = heights(z_values, log=log, zmax=None if zmax is None else float(zmax))
    ok = np.isfinite(z)
    fill = float(z[ok].max()) if ok.any() else 0.0
    arrays = {"loss": np.asarray(surface.losses, np.float64)}
    for metric, arr in (getattr(surface, "metrics", None) or {}).items():
        arrays[metric if metric not in ("zvalue", "loss", "finite") else f"metric {metric}"] = values_of(
            surface, metric)[1]

    writer = _Writer(format, dtype)
    A, B = np.meshgrid(alphas, betas, indexing="xy")  # [ny, nx]: alpha fastest when flattened
    flat = lambda grid: np.asarray(grid).T.ravel()  # noqa: E731  grid[i, j] -> point j * nx + i
    points = np.stack([A.ravel(), B.ravel(), flat(np.where(ok, z, fill))], axis=1)
    polys, offsets = _grid_cells(flat(ok), nx, ny, cells)
    zflat = flat(np.where(ok, z, np.nan))
    point_data = {"zvalue": (zflat, False), **{k: (flat(v), False) for k, v in arrays.items()},
                  "finite": (flat(ok), True)}
    pieces = [writer.piece(points, point_data, {"averaged zvalue": zflat[polys].mean(axis=1)}, "Polys", polys,
                           offsets)]
    track = getattr(surface, "path", None)
    if with_path and track is not None and len(track):
        track = np.asarray(track, np.float64).reshape(-1, 2)
        zpath = bilinear(alphas, betas, np.where(ok, z, np.nan), track)
        good = np.isfinite(zpath)
        # one polyline per run of consecutive connectable points
        edges = np.flatnonzero(np.diff(np.concatenate([[0], good.astype(np.int8), [0]])))
        runs = [np.arange(s, e) for s, e in zip(edges[::2], edges[1::2]) if e - s >= 2]
        conn = np.concatenate(runs) if runs else np.zeros(0, np.int64)
        offs = np.cumsum([len(r) for r in runs]).astype(np.int64)
        pdata = {"zvalue": (zpath, False),
                 **{k: (bilinear(alphas, betas, v, track), False) for k, v in arrays.items()},
                 "finite": (good, True)}
        pts = np.column_stack([track, np.where(good, zpath, fill)])
        line_z = np.array([zpath[r].mean() for r in runs])
        pieces.append(writer.piece(pts, pdata, {"averaged zvalue": line_z}, "Lines", conn, offs))

    path = os.fspath(path)
    if not path.endswith(".vtp"):
        path += ".vtp"
    text = ('<?xml version="1.0"?>\n'
            '<VTKFile type="PolyData" version="1.0" byte_order="LittleEndian" header_type="UInt64">\n'
            "  <PolyData>\n" + "".join(pieces) + "  </PolyData>\n</VTKFile>\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path
