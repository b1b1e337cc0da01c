"""Peak memory of the Hessian computations on GPT-2s built from a config, in parameter bytes above one
forward+backward.

Every case runs in a fresh subprocess, which reports its resident-set high-water mark (``VmHWM`` of
``/proc/self/status``: torch's allocations included, which tracemalloc does not see).  The figure reported is
``(peak of the case - peak of one forward+backward of the same model and batch) / parameter bytes``; both processes
import the same modules and build the same model and data, so those cancel.

Cases: ``hvp`` = three Hessian-vector products and nothing else (what the products themselves hold above a
forward+backward: the first-order graph with ``create_graph=True``, the gradients; ``above hvp`` is what a
solver adds to that); ``k1`` = ``Landscape.spectrum(k=1, density=False, trace=False)``; ``k5`` =
``spectrum(k=5)`` with its defaults (bottom=1, trace by Hutch++ from 99 products, SLQ density of 10 runs x 90
steps); ``trace`` and ``density`` = those two stages alone (``hutchinson_trace(op, 99)``,
``lanczos_quadrature(op, 90, 10)``) on an operator whose first-order graph is built first.

    PYTHONPATH=. .venv/bin/python benchmarks/hessian_memory.py            # 0.14M, 1M, 5M, 19M parameters
    PYTHONPATH=. .venv/bin/python benchmarks/hessian_memory.py --quick    # the two smallest
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# name -> (n_layer, n_embd, n_head, vocab_size): GPT-2s of about 0.14M, 1M, 5M and 19M parameters
SIZES = {"0.14M": (2, 32, 2, 3400), "1M": (2, 128, 2, 5000), "5M": (4, 256, 4, 8000), "19M": (4, 512, 8, 12000)}
CASES = ("forward_backward", "hvp", "k1", "k5", "trace", "density")
SEQUENCES, TOKENS = 16, 64


def build(size, seed=0, sequences=SEQUENCES, tokens=TOKENS):
    """A GPT-2 from ``transformers.GPT2Config`` (eager attention: double backward through it exists), its own
    seeded initialization, and ``sequences`` x ``tokens`` random tokens as ``{"input_ids", "labels"}``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    n_layer, n_embd, n_head, vocab = SIZES[size]
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, vocab_size=vocab, n_positions=tokens,
                     bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):  # HF's initialization draws from the global generator
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
    ids = torch.randint(0, vocab, (sequences, tokens), generator=torch.Generator().manual_seed(seed + 1))
    return model, {"input_ids": ids, "labels": ids.clone()}


def peak_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(size, case, threads):
    import numpy as np
    import torch

    import landscape_widgets as lw
    from landscape_widgets.hessian.hutchinson import hutchinson_trace
    from landscape_widgets.hessian.hvp import HessianOperator
    from landscape_widgets.hessian.slq import lanczos_quadrature

    torch.set_num_threads(threads)
    model, data = build(size)
    P = sum(p.numel() for p in model.parameters())
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"size": size, "case": case, "P": P, "param_bytes": param_bytes}
    t = time.perf_counter()
    if case == "forward_backward":
        model.eval()
        model(**data).loss.backward()
        model.zero_grad(set_to_none=True)
    else:
        ls = lw.Landscape(model, None, data, device="cpu")
        if case in ("k1", "k5"):
            s = ls.spectrum(k=1, density=False, trace=False, progress=False) if case == "k1" \
                else ls.spectrum(k=5, progress=False)
            out.update(hvps=s.meta["hvps_total"], top=[float(v) for v in s.top_eigenvalues],
                       bottom=[float(v) for v in s.bottom_eigenvalues], stages=s.meta["hvps"])
        else:
            private = ls.problem.private()
            op = HessianOperator(private, ls.problem.data, ls.problem.objective)
            with op.running():
                op.matvec_torch(torch.zeros(op.num_parameters, dtype=op.dtype))  # builds the graph
                if case == "hvp":
                    for i in range(3):
                        op.matvec_torch(torch.ones(op.num_parameters, dtype=op.dtype) / (i + 1))
                elif case == "trace":
                    tr, se, _ = hutchinson_trace(op, 99, rng=np.random.default_rng(0))
                    out.update(trace=tr, stderr=se)
                else:
                    nodes, _ = lanczos_quadrature(op, 90, 10, rng=np.random.default_rng(0))
                    out.update(nodes=int(sum(len(n) for n in nodes)))
            out["hvps"] = op.hvps
    out["seconds"] = round(time.perf_counter() - t, 2)
    out["peak"] = peak_bytes()
    print(json.dumps(out))


def run(size, case, threads, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", size, case, "--threads", str(threads)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"size": size, "case": case, "error": f"over {timeout} s"}
    if proc.returncode:
        return {"size": size, "case": case, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the two smallest models")
    ap.add_argument("--sizes", nargs="*", choices=list(SIZES), help="models to measure (default: all)")
    ap.add_argument("--cases", nargs="*", choices=CASES[2:], default=list(CASES[2:]))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per case")
    ap.add_argument("--child", nargs=2, metavar=("SIZE", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(*args.child, args.threads)
    sizes = args.sizes or (list(SIZES)[:2] if args.quick else list(SIZES))
    print(f"GPT-2s from config, {SEQUENCES} x {TOKENS} tokens, {args.threads} torch threads; peak = VmHWM of a fresh "
          "process; 'x params' = (peak - peak of one forward+backward) / parameter bytes")
    print(f"{'model':>6} {'P':>10} {'case':>8} {'peak MiB':>9} {'above f+b MiB':>13} {'x params':>9} "
          f"{'above hvp x':>11} {'HVPs':>6} {'s':>8}  result")
    for size in sizes:
        base = run(size, "forward_backward", args.threads, args.timeout)
        if "error" in base:
            print(f"{size:>6} forward+backward failed: {base['error']}")
            continue
        print(f"{size:>6} {base['P']:>10,} {'f+b':>8} {base['peak'] / 2**20:>9.1f} {'':>13} {'':>9} {'':>11} "
              f"{'':>6} {base['seconds']:>8.2f}", flush=True)
        hvp = None
        for case in ["hvp"] + list(args.cases):
            r = run(size, case, args.threads, args.timeout)
            if "error" in r:
                print(f"{size:>6} {base['P']:>10,} {case:>8} failed: {r['error']}", flush=True)
                continue
            above = r["peak"] - base["peak"]
            if case == "hvp":
                hvp = r
            over_hvp = "" if hvp is None or case == "hvp" else f"{(r['peak'] - hvp['peak']) / r['param_bytes']:.1f}"
            result = {k: r[k] for k in ("top", "bottom", "trace", "stderr", "stages") if k in r}
            print(f"{size:>6} {r['P']:>10,} {case:>8} {r['peak'] / 2**20:>9.1f} {above / 2**20:>13.1f} "
                  f"{above / r['param_bytes']:>9.1f} {over_hvp:>11} {r.get('hvps', ''):>6} {r['seconds']:>8.2f}  "
                  f"{json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main()
