"""The ``faceaudit`` command line: a door beside the App's operators and panels.

Each sub-command parses its arguments and calls the same core or adapter function as the
matching operator; nothing here is imported by the core (``src/faceaudit``).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
