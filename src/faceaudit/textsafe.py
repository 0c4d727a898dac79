"""Text that leaves faceaudit for a spreadsheet or a terminal, made harmless there.

* CSV: a spreadsheet runs a cell that begins with ``=``, ``+``, ``-``, ``@``, tab or CR as a
  formula (``=HYPERLINK(...)``, ``@SUM(1+1)``). :func:`csv_cell` prefixes such text cells with
  ``'`` (OWASP's rule), and also a cell that already begins with ``'``, so that
  :func:`csv_uncell` gives back exactly the original text. Only text cells (names) go through
  it; the numeric ``1`` / ``-1`` / ``0`` label cells and numbers are written as they are.
* Terminal: names may hold escape sequences (clear the screen, set the window title) or
  newlines (forge output lines). :func:`printable` shows them escaped.
"""

from __future__ import annotations

import re

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CONTROL_BUT_LAYOUT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def csv_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text, never runs as a formula."""
    return _QUOTE + text if text.startswith((*FORMULA_START, _QUOTE)) else text


def csv_uncell(text: str) -> str:
    """The text :func:`csv_cell` was given (cells from other writers pass unchanged, unless they
    begin with ``'`` followed by a formula character or another ``'``)."""
    if text.startswith(_QUOTE) and text[1:].startswith((*FORMULA_START, _QUOTE)):
        return text[1:]
    return text


def printable(text: object, keep_layout: bool = False) -> str:
    """``text`` with control characters (ESC, CR, BEL, ..., and newlines and tabs unless
    ``keep_layout``) and lone surrogates shown as Python escapes, e.g. ``\\x1b``."""
    pattern = _CONTROL_BUT_LAYOUT if keep_layout else _CONTROL
    return pattern.sub(lambda m: ascii(m.group())[1:-1], str(text))
