"""``faceaudit import-labels`` / ``export-labels``: MAAD-Face label files in and out."""

from __future__ import annotations

import argparse
import json

from .common import DEFAULT_DATASET, open_dataset


def cmd_import_labels(args: argparse.Namespace) -> int:
    from fiftyone_plugin.labels import import_labels

    report = import_labels(open_dataset(args.dataset), args.source, args.file)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def cmd_export_labels(args: argparse.Namespace) -> int:
    from fiftyone_plugin.labels import export_labels

    n = export_labels(open_dataset(args.dataset), args.file, source=args.source, overwrite=args.overwrite)
    print(f"{n} labelled samples written to {args.file}")
    return 0


def register(sub) -> None:
    """Add this module's sub-command(s) to ``sub``."""
    imp = sub.add_parser(
        "import-labels",
        help="label a source's samples from a MAAD-Face CSV (or CelebA list_attr_celeba.txt)",
        description="Columns Filename, Identity, then the 47 MAAD-Face attributes (1 / -1 / 0); "
        "Filename is relative to the folder the source was loaded from. The whole file is checked "
        "before anything is written.",
    )
    imp.add_argument("file")
    imp.add_argument("--dataset", default=DEFAULT_DATASET)
    imp.add_argument("--source", required=True, help="the source the file's images belong to")
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(func=cmd_import_labels)

    exp = sub.add_parser("export-labels", help="write the attribute labels as a MAAD-Face CSV")
    exp.add_argument("file")
    exp.add_argument("--dataset", default=DEFAULT_DATASET)
    exp.add_argument("--source", help="only this source (default: all)")
    exp.add_argument("--overwrite", action="store_true",
                     help="replace an existing file (never a dataset's image or a file in a source's folder)")
    exp.set_defaults(func=cmd_export_labels)
