"""Benchmark: loss and accuracy at every point of a plane (Li et al. 2018 record both).

``Landscape(metrics={"accuracy": ...}).plane`` computes them in the same forward passes; loss-landscapes evaluates
one metric per ``random_plane`` call, so its user runs two planes (its ``Loss`` metric and an accuracy ``Metric``).
Also timed: our plane of the loss alone, to show what the metric adds.  Digits MLP and CNN, alternating rounds.

    .venv/bin/python benchmarks/metrics.py [--threads 2] [--rounds 3] [--resolution 21]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

import landscape_widgets as lw
from landscape_widgets import examples


def accuracy(out, y):
    return (out.argmax(-1) == y).double().mean()


def ll_two_planes(model, x, y, steps):
    import loss_landscapes
    import loss_landscapes.metrics
    from loss_landscapes.metrics.metric import Metric

    class Accuracy(Metric):
        def __call__(self, model_wrapper):
            return float(accuracy(model_wrapper.forward(x), y))

    t = time.perf_counter()
    for metric in (loss_landscapes.metrics.Loss(nn.CrossEntropyLoss(), x, y), Accuracy()):
        torch.manual_seed(0)
        loss_landscapes.random_plane(model, metric, distance=1, steps=steps, normalization="filter",
                                     deepcopy_model=True)
    return time.perf_counter() - t


def timed(ls, steps):
    t = time.perf_counter()
    ls.plane(resolution=steps, progress=False)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=21)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n = args.resolution
    lines = [f"`.venv/bin/python benchmarks/metrics.py --threads {args.threads} --rounds {args.rounds} --resolution "
             f"{n}` — {platform.machine()}, torch {torch.__version__}, {args.threads} threads, medians of "
             f"{args.rounds} alternating rounds, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             "| model | ours: loss | ours: loss + accuracy | loss-landscapes: two planes | metric's cost | "
             "loss-landscapes / ours |", "|---|---|---|---|---|---|"]
    for name, make, flat in [("digits MLP", examples.digits_mlp, True), ("digits CNN", examples.digits_cnn, False)]:
        x, y = examples.digits(flat=flat)
        model = make()
        examples.train(model, (x, y), epochs=10)
        model.eval()
        plain = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu")
        both = lw.Landscape(model, nn.CrossEntropyLoss(), (x, y), device="cpu", metrics={"accuracy": accuracy})
        t_plain, t_both, t_ll = [], [], []
        for _ in range(args.rounds):
            t_plain.append(timed(plain, n))
            t_both.append(timed(both, n))
            t_ll.append(ll_two_planes(model, x, y, n))
        a, b, c = (statistics.median(v) for v in (t_plain, t_both, t_ll))
        lines.append(f"| {name} | {a:.2f} s | {b:.2f} s | {c:.2f} s | {b / a:.2f}x | {c / b:.2f}x |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
