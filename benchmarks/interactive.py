"""Benchmark: what a user of the surface widget waits for after moving a slider, on their own model.

For each model a ``SurfaceWidget`` (trust panel on, previews on its default subset) is built, then its seed control
is moved twice; for the new widget and each move, the time until the first picture (the coarse preview), until
the full grid, and until the complete trust panel.  The new widget pays for the Hessian facts of the weights
(lambda_max, lambda_min, the trace); a move reuses them, so its panel costs only its two curvature products.  ``ls.plane`` alone at the same resolution is timed beside it.  Outside a kernel the widget computes as
the trait changes, so the clock reads when each stage's traits arrive, as a browser would see them.

Models (2 CPU threads by default; CUDA when ``--device cuda``): the digits MLP and CNN (sklearn's digits), the
~1M-parameter GPT-2 of ``benchmarks/transformer.py`` on 64 sequences x 64 tokens, and a ResNet-20 (He et al. 2016)
on 2,000 synthetic 32x32 images.

    .venv/bin/python benchmarks/interactive.py [--threads 2] [--resolution 21] [--models mlp,cnn,gpt2,resnet20]
        [--device cuda] [--resnet-images 10000]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import landscape_widgets as lw  # noqa: E402
from landscape_widgets import examples  # noqa: E402


def digits_case(cnn):
    x, y = examples.digits(flat=not cnn)
    model = examples.digits_cnn() if cnn else examples.digits_mlp()
    examples.train(model, (x, y), epochs=10)
    return model, nn.CrossEntropyLoss(), (x, y)


def gpt2_case():
    from transformer import bigram_tokens, make_model, next_token_loss, train
    model = make_model(4, 128, 4, 2000, 64, seed=0)
    x = bigram_tokens(64, 64, 2000, seed=1)
    train(model, x, steps=20)
    return model, next_token_loss, (x, x)


RESNET_IMAGES = 2000


def resnet_case():
    from gpu import CifarResNet, synthetic_images
    x, y = synthetic_images(RESNET_IMAGES)
    return CifarResNet(n=3).eval(), nn.CrossEntropyLoss(), (x, y)


CASES = {"mlp": ("digits MLP", lambda: digits_case(False)), "cnn": ("digits CNN", lambda: digits_case(True)),
         "gpt2": ("GPT-2, 4 layers (64 x 64 tokens)", gpt2_case), "resnet20": ("ResNet-20", resnet_case)}


def run(name, build, resolution, device):
    from landscape_widgets.widgets._base import status_log

    model, loss, data = build()
    ls = lw.Landscape(model, loss, data, device=device)
    t = time.perf_counter()
    ls.plane(resolution=resolution, progress=False, seed=7)
    plane_s = time.perf_counter() - t
    marks, t0 = {}, [0.0]

    def log(w, _status):  # each state and stage as it reaches the widget's traits
        now = time.perf_counter() - t0[0]
        if w._state in ("preview", "done"):
            marks.setdefault(w._state, now)
        if w._state == "done" and w._trust:
            marks.setdefault("trust", now)

    rows = []
    t0[0] = time.perf_counter()
    with status_log(log):  # the first picture of a new widget: the Hessian facts are computed here
        w = lw.SurfaceWidget(ls, resolution=resolution, seed=0)
    rows.append(dict(marks, hvps=w.trust["hvps"], label="new widget"))
    for seed in (1, 2):  # slider moves: the facts are reused, a panel costs its two curvature products
        marks.clear()
        t0[0] = time.perf_counter()
        w.seed = seed
        w.wait()
        rows.append(dict(marks, hvps=w.trust["hvps"], label=f"seed -> {seed}"))
    w.close()
    n = ls.data.num_samples
    return {"name": name, "plane_s": plane_s, "moves": rows, "samples": n, "params": ls.num_parameters,
            "preview_samples": getattr(w, "_auto_preview", None) or n}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resolution", type=int, default=21)
    p.add_argument("--models", default="mlp,cnn,gpt2,resnet20")
    p.add_argument("--device", default="cpu")
    p.add_argument("--resnet-images", type=int, default=RESNET_IMAGES, help="synthetic 32x32 images of the ResNet-20")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    globals()["RESNET_IMAGES"] = args.resnet_images
    t0 = time.perf_counter()
    results = [run(CASES[m][0], CASES[m][1], args.resolution, args.device) for m in args.models.split(",")]
    lines = [f"`.venv/bin/python benchmarks/interactive.py --threads {args.threads} --resolution {args.resolution} "
             f"--models {args.models} --device {args.device} --resnet-images {args.resnet_images}` — {platform.machine()}, torch {torch.__version__}, "
             f"{args.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "",
             f"| model | params | samples (preview) | `plane` {args.resolution}x{args.resolution} | move | first "
             "picture | full grid | trust panel complete | its products |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for k, m in enumerate(r["moves"]):
            trust_extra = m.get("trust", float("nan")) - m.get("done", float("nan"))
            lines.append(f"| {r['name'] if k == 0 else ''} | {r['params']:,} | {r['samples']:,} "
                         f"({r['preview_samples']:,}) | {r['plane_s']:.2f} s | {m['label']} | "
                         f"{m.get('preview', float('nan')):.2f} s | {m.get('done', float('nan')):.2f} s | "
                         f"{m.get('trust', float('nan')):.2f} s (+{trust_extra:.2f} s) | {m['hvps']} |")
    lines += ["", f"whole run {time.perf_counter() - t0:.0f} s"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
