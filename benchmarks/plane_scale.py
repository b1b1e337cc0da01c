"""Benchmark: what one plane point costs against a plain ``inference_mode`` forward+loss of the same model and data,
from 0.1M to 20M parameters, beside loss-landscapes on the same points.

GPT-2s from ``transformers.GPT2Config`` (eager attention, vocabulary 2,000, 64 positions; nothing downloaded) on
16 sequences of 64 tokens from a random bigram chain, after 5 Adam steps; next-token cross-entropy.  Per point, for each library:
``(t(plane of 5x5) - t(plane of 3x3)) / 16``, so that what a call costs once (directions, copies, checks) cancels;
the plain pass is ``next_token_loss(model(x), x)`` under ``torch.inference_mode``.  Rounds alternate the three;
the figures are medians.  Both wall time and process CPU time are reported: on a machine other processes load, the
CPU time of a single-threaded run is the steadier of the two.

    .venv/bin/python benchmarks/plane_scale.py [--sizes 0.1,1,5,7,19] [--rounds 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import landscape_widgets as lw  # noqa: E402
from transformer import bigram_tokens, next_token_loss, train  # noqa: E402

SIZES = {"0.1": (2, 32), "1": (4, 128), "5": (6, 256), "7": (8, 256), "19": (8, 448)}  # layers, width


def make(size):
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    layers, width = SIZES[size]
    cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=4, vocab_size=2000, n_positions=64,
                     attn_implementation="eager")
    return GPT2LMHeadModel(cfg).eval()


class Logits(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, x):
        return self.lm(input_ids=x, use_cache=False).logits


def clocks(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.1,1,5,7,19")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import loss_landscapes
    from loss_landscapes.metrics import Metric

    print(f"{platform.processor() or platform.machine()}, {args.threads} threads of {os.cpu_count()} cores, "
          f"torch {torch.__version__}", flush=True)
    print("| parameters | plain forward+loss (ms, wall / CPU) | ours per point | loss-landscapes per point | "
          "ours / plain (wall, CPU) | loss-landscapes / plain (wall, CPU) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        model = Logits(make(size)).eval()
        P = sum(p.numel() for p in model.parameters())
        x = bigram_tokens(16, 64, 2000, seed=1)
        train(model, x, steps=5)  # a few Adam steps: loss-landscapes' filter norm divides by the zero-init biases
        ls = lw.Landscape(model, next_token_loss, (x, x), device="cpu")

        class Loss(Metric):
            def __call__(self, wrapper):
                return float(next_token_loss(wrapper.forward(x), x))

        def plain():
            with torch.inference_mode():
                next_token_loss(model(x), x)

        def ours(res):
            return lambda: ls.plane(resolution=res, progress=False, evaluator="loop")

        def theirs(steps):
            def run():
                torch.manual_seed(0)
                loss_landscapes.random_plane(model, Loss(), distance=1, steps=steps, normalization="filter",
                                             deepcopy_model=True)
            return run

        plain(), ours(2)(), theirs(2)()  # warm
        rows = {"plain": [], "ours": [], "ll": []}
        for _ in range(args.rounds):
            reps = [clocks(plain) for _ in range(3)]
            rows["plain"].append(tuple(statistics.median(r[i] for r in reps) for i in range(2)))
            for name, f in (("ours", ours), ("ll", theirs)):
                small, large = clocks(f(3)), clocks(f(5))
                rows[name].append(tuple((large[i] - small[i]) / 16 for i in range(2)))
        med = {k: tuple(statistics.median(r[i] for r in v) for i in range(2)) for k, v in rows.items()}
        ratio = {k: tuple(statistics.median(r[i] / p[i] for r, p in zip(rows[k], rows["plain"])) for i in range(2))
                 for k in ("ours", "ll")}
        ms = lambda t: f"{1e3 * t[0]:.0f} / {1e3 * t[1]:.0f}"  # noqa: E731
        print(f"| {P:,} | {ms(med['plain'])} | {ms(med['ours'])} | {ms(med['ll'])} | "
              f"{ratio['ours'][0]:.3f}x, {ratio['ours'][1]:.3f}x | {ratio['ll'][0]:.3f}x, {ratio['ll'][1]:.3f}x |",
              flush=True)


if __name__ == "__main__":
    main()
