"""The ``faceaudit`` command line: one module per command (or group) under ``cli/``, each a thin
door calling the same function as its operator; this module only assembles and dispatches them."""

from __future__ import annotations

import argparse
import sys

from faceaudit.params import ParamError
from faceaudit.textsafe import printable

from . import annotate, compare, embed, export, identity, labels, load, outliers, rebalance, run, train
from .common import database_address, database_fault, fiftyone_env
from .run import app_hint  # noqa: F401  (part of the CLI's Python surface)

COMMANDS = (load, labels, train, annotate, embed, compare, outliers, identity, rebalance, export, run)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a refused command line is one line (``faceaudit embed: error: --batch-size:
    invalid int value: '1e9'``), as every other refusal is, not the usage block above it; the
    sub-commands' parsers are of this class too (``add_subparsers`` makes them so)."""

    def error(self, message: str):
        message = message.replace("argument ", "", 1) if message.startswith("argument -") else message
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="faceaudit", description="Audit real and synthetic face-recognition datasets with FiftyOne."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    stdout, sys.stdout = sys.stdout, _PrintableOut(sys.stdout)
    try:
        if getattr(args, "check", None):  # a command's own checks of its numbers and names,
            args.check(args)  # before the database is found or started (seconds) and FiftyOne imported
        fiftyone_env()  # before any command imports FiftyOne
        return args.func(args)
    except (ValueError, OSError, RuntimeError) as e:  # our errors name the path/value
        if database_fault(e) is None:
            print(f"faceaudit {args.command}: error: {printable(in_cli_words(e, parser, args))}", file=sys.stderr)
            return 2
        return _lost_database(args.command, e)
    except Exception as e:
        if database_fault(e) is None:
            raise
        return _lost_database(args.command, e)
    except KeyboardInterrupt:
        print(f"faceaudit {args.command}: interrupted; run it again to continue", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


def in_cli_words(error: BaseException, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``error``'s message as the CLI says it: a :class:`faceaudit.params.ParamError` about an
    argument the command has as an option names that option (``--batch-size: must be at least
    1``), as the App's forms name their fields by their labels."""
    if isinstance(error, ParamError):
        option = _options(parser, args).get(error.param)
        if option is not None:
            return error.named(option)
    return str(error)


def _options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """{dest: its long option} of the command (and sub-command) ``args`` ran."""
    options = {}
    while parser is not None:
        chosen = None
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(args, action.dest, None) or "")
            elif action.option_strings and action.dest not in options:
                options[action.dest] = max(action.option_strings, key=len)
        parser = chosen
    return options


def _lost_database(command: str, error: BaseException) -> int:
    """One line for a database that went away mid-command (instead of pymongo's traceback)."""
    fault = database_fault(error)
    detail = printable(str(fault).split(",")[0].split(" (configured timeouts")[0])[:120]
    print(f"faceaudit {command}: error: the connection to the database at {database_address()} was lost "
          f"({type(fault).__name__}: {detail}); what was written is kept: once the database is "
          f"back, run the same command again to continue", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
