"""``faceaudit load``: a face dataset from its native layout into the FiftyOne dataset."""

from __future__ import annotations

import argparse
import json

from faceaudit.presets import PRESETS

from .common import DEFAULT_DATASET, fiftyone_env, run_job


def _load(path: str, quiet: bool, **options):
    fiftyone_env()
    from fiftyone_plugin.ingest import iter_load

    return run_job(iter_load(path, **options), "unit", quiet)


def cmd_load(args: argparse.Namespace) -> int:
    report = _load(
        args.path,
        args.quiet,
        source=args.source,
        domain=args.domain,
        format=args.format,
        dataset_name=args.dataset,
        preset=args.preset,
        extract_to=args.extract_to,
        limit=args.limit,
        check_images=not args.no_check_images,
        max_pixels=args.max_pixels,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        if not report.detected:  # else the summary says what was detected
            print(report.description)
        print(report.summary())
        for line in report.details():
            print(line)
    return 0


def register(sub) -> None:
    """Add this module's sub-command(s) to ``sub``."""
    load = sub.add_parser(
        "load",
        help="load a face dataset from its native layout into the FiftyOne dataset",
        description="Load face images from identity folders, BUPT race folders, nested group "
        "folders, a flat folder or an InsightFace train.rec/.idx. Re-running adds only what is missing.",
    )
    load.add_argument("path", help="dataset folder, or a .rec file")
    load.add_argument("--dataset", default=DEFAULT_DATASET, help="FiftyOne dataset name (default: faces)")
    load.add_argument("--source", help="name of this source, e.g. bupt-balancedface (preset fills it)")
    load.add_argument("--domain", choices=("real", "synthetic"), help="real or synthetic (preset fills it)")
    load.add_argument(
        "--format", choices=("auto", "folders", "bupt", "nested", "flat", "rec"),
        help="on-disk layout (default: the preset's, else auto)",
    )
    load.add_argument("--preset", choices=sorted(PRESETS), help="a known dataset: fills source, domain, format")
    load.add_argument("--extract-to", help="folder to extract RecordIO images to (rec format)")
    load.add_argument("--limit", type=int, help="load at most N images")
    load.add_argument("--no-check-images", action="store_true",
                      help="do not read file headers/trailers to find damaged images")
    load.add_argument("--max-pixels", type=int, metavar="N",
                      help="images over N pixels (width x height) are tagged unreadable, not decoded "
                           "(default: 40000000)")
    load.add_argument("--json", action="store_true", help="print the load report as JSON")
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    load.set_defaults(func=cmd_load)
