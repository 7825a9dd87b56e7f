"""The ``iso3d`` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import collect, format_report

    print(format_report(collect()))
    return 0


def _cmd_selftest(args: argparse.Namespace) -> int:
    from .selftest import run_selftest

    rows = run_selftest(seed=args.seed)
    for name, err, bound, ok in rows:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: max error {err:.2e} (bound {bound:.2e})")
    return 0 if all(ok for *_, ok in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iso3d", description="Image to 3D by the Isotropic3D method.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what this installation can run (GPU, Triton, optional backends) and why not")
    selftest = sub.add_parser("selftest", help="run each kernel against its PyTorch twin on this machine")
    selftest.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"info": _cmd_info, "selftest": _cmd_selftest}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
