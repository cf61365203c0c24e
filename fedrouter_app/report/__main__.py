"""``python -m fedrouter_app.report <sweep or run dirs> --out <dir> [--reference fedit] [--proposed fedrouter]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedrouter_app.report.bootstrap import RESAMPLES, SEED
from fedrouter_app.report.build import build_report


def main(argv: list[str] | None = None, prog: str = "python -m fedrouter_app.report") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path, help="sweep directories, job or run directories")
    parser.add_argument("--out", type=Path, required=True, help="directory for report.md, report.json and figures")
    parser.add_argument("--reference", default="fedit", help="method the gains are relative to (default: fedit)")
    parser.add_argument(
        "--proposed",
        default=None,
        help="method under study, left out of the best baselines (default: the declared one, else fedrouter)",
    )
    parser.add_argument(
        "--preset",
        type=Path,
        help="a sweep preset (conf/sweep/<name>.yaml) whose report: block declares the comparison, for runs that "
        "did not record it (default: the declaration the runs recorded, if any)",
    )
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help=f"bootstrap resamples (default: {RESAMPLES})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the bootstrap's draws (default: {SEED})")
    parser.add_argument("--no-plots", action="store_true", help="write the tables only")
    parser.add_argument("--title", default="Comparison report", help="the report's title (its first heading)")
    args = parser.parse_args(argv)
    try:
        report = build_report(
            args.paths,
            args.out,
            reference=args.reference,
            with_figures=not args.no_plots,
            proposed=args.proposed,
            preset=args.preset,
            resamples=args.resamples,
            seed=args.seed,
            title=args.title,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
