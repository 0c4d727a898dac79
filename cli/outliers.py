"""``faceaudit outliers``: realness scores, outlier tags, identity consistency."""

from __future__ import annotations

import argparse

from faceaudit.textsafe import printable

from .common import DEFAULT_DATASET, open_dataset


def cmd_outliers(args: argparse.Namespace) -> int:
    from fiftyone_plugin import outliers

    if args.clear:
        n = outliers.clear_outliers(open_dataset(args.dataset), args.tag)
        print(f"tag '{args.tag}' removed from {n} samples")
        return 0
    options = outliers.outlier_options(top=args.top, threshold=args.threshold, tag=args.tag,
                                       states=args.states, alpha=args.alpha, joint=args.joint)
    dataset = open_dataset(args.dataset)
    scored, consistency, n = outliers.flag_synthetic_outliers(dataset, options)
    print(f"{scored['scored']} samples scored ({outliers.SCORE_FIELD}); {n} synthetic samples tagged "
          f"'{options.tag}'{outliers.kept_note(dataset)}; saved view '{outliers.OUTLIERS_VIEW}'")
    for source, c in consistency.items():
        if c["applicable"]:
            print(f"  {printable(source)}: identity disagreement {c['mean_disagreement']:.4f} over {c['identities']} identities")
        else:
            print(f"  {printable(source)}: identity consistency not applicable ({c['reason']})")
    return 0


def register(sub) -> None:
    """Add this module's sub-command(s) to ``sub``."""
    out = sub.add_parser(
        "outliers",
        help="score realness_nll, tag the synthetic faces real data explains least, measure identity consistency",
    )
    out.add_argument("--dataset", default=DEFAULT_DATASET)
    pick = out.add_mutually_exclusive_group(required=True)
    pick.add_argument("--top", type=int, metavar="K", help="tag the K synthetic samples with the highest score (samples tagged "
                      "reviewed_keep, reviewed by a person, are never tagged)")
    pick.add_argument("--threshold", type=float, metavar="T", help="tag synthetic samples with score >= T")
    pick.add_argument("--clear", action="store_true", help="remove the tag from every sample")
    out.add_argument("--tag", default="outlier")
    out.add_argument("--states", choices=["three", "binary"], default="three")
    out.add_argument("--alpha", type=float, default=0.5)
    out.add_argument("--joint", nargs="+", metavar="ATTR",
                     help="score these attributes' combination jointly (at most 10), e.g. Male Bald Bangs")
    out.set_defaults(func=cmd_outliers)
