"""Command line: ``python -m landscape_widgets demo --out landscape-demo.html``."""
from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m landscape_widgets")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small MLP on sklearn's digits and write an offline HTML page")
    demo.add_argument("--out", default="landscape-demo.html", help="HTML file to write")
    demo.add_argument("--resolution", type=int, default=41, help="surface grid points per axis")
    demo.add_argument("--epochs", type=int, default=30, help="training epochs")
    demo.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and directions")
    demo.add_argument("--quiet", action="store_true", help="print nothing but the path written")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        path = run_demo(args.out, resolution=args.resolution, epochs=args.epochs, seed=args.seed,
                        progress=not args.quiet)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
