"""``faceaudit run``: the whole study from a config, or the demo."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from .common import DEFAULT_DATASET, DEMO_DIR, Bar, fiftyone_env


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

        config = demo_config(args.dir,
                             params.name("dataset", DEFAULT_DATASET if args.dataset is None else args.dataset))
    fiftyone_env()
    from fiftyone_plugin.pipeline import open_app, run_study

    bar = Bar("unit", args.quiet)
    try:
        study = run_study(config, bar, echo=bar.write)
    finally:
        bar.close()
    for step, what in study.steps.items():
        if what:
            print(f"{step}: {what}")
    print(study.summary_table)
    print("nothing new: the study was already complete" if study.nothing_new else
          f"done: dataset '{study.dataset}'")
    print(f"open it in the App with:  {app_hint(args)}")
    from fiftyone_plugin.registration import plugin_problem

    problem = plugin_problem()
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    if args.app:
        open_app(study.dataset)
    return 0


def app_hint(args: argparse.Namespace) -> str:
    """The command that opens this run's dataset in the App (the same run again, with ``--app``)."""
    given = [args.config] if args.config else []
    given += [f"--{o} {shlex.quote(getattr(args, o))}" for o in ("dir", "dataset") if getattr(args, o)]
    return " ".join([f"{faceaudit_command()} run", *given, "--app"])


def faceaudit_command() -> str:
    """How the user started faceaudit, as a command that works from any folder: the script's
    absolute path when it was started by path (``.venv/bin/faceaudit``), else ``faceaudit``."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "faceaudit" and os.sep in script:
        return shlex.quote(os.path.abspath(script))
    return "faceaudit"


def register(sub) -> None:
    """Add this module's sub-command(s) to ``sub``."""
    run = sub.add_parser(
        "run", aliases=["demo"],
        help="the whole study from a config (load, annotate, compare, outliers, reports); no config: the demo",
        description="Run the study a TOML config describes (see study.toml); each step skips what is "
        "done, so a rerun continues after an interruption and a finished study reruns as a no-op. "
        "Without a config: the demo (real LFW faces via scikit-image, offline age/gender labels).",
    )
    run.add_argument("config", nargs="?", help="study config (TOML); default: the demo")
    run.add_argument("--dir", help=f"demo only: where to write the demo images and report (default: {DEMO_DIR}, "
                     "the same from every working folder)")
    run.add_argument("--dataset", help=f"demo only: the dataset (default: {DEFAULT_DATASET}; a config names its own)")
    run.add_argument("--app", action="store_true", help="open the App on the dataset with the panel when done")
    run.add_argument("--quiet", action="store_true")
    run.set_defaults(func=cmd_run)
