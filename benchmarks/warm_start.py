"""Benchmark: the trust panel after the weights moved (one more epoch of training), with Lanczos started from the
previous panel's eigenvectors (what ``Landscape.trust`` does) against a cold start on a fresh Landscape; both held to
the same convergence test.  Digits MLP and CNN, 10 trace samples.

    .venv/bin/python benchmarks/warm_start.py [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import landscape_widgets as lw  # noqa: E402
from landscape_widgets import examples  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loss = torch.nn.CrossEntropyLoss()
    lines = [f"`.venv/bin/python benchmarks/warm_start.py --threads {args.threads}` — {platform.machine()}, torch "
             f"{torch.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "| model | panel after one more epoch | products | time | lambda_max | lambda_min |", "|---|---|---|---|---|---|"]
    for cnn in (False, True):
        x, y = examples.digits(flat=not cnn)
        model = examples.digits_cnn() if cnn else examples.digits_mlp()
        examples.train(model, (x, y), epochs=10)
        ls = lw.Landscape(model, loss, (x, y))
        ls.trust(ls.plane(resolution=3, progress=False), progress=False, trace_samples=10)
        examples.train(model, (x, y), epochs=1)
        surf = ls.plane(resolution=3, progress=False)
        for label, landscape in (("warm start", ls), ("cold start", lw.Landscape(model, loss, (x, y)))):
            t = time.perf_counter()
            panel = landscape.trust(surf, progress=False, trace_samples=10)
            took = time.perf_counter() - t
            assert panel["warm_start"] == (label == "warm start")
            lines.append(f"| {'digits CNN' if cnn else 'digits MLP'} | {label} | {panel['hvps']} | {took:.2f} s | "
                         f"{panel['lambda_max']:.6g} | {panel['lambda_min']:.6g} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
