"""``faceaudit train-mac``: train a Massive Attribute Classifier."""

from __future__ import annotations

import argparse
import json

from .common import run_job


def cmd_train_mac(args: argparse.Namespace) -> int:
    from faceaudit.training import iter_train

    config = {}
    if args.embedding_size:
        config["embedding_size"] = args.embedding_size
    if args.hidden:
        config["hidden"] = tuple(args.hidden)
    if args.branch_hidden:
        config["branch_hidden"] = args.branch_hidden
    report = run_job(iter_train(
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


def register(sub) -> None:
    """Add this module's sub-command(s) to ``sub``."""
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
