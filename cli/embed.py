"""``faceaudit embed``: face embeddings per sample (dlib, an IResNet backbone.pth or an ONNX model;
resumable, sharded, delegated)."""

from __future__ import annotations

import argparse
import json

from .common import DEFAULT_DATASET, fiftyone_env, local_run_device, run_job


def cmd_embed(args: argparse.Namespace) -> int:
    from faceaudit import params

    shard = params.shard(args.shard)
    device = params.device(args.device)
    shards = params.shards(args.shards)
    if args.delegate:
        if args.shard is not None:
            raise params.ParamError("shard", "--delegate queues every shard itself: leave --shard out")
        overwrite = params.overwrite(args.overwrite, shards)
        fiftyone_env()
        from fiftyone_plugin.embed import fan_out_embed

        operator_params = {"model": args.model, "checkpoint": args.checkpoint, "detect": args.detect,
                           "flip": args.flip, "device": device, "batch_size": args.batch_size,
                           "workers": args.workers, "overwrite": overwrite}
        report = fan_out_embed(args.dataset, shards, operator_params, source=args.source)
        print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
        return 0
    device = local_run_device(args, device)
    from fiftyone_plugin.embed import iter_embed

    report = run_job(iter_embed(
        args.dataset, model=args.model, checkpoint=args.checkpoint, source=args.source, detect=args.detect,
        flip=args.flip, device=device, batch_size=args.batch_size, workers=args.workers, shard=shard,
        overwrite=args.overwrite,
    ), "batch", args.quiet)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0


def register(sub) -> None:
    """Add this module's sub-command to ``sub``."""
    emb = sub.add_parser("embed", help="face embeddings per sample (field face_embedding; resumable)")
    emb.add_argument("--dataset", default=DEFAULT_DATASET)
    emb.add_argument("--source", help="only this source")
    emb.add_argument("--model", default="dlib", choices=["dlib", "iresnet", "onnx"],
                     help="dlib (offline, 128-d), iresnet (an InsightFace backbone.pth or an AdaFace .ckpt) "
                          "or onnx (a face model)")
    emb.add_argument("--checkpoint", help="iresnet: backbone.pth (or AdaFace's .ckpt); onnx: the .onnx file")
    emb.add_argument("--detect", action="store_true",
                     help="dlib: detect the face first (photos, not aligned crops); no face: tagged no_face")
    emb.add_argument("--flip", action="store_true", help="iresnet/onnx: add the flipped image's embedding")
    emb.add_argument("--device", default="auto", help="auto, cpu or cuda")
    emb.add_argument("--batch-size", type=int, default=64)
    emb.add_argument("--workers", type=int, help="image-reading processes (default: min(8, cores))")
    emb.add_argument("--shard", metavar="I/N", help="embed only shard I of N (a fixed hash of each sample's id); "
                     "'auto' from RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS")
    emb.add_argument("--delegate", action="store_true",
                     help="queue delegated operations for `fiftyone delegated launch` workers instead")
    emb.add_argument("--shards", metavar="N", help="with --delegate: one operation per shard of N")
    emb.add_argument("--overwrite", action="store_true",
                     help="drop every stored vector first (needed to change model, checkpoint, --detect or --flip)")
    emb.add_argument("--json", action="store_true")
    emb.add_argument("--quiet", action="store_true")
    emb.set_defaults(func=cmd_embed)
