"""Attribute label files: MAAD-Face's CSV (in and out) and CelebA's ``list_attr_celeba.txt`` (in).

States are held as int8 arrays of shape ``(n, 47)`` in MAAD column order (:data:`ATTRIBUTES`):
``1`` positive, ``-1`` negative, ``0`` undefined / unknown, exactly MAAD-Face's encoding.

Files saved by spreadsheet programs begin with a UTF-8 byte-order mark: it is skipped. The
``Filename`` and ``Identity`` cells written here are neutralised against formula injection
(:func:`faceaudit.textsafe.csv_cell`) and read back to the original text.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .attributes import ATTRIBUTES
from .textsafe import csv_cell, csv_uncell

MAAD_HEADER = ("Filename", "Identity", *ATTRIBUTES)

#: CelebA attributes with the same meaning as a MAAD attribute of the same name.
CELEBA_SHARED = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male",
    "Mustache", "No_Beard", "Oval_Face", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necktie", "Young",
)
#: MAAD attribute <- the negation of a CelebA attribute.
CELEBA_NEGATED = {"Mouth_Closed": "Mouth_Slightly_Open", "No_Eyewear": "Eyeglasses"}


class LabelFileError(ValueError):
    """A label file that cannot be read; the message names the file, the line and the problem."""


@dataclass
class LabelTable:
    """Rows of a label file: file names (relative), identities and the ``(n, 47)`` int8 states."""

    filenames: list[str]
    identities: list[str]
    states: np.ndarray

    def __len__(self) -> int:
        return len(self.filenames)


def read_maad_csv(path: str) -> LabelTable:
    """Read a MAAD-Face annotation CSV, validating every row before returning any."""
    filenames, identities, rows = [], [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise LabelFileError(f"{path}: empty file (expected a MAAD-Face CSV header)")
        header = [h.strip() for h in header]
        if tuple(header) != MAAD_HEADER:
            raise LabelFileError(f"{path}: line 1: {_header_problem(header)}")
        allowed = {"1": 1, "-1": -1, "0": 0}
        for row in reader:
            lineno = reader.line_num
            if not row:
                continue
            if len(row) != len(MAAD_HEADER):
                raise LabelFileError(
                    f"{path}: line {lineno}: {len(row)} columns, expected {len(MAAD_HEADER)}"
                )
            try:
                values = [allowed[v.strip()] for v in row[2:]]
            except KeyError:
                bad = next((a, v) for a, v in zip(ATTRIBUTES, row[2:]) if v.strip() not in allowed)
                raise LabelFileError(
                    f"{path}: line {lineno}: {bad[0]} is {bad[1]!r}; values must be 1, -1 or 0"
                ) from None
            if not row[0].strip():
                raise LabelFileError(f"{path}: line {lineno}: empty Filename")
            # names are kept as written: folders may begin or end with a space, and what
            # write_maad_csv wrote must read back (the csv module already took the line ends)
            filenames.append(csv_uncell(row[0]))
            identities.append(csv_uncell(row[1]))
            rows.append(values)
    states = np.array(rows, dtype=np.int8).reshape(len(rows), len(ATTRIBUTES))
    return LabelTable(filenames, identities, states)


def _header_problem(header: list[str]) -> str:
    if header[:2] != ["Filename", "Identity"]:
        return f"the first columns must be Filename, Identity (got {', '.join(header[:2])})"
    got = header[2:]
    missing = [a for a in ATTRIBUTES if a not in got]
    unknown = [a for a in got if a not in ATTRIBUTES]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing attribute columns {', '.join(missing[:5])}")
        if unknown:
            parts.append(f"unknown columns {', '.join(unknown[:5])}")
        return "; ".join(parts)
    return "attribute columns are not in MAAD-Face order"


def write_maad_csv(path: str, rows: Iterable[tuple[str, str, Iterable[int]]]) -> int:
    """Write ``(filename, identity, 47 states)`` rows as a MAAD-Face CSV; returns the row count."""
    n = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(MAAD_HEADER)
        for filename, identity, states in rows:
            writer.writerow([csv_cell(filename), csv_cell(identity), *(int(s) for s in states)])
            n += 1
    return n


def read_celeba_attributes(path: str) -> LabelTable:
    """Read CelebA's ``list_attr_celeba.txt`` and map it onto the MAAD attributes.

    Shared names are copied, ``Mouth_Closed`` and ``No_Eyewear`` are the negations of
    ``Mouth_Slightly_Open`` and ``Eyeglasses``, and MAAD attributes CelebA lacks are 0 (unknown,
    masked out of training). CelebA has no identities in this file: they are left empty.
    """
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise LabelFileError(f"{path}: line 1: expected the image count of list_attr_celeba.txt")
    names = lines[1].split()
    if "Male" not in names:
        raise LabelFileError(f"{path}: line 2: expected CelebA attribute names, got {lines[1][:60]!r}")
    column = {n: i for i, n in enumerate(names)}
    filenames, rows = [], []
    for lineno, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            raise LabelFileError(f"{path}: line {lineno}: {len(parts) - 1} values, expected {len(names)}")
        try:
            values = [int(v) for v in parts[1:]]
        except ValueError:
            raise LabelFileError(f"{path}: line {lineno}: values must be 1 or -1") from None
        if any(v not in (1, -1) for v in values):
            raise LabelFileError(f"{path}: line {lineno}: values must be 1 or -1")
        filenames.append(parts[0])
        rows.append(values)
    celeba = np.array(rows, dtype=np.int8).reshape(len(rows), len(names))
    states = np.zeros((len(rows), len(ATTRIBUTES)), dtype=np.int8)
    for j, attr in enumerate(ATTRIBUTES):
        if attr in CELEBA_SHARED and attr in column:
            states[:, j] = celeba[:, column[attr]]
        elif attr in CELEBA_NEGATED and CELEBA_NEGATED[attr] in column:
            states[:, j] = -celeba[:, column[CELEBA_NEGATED[attr]]]
    return LabelTable(filenames, [""] * len(filenames), states)


def read_label_file(path: str) -> LabelTable:
    """A MAAD-Face CSV or a CelebA attribute list, told apart by their first line."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline().strip()
    if first.isdigit():
        return read_celeba_attributes(path)
    return read_maad_csv(path)
