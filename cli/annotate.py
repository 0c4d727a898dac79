"""``faceaudit annotate`` / ``status``: label faces with a MAC (resumable, sharded, delegated)."""

from __future__ import annotations

import argparse
import json

from .common import DEFAULT_DATASET, fiftyone_env, local_run_device, run_job


def cmd_annotate(args: argparse.Namespace) -> int:
    from faceaudit import params

    shard = params.shard(args.shard)
    device = params.device(args.device)
    shards = params.shards(args.shards)
    stale_after = params.seconds("stale_after", args.stale_after)
    if args.delegate:
        return _delegate(args, device, shards, stale_after)
    device = local_run_device(args, device)
    from fiftyone_plugin.annotate import iter_annotate

    report = run_job(iter_annotate(
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
    fiftyone_env()
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
    fiftyone_env()
    from fiftyone_plugin.fanout import shard_status

    from fiftyone_plugin.runs import delegated_runs, runs_summary, runs_to_list

    report = shard_status(args.dataset, shards, source=args.source)
    runs = delegated_runs(args.dataset)  # every kind: load, annotate, compare, ...
    print(json.dumps({**report.to_dict(), "operations": runs_to_list(runs)}, indent=2) if args.json
          else f"{report.summary()}\n{runs_summary(runs)}")
    return 0


def register(sub) -> None:
    """Add this module's sub-command(s) to ``sub``."""
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

    status = sub.add_parser("status", help="what is left to label, per shard, and every delegated faceaudit operation's state and error")
    status.add_argument("--dataset", default=DEFAULT_DATASET)
    status.add_argument("--source", help="only this source")
    status.add_argument("--shards", metavar="N", help="count left in N shards (default: the last --delegate's N)")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
