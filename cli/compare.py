"""``faceaudit compare``: real vs synthetic attribute distributions and KL."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .common import DEFAULT_DATASET, open_dataset


def cmd_compare(args: argparse.Namespace) -> int:
    from faceaudit import params, report
    from fiftyone_plugin.compare import compute_comparison, store_comparison

    from fiftyone_plugin.schema import check_outputs

    params.output_files({"json": args.json, "html": args.html, "csv": args.csv}, overwrite=True)  # before opening
    dataset = open_dataset(args.dataset)
    outputs = check_outputs(dataset, {"json": args.json, "html": args.html, "csv": args.csv},
                            overwrite=args.overwrite)
    _, result = compute_comparison(dataset, states=args.states, alpha=args.alpha,
                                   bootstrap=args.bootstrap, seed=args.seed, attributes=args.attributes)
    store_comparison(dataset, result)
    for path in filter(None, outputs.values()):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    written = []
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        written.append(args.json)
    if args.html:
        from fiftyone_plugin.reporting import write_html_report

        write_html_report(dataset, result, args.html)  # with provenance, realness and outliers
        written.append(args.html)
    if args.csv:
        with open(args.csv, "w", encoding="utf-8", newline="") as f:
            f.write(report.to_csv(result))
        written.append(args.csv)
    if not args.json:
        print(report.text_table(result))
    if written:
        print("written: " + ", ".join(written), file=sys.stderr)
    return 0


def register(sub) -> None:
    """Add this module's sub-command(s) to ``sub``."""
    cmp = sub.add_parser(
        "compare",
        help="per-attribute distributions and real vs synthetic KL divergence (both directions)",
    )
    cmp.add_argument("--dataset", default=DEFAULT_DATASET)
    cmp.add_argument("--states", choices=["three", "binary"], default="three",
                     help="three: positive/negative/undefined; binary: positive/negative")
    cmp.add_argument("--alpha", type=float, default=0.5, help="pseudo-count per state (default 0.5)")
    cmp.add_argument("--bootstrap", type=int, default=0, metavar="N",
                     help="N bootstrap resamples (identities where known) for KL intervals")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--attributes", nargs="+", metavar="ATTR", help="only these attributes")
    cmp.add_argument("--json", metavar="FILE", help="write the result as JSON")
    cmp.add_argument("--html", metavar="FILE", help="write a self-contained HTML report")
    cmp.add_argument("--csv", metavar="FILE", help="write a CSV (one row per attribute)")
    cmp.add_argument("--overwrite", action="store_true",
                     help="replace existing files that faceaudit did not write (never a dataset's images)")
    cmp.set_defaults(func=cmd_compare)
