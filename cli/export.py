"""``faceaudit export``: the dataset, a saved view or some sources as a training set."""

from __future__ import annotations

import argparse
import json

from .common import DEFAULT_DATASET, open_dataset, run_job


def cmd_export(args: argparse.Namespace) -> int:
    from fiftyone_plugin.export import export_dataset

    job = export_dataset(open_dataset(args.dataset), args.out, view_name=args.view, sources=args.source,
                         format=args.format, exclude_tags=args.exclude_tags or (), min_images=args.min_images,
                         link=args.link, overwrite=args.overwrite, no_identity=args.no_identity)
    result = run_job(job, "img", args.quiet or args.json)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    return 0


def register(sub) -> None:
    """Add this module's sub-command(s) to ``sub``."""
    p = sub.add_parser(
        "export", help="write the dataset (or a saved view) as identity folders or an InsightFace train.rec",
        description="Export the faces of a dataset, a saved view or some sources, leaving out tagged "
        "faces and small identities, as DIR/<identity>/<file> or InsightFace RecordIO, with a "
        "manifest of what went in and what was left out. Re-running the same export changes nothing; "
        "a killed one is finished by running it again.")
    p.add_argument("--dataset", default=DEFAULT_DATASET)
    p.add_argument("--out", required=True, metavar="DIR", help="an empty (or new) folder")
    p.add_argument("--format", default="folders", choices=("folders", "rec"))
    p.add_argument("--source", nargs="+", metavar="S", help="only these sources (default: all)")
    p.add_argument("--view", metavar="SAVED_VIEW", help="a saved view of the dataset, e.g. rebalanced")
    p.add_argument("--exclude-tags", nargs="+", metavar="T", help="leave out samples with any of these tags "
                   "(default: none; samples tagged 'unreadable' are always left out)")
    p.add_argument("--min-images", type=int, default=1, metavar="K",
                   help="leave out identities with fewer than K images after the exclusions (default 1)")
    p.add_argument("--link", default="copy", choices=("copy", "hardlink", "symlink"),
                   help="folders: copy the files (default), or hard or symbolic links to them")
    p.add_argument("--no-identity", default="refuse", choices=("refuse", "own"),
                   help="samples without an identity: refuse the export (default) or one identity each")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty --out folder first")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_export, check=check_export)


def check_export(args: argparse.Namespace) -> None:
    """The export's options and output folder's form (core, no FiftyOne): refused before the
    database is opened."""
    from faceaudit import export, params

    export.check_options(args.format, args.link, args.exclude_tags or (), args.min_images, args.no_identity,
                         args.overwrite)
    params.out_folder(args.out)
