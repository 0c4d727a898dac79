"""``faceaudit rebalance``: a subset of a synthetic source closer to the real distribution."""

from __future__ import annotations

import argparse
import json

from .common import DEFAULT_DATASET, open_dataset


def cmd_rebalance(args: argparse.Namespace) -> int:
    from faceaudit import params
    from fiftyone_plugin import rebalance

    from fiftyone_plugin.schema import check_outputs

    params.output_files({"json": args.json}, overwrite=True)  # the path's form, before opening the dataset
    dataset = open_dataset(args.dataset)
    (json_out,) = check_outputs(dataset, {"json": args.json}).values()  # never over a source's files
    report = rebalance.rebalance_source(dataset, args.source, args.attributes, keep=args.keep,
                                        unit=args.unit, tag=args.tag, states=args.states, alpha=args.alpha)
    for line in rebalance.summary(report):
        print(line)
    if json_out:
        with open(json_out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    return 0


def register(sub) -> None:
    """Add this module's sub-command(s) to ``sub``."""
    p = sub.add_parser(
        "rebalance", help="tag a subset of a synthetic source whose attributes match the real sources better",
        description="Choose whole identities (or samples) of a synthetic source, keeping at least the share "
        "--keep of its samples, so that the joint distribution of --attributes is as close as possible "
        "to the pooled real sources' (KL(real || subset)); tag them and save a view of that name "
        "for faceaudit export --view.")
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--source", required=True, help="the synthetic source")
    p.add_argument("--attributes", required=True, nargs="+", metavar="A", help="e.g. Male Young Eyeglasses")
    p.add_argument("--keep", type=float, default=0.5, metavar="F", help="keep at least this share of the samples")
    p.add_argument("--unit", default="identity", choices=("identity", "sample"))
    p.add_argument("--tag", default="rebalanced", help="tag and saved-view name (default: rebalanced)")
    p.add_argument("--states", default="three", choices=("three", "binary"))
    p.add_argument("--alpha", type=float, default=0.5, help="pseudo-count per joint state (as compare)")
    p.add_argument("--json", metavar="OUT", help="write the report as JSON to this file")
    p.set_defaults(func=cmd_rebalance)
