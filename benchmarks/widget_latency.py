"""Kernel-side latency of the live SurfaceWidget on the digits MLP: time from a control change (a browser
``update`` message, applied through ``set_state`` exactly as the comm handler does) to the first preview on the
wire and to the full grid, against ``Landscape.plane`` alone for the same grid.

The widget runs on an asyncio loop in this process with its worker thread, the same code path as inside
ipykernel (no browser: the time to draw is the browser's, see tests/browser).

    .venv/bin/python benchmarks/widget_latency.py --resolution 41 --rounds 5
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import pathlib
import platform
import statistics
import time

import torch

import landscape_widgets as lw
from landscape_widgets import examples


async def rounds_interleaved(ls, resolution, rounds):
    """Alternate plane-alone and widget rounds, so both see the same machine load (CPUs here are shared)."""
    w = lw.SurfaceWidget(ls, resolution=resolution, seed=0)
    await wait_done(w)
    marks = {}
    w.observe(lambda c: marks.setdefault(c["new"], time.perf_counter()), "_state")
    plane, widget = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        ls.plane(resolution=resolution, seed=r + 1, progress=False)
        plane.append(time.perf_counter() - t0)
        marks.clear()
        t0 = time.perf_counter()
        w.set_state({"seed": r + 1})  # what a browser change of the seed control does
        await wait_done(w)
        widget.append((marks["preview"] - t0, marks["done"] - t0))
    w.close()
    return plane, widget


async def wait_done(w):
    while w._finished < w._generation:
        await asyncio.sleep(0.001)
    w._drain()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--resolution", type=int, default=41)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args(argv)
    x, y = examples.digits()
    model = examples.digits_mlp(seed=0)
    examples.train(model, (x, y), epochs=args.epochs)
    ls = lw.Landscape(model, torch.nn.CrossEntropyLoss(), (x, y), device="cpu")
    ls.plane(resolution=5, progress=False)  # warm up
    plane, widget = asyncio.run(rounds_interleaved(ls, args.resolution, args.rounds))
    med = statistics.median
    n = args.resolution
    print(f"digits MLP, {x.shape[0]} samples, {n}x{n} grid, {args.rounds} rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, python {platform.python_version()}")
    print("| measurement | median s | min s | max s |")
    print("|---|---|---|---|")
    rows = [("`Landscape.plane` alone", plane), ("widget: change → 9×9 preview sent", [p for p, _ in widget]),
            (f"widget: change → full {n}×{n} sent", [d for _, d in widget])]
    for name, v in rows:
        print(f"| {name} | {med(v):.3f} | {min(v):.3f} | {max(v):.3f} |")
    bundle = pathlib.Path(lw.__file__).parent / "static" / "widget.js"
    raw = bundle.read_bytes()
    print(f"bundle {bundle.name}: {len(raw):,} B minified, {len(gzip.compress(raw, 9)):,} B gzip -9")


if __name__ == "__main__":
    main()
