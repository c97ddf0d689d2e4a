"""``python -m asgml.report``: the command line."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import matplotlib

from asgml.report.outputs import write_report

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m asgml.report",
        description="Table (mean ± std over seeds, significance against a reference method) "
        "and figures of a run/multirun directory: report.md/.csv/.tex, PNG and PDF figures.",
    )
    p.add_argument("run_dir", help="a run or multirun directory (searched recursively)")
    p.add_argument(
        "--group-by",
        nargs="+",
        default=None,
        metavar="KEY",
        help="dotted config key(s) to group by, e.g. method.name dataset.name "
        "method.boost.alpha (default: method.name plus the swept keys that vary)",
    )
    p.add_argument("--with-shapley", action="store_true", help="add Shapley columns from eval.json")
    p.add_argument(
        "--reference",
        default="baseline",
        metavar="METHOD",
        help="method every row is t-tested against (default: baseline; 'none': no test)",
    )
    p.add_argument(
        "--metric", default="test/acc", help="metric of the significance test (default test/acc)"
    )
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument(
        "--style",
        choices=("paper", "screen"),
        default="paper",
        help="figures for a paper (3.5 / 7 in wide, 8-pt text; default) or a screen (larger)",
    )
    p.add_argument("--out", default=None, help="output folder (default: run_dir)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    matplotlib.use("Agg")  # files only, no display needed
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    rep = write_report(
        args.run_dir,
        args.out,
        args.group_by,
        args.with_shapley,
        plots=not args.no_plots,
        reference=None if args.reference.lower() == "none" else args.reference,
        metric=args.metric,
        style=args.style,
    )
    print(rep["table"])
    print()
    print(rep["note"])
    for s in rep["skipped"]:
        print(f"note: {s}")
    print("wrote " + ", ".join(str(f) for f in rep["files"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
