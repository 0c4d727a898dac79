"""``faceaudit identity``: mated / non-mated scores, uniqueness, collisions and leakage on ``face_embedding``."""

from __future__ import annotations

import argparse

from faceaudit import params
from faceaudit.identity_report import leak_line
from faceaudit.textsafe import printable

from .common import DEFAULT_DATASET, open_dataset


def cmd_identity(args: argparse.Namespace) -> int:
    from fiftyone_plugin import identity

    if args.clear:
        n = identity.clear_tags(open_dataset(args.dataset))
        print(f"identity tags removed from {n} samples")
        return 0
    from fiftyone_plugin.schema import check_outputs

    opts = identity.options(args.threshold, args.fmr, args.max_pairs, args.seed)
    wanted = {"json": args.json, "html": args.html, "csv": args.csv}
    params.output_files(wanted, overwrite=True)  # the paths' form, before opening the dataset
    dataset = open_dataset(args.dataset)
    outputs = check_outputs(dataset, wanted, overwrite=args.overwrite)  # never over a source's files
    result = identity.identity_audit(dataset, opts, tag=args.tag,
                                     similarity_index=not args.no_similarity_index)
    print(f"threshold {result['threshold']:.4g} ({result['threshold_rule']})")
    for source, s in result["sources"].items():
        if not s["applicable"]:
            print(f"  {printable(source)}: not applicable ({s['reason']})")
            continue
        print(f"  {printable(source)}: {s['identities']} identities, EER {_n(s['eer'])}, d' {_n(s['d_prime'])}, "
              f"uniqueness {_n(s['uniqueness'])}, consistency {_n(s['consistency'])}, "
              f"{s['collision_pairs']} colliding pairs")
    for source, leak in result["leakage"].items():
        if leak.get("applicable"):
            print(f"  leakage {printable(source)}: {leak_line(leak)}")
    if args.tag:
        print("tagged: " + ", ".join(f"{k} {v}" for k, v in result["tagged"].items()))
    elif result.get("untagged"):
        u = result["untagged"]
        print(f"removed the earlier audit's identity tags from {u['samples']} samples and its views "
              f"({', '.join(u['views']) or 'none'}): they would contradict this result (--tag tags again)")
    if (result.get("visualization") or {}).get("skipped"):
        print(f"{result['visualization']['brain_key']} not made: {result['visualization']['skipped']}")
    for path in identity.write_reports(result, outputs["json"], outputs["html"], outputs["csv"]):
        print(f"wrote {path}")
    return 0


def _n(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def register(sub) -> None:
    """Add this module's sub-command to ``sub``."""
    p = sub.add_parser("identity", help="identity audit on face_embedding: genuine/impostor scores, EER, "
                                        "uniqueness, collisions, leakage of real identities",
                       description="Audit the identities of every source on its face embeddings (faceaudit "
                       "embed first): genuine (mated) and impostor (non-mated) cosine scores, EER, FNMR at "
                       "FMR 1e-2/1e-3/1e-4, d', FDR, DCFace's uniqueness and consistency, collisions (two "
                       "identities that are one person), images that do not belong to their identity, and "
                       "synthetic identities that copy a real one. The threshold is --threshold, or the one "
                       "at --fmr of the real impostor scores, or the embedding model's default. The result is "
                       "stored in dataset.info and shown by the App's identity audit panel. docs/identity.md")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help=f"the dataset (default: {DEFAULT_DATASET})")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--threshold", metavar="T", help="cosine threshold in [-1, 1]")
    rule.add_argument("--fmr", metavar="F", help="threshold at this FMR of the real impostor scores, in (0, 1)")
    p.add_argument("--max-pairs", metavar="N", help="impostor pairs per source (all while at most N; else a "
                                                    "seeded uniform sample of N); default 1,000,000")
    p.add_argument("--seed", metavar="S", default=0, help="seed of the impostor sample (default 0)")
    p.add_argument("--json", metavar="OUT", help="write the whole result as JSON")
    p.add_argument("--html", metavar="OUT", help="write the audit as an HTML page (charts, tables; opens offline)")
    p.add_argument("--csv", metavar="OUT", help="write one row per source and metric")
    p.add_argument("--overwrite", action="store_true", help="replace existing files faceaudit did not write "
                                                            "(never a loaded source's files)")
    p.add_argument("--tag", action="store_true", help="tag identity_leak / identity_collision / identity_outlier "
                                                      "and save their views")
    p.add_argument("--clear", action="store_true", help="remove the identity tags and views")
    p.add_argument("--no-similarity-index", action="store_true",
                   help="do not register face_embedding as the Brain similarity index face_similarity, "
                        "nor its 2-D map face_map for the App's Embeddings panel")
    p.set_defaults(func=cmd_identity, check=check_identity)


def check_identity(args: argparse.Namespace) -> None:
    """The audit's numbers (core, no FiftyOne): refused before the database is opened."""
    from faceaudit import identity as core

    if not args.clear:
        core.audit_options(args.threshold, args.fmr, args.max_pairs, args.seed)
