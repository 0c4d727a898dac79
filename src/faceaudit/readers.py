"""Readers for the on-disk layouts face-recognition datasets ship in.

Every reader turns a path into a :class:`Scan`: a description of what was found plus a list of
work *units* (an identity folder, a slice of a flat folder, a slice of a RecordIO file). Units are
listed cheaply up front, so that loaders can show real progress, and each unit is expanded into
:class:`FaceRecord` ``(filepath, identity, group)`` records only when it is loaded.

Layouts (``--format``):

``folders``  ``<root>/<identity>/<image>`` (IDiff-Face, SFace, HyperFace, CASIA-style dumps)
``bupt``     ``<root>/images/race_per_7000/<Race>/<identity>/<image>`` (and ``race_unbalance``);
             the race folder becomes ``group``
``nested``   ``<root>/<group>/<identity>/<image>`` (GANDiffFace-style demographic folders)
``flat``     ``<root>/<image>``: no identities
``rec``      InsightFace ``train.rec`` + ``train.idx``; images are extracted to a folder
``auto``     detects which of the above applies

Pure Python and numpy-free: nothing here imports FiftyOne or torch.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .images import IMAGE_EXTENSIONS, is_image_name, sniff_format
from .recordio import RecordIOReader, find_recordio_pair

FORMATS = ("folders", "bupt", "nested", "flat", "rec")
BUPT_SUBSETS = ("race_per_7000", "race_unbalance")
FLAT_CHUNK = 5000
REC_CHUNK = 5000


class LayoutError(ValueError):
    """A dataset path that cannot be read as the requested layout; the message names the path."""


@dataclass(frozen=True)
class FaceRecord:
    """One face image: where it is, whose it is (if known) and its group (race folder, ...)."""

    filepath: str
    identity: str | None
    group: str | None


class Tally:
    """Entries counted by reason, with a few example paths per reason (printable, shortened)."""

    EXAMPLES = 5

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, path: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.EXAMPLES:
            examples.append(display_path(path))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_list(self) -> list[dict]:
        """``[{"reason", "count", "examples"}]``, the most frequent reason first."""
        return [{"reason": r, "count": n, "examples": list(self.examples[r])}
                for r, n in sorted(self.counts.items(), key=lambda item: -item[1])]


@dataclass
class ScanStats:
    """Counts gathered while listing and expanding units: files that are not images, and
    entries that cannot be read (``problems``: a loop, a locked folder, an undecodable name...);
    both are left out of the load, never a reason to stop it."""

    skipped_non_image: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    problems: Tally = field(default_factory=Tally)

    def skip(self, path: str) -> None:
        self.skipped_non_image += 1
        if len(self.skipped_examples) < 5:
            self.skipped_examples.append(display_path(path))


@dataclass(frozen=True)
class FolderUnit:
    """Images under ``directory`` (recursively), all of one identity and group."""

    directory: str
    identity: str | None
    group: str | None


@dataclass(frozen=True)
class FileListUnit:
    """Explicit image files of a flat folder."""

    paths: tuple[str, ...]


@dataclass(frozen=True)
class RecUnit:
    """A slice of a RecordIO file's image records, to be extracted under ``extract_to``."""

    reader: RecordIOReader
    keys: tuple[int, ...]
    extract_to: str


Unit = FolderUnit | FileListUnit | RecUnit


@dataclass
class Scan:
    """What a reader found at ``root``: the layout, a human description and the work units."""

    format: str
    root: str
    units: list[Unit]
    description: str
    stats: ScanStats = field(default_factory=ScanStats)

    def iter_records(self, unit: Unit) -> Iterator[FaceRecord]:
        """Expand one unit into records, counting skipped non-image files in ``self.stats``."""
        if isinstance(unit, FolderUnit):
            for path in _walk_files(unit.directory, self.stats):
                if is_image_name(path):
                    yield FaceRecord(path, unit.identity, unit.group)
                else:
                    self.stats.skip(path)
        elif isinstance(unit, FileListUnit):
            for path in unit.paths:
                yield FaceRecord(path, None, None)
        else:
            yield from _extract_rec_unit(unit)

    def iter_all(self) -> Iterator[FaceRecord]:
        for unit in self.units:
            yield from self.iter_records(unit)


# ----------------------------------------------------------------------------- helpers


#: Why an entry of a folder is left out of a load (the report groups entries by these).
SYMLINKED_FOLDER = "symbolic link to a folder (not followed)"
SYMLINK_LOOP = "symbolic link loop"
BROKEN_LINK = "broken symbolic link"
NOT_UTF8 = "name is not valid UTF-8"
TOO_LONG = "path longer than the system limit"
_ERRNO_REASONS = {
    errno.ELOOP: SYMLINK_LOOP,
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: TOO_LONG,
}
try:
    PATH_MAX = os.pathconf("/", "PC_PATH_MAX")
except (OSError, ValueError, AttributeError):
    PATH_MAX = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def display_path(path: str, limit: int = 160) -> str:
    """``path`` as printable text: undecodable bytes and control characters escaped
    (``\\xe9``), and the middle of a very long path left out."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if len(text) > limit:
        text = f"{text[:limit // 3]}...({len(text)} characters)...{text[-(limit // 2):]}"
    return text


def _os_reason(error: OSError) -> str:
    return _ERRNO_REASONS.get(error.errno, f"cannot read ({error.strerror or error})")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by Python as lone surrogates
        return False
    return True


def _entries(directory: str, stats: ScanStats) -> list[os.DirEntry]:
    """The entries of ``directory`` sorted by name; a folder that cannot be listed is counted
    in ``stats`` and reads as empty."""
    try:
        with os.scandir(directory) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as e:
        stats.problems.add(_os_reason(e), directory)
        return []


def _kind(entry: os.DirEntry, stats: ScanStats, follow_links: bool = False) -> str | None:
    """``"dir"`` or ``"file"``; None for an entry left out (counted in ``stats`` with its reason
    when it is a problem). Symbolic links to files are followed; to folders, only where
    ``follow_links`` says (the layout's fixed-depth identity and group folders, never in the
    recursive walk: a link such as ``up -> ..`` would walk the same images forever), and never
    to a folder that holds the link."""
    if not _is_utf8(entry.name):
        stats.problems.add(NOT_UTF8, entry.path)
        return None
    try:
        if entry.is_symlink():
            if entry.is_dir():  # follows the link: raises ELOOP for a loop
                if follow_links and not _points_up(entry.path):
                    return "dir"
                stats.problems.add(SYMLINK_LOOP if follow_links else SYMLINKED_FOLDER, entry.path)
                return None
            if not entry.is_file():
                stats.problems.add(BROKEN_LINK, entry.path)
                return None
            kind = "file"
        elif entry.is_dir(follow_symlinks=False):
            kind = "dir"
        elif entry.is_file(follow_symlinks=False):
            kind = "file"
        else:
            return None  # sockets, fifos, devices
    except OSError as e:
        stats.problems.add(_os_reason(e), entry.path)
        return None
    if kind == "file" and len(os.fsencode(entry.path)) >= PATH_MAX:
        stats.problems.add(TOO_LONG, entry.path)
        return None
    return kind


def _points_up(link: str) -> bool:
    """True if the folder symlink ``link`` leads to the folder that holds it, or above."""
    target, parent = os.path.realpath(link), os.path.realpath(os.path.dirname(link))
    return parent == target or parent.startswith(target.rstrip(os.sep) + os.sep)


def _walk_files(directory: str, stats: ScanStats) -> Iterator[str]:
    """All files under ``directory``, sorted within each folder, following no symlinked dirs;
    entries that cannot be read are counted in ``stats`` and left out."""
    stack = [directory]
    while stack:
        subdirs = []
        for e in _entries(stack.pop(), stats):
            kind = _kind(e, stats)
            if kind == "dir":
                subdirs.append(e.path)
            elif kind == "file":
                yield e.path
        stack.extend(reversed(subdirs))


def _list_dir(path: str, stats: ScanStats | None = None) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """(sub-folders, files) of ``path``, sorted by name; hidden entries are left out, and so
    are entries that cannot be read (counted in ``stats``). Symlinked sub-folders are followed
    (a dataset assembled from links), unless they lead back up."""
    stats = ScanStats() if stats is None else stats
    dirs, files = [], []
    for e in _entries(path, stats):
        if e.name.startswith("."):
            continue
        kind = _kind(e, stats, follow_links=True)
        if kind == "dir":
            dirs.append(e)
        elif kind == "file":
            files.append(e)
    return dirs, files


def _has_images(path: str) -> bool:
    """True if ``path`` directly holds an image file (a folder that cannot be read: False)."""
    return any(is_image_name(f.name) for f in _list_dir(path)[1])


def check_root(path: str) -> str:
    if not _is_utf8(path):
        raise LayoutError(f"{display_path(path)}: {NOT_UTF8}; rename it")
    if not os.path.exists(path):
        raise LayoutError(f"{display_path(path)}: no such file or folder")
    if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
        raise LayoutError(f"{display_path(path)}: cannot list folder (permission denied)")
    return os.path.abspath(path)


def _require_dir(path: str, layout: str) -> None:
    if not os.path.isdir(path):
        raise LayoutError(f"{path}: is a file, but the '{layout}' layout needs a folder")


# ----------------------------------------------------------------------------- layouts


def scan_folders(path: str) -> Scan:
    """``<root>/<identity>/<images>``: one unit per identity folder."""
    root = check_root(path)
    _require_dir(root, "folders")
    stats = ScanStats()
    dirs, files = _list_dir(root, stats)
    units: list[Unit] = [FolderUnit(d.path, d.name, None) for d in dirs]
    for f in files:  # files beside the identity folders belong to no identity
        stats.skip(f.path)
    if not units:
        raise LayoutError(f"{root}: no identity folders found (expected <root>/<identity>/<image>)")
    return Scan("folders", root, units, f"{len(units)} identity folders", stats)


def _bupt_race_roots(root: str) -> list[str]:
    """The race_per_7000 / race_unbalance folders that ``root`` is, or holds."""
    if os.path.basename(root.rstrip("/")) in BUPT_SUBSETS:
        return [root]
    found = []
    for base in (os.path.join(root, "images"), root):
        for sub in BUPT_SUBSETS:
            if os.path.isdir(os.path.join(base, sub)):
                found.append(os.path.join(base, sub))
        if found:
            break
    return found


def scan_bupt(path: str) -> Scan:
    """BUPT-BalancedFace / BUPT-GlobalFace: ``images/<subset>/<Race>/<identity>/<images>``."""
    root = check_root(path)
    _require_dir(root, "bupt")
    race_roots = _bupt_race_roots(root)
    if not race_roots:
        raise LayoutError(
            f"{root}: not a BUPT folder (expected images/race_per_7000/<Race>/<identity>/ "
            "or images/race_unbalance/<Race>/<identity>/)"
        )
    units: list[Unit] = []
    races = []
    stats = ScanStats()
    for race_root in race_roots:
        for race in _list_dir(race_root, stats)[0]:
            races.append(race.name)
            units.extend(FolderUnit(d.path, d.name, race.name) for d in _list_dir(race.path, stats)[0])
    if not units:
        raise LayoutError(f"{root}: BUPT folder without identity folders under its race folders")
    subsets = ", ".join(os.path.basename(r) for r in race_roots)
    return Scan(
        "bupt", root, units,
        f"BUPT ({subsets}): {len(units)} identities in races {', '.join(sorted(set(races)))}", stats,
    )


def scan_nested(path: str) -> Scan:
    """``<root>/<group>/<identity>/<images>`` (GANDiffFace-style demographic folders)."""
    root = check_root(path)
    _require_dir(root, "nested")
    units: list[Unit] = []
    stats = ScanStats()
    groups = _list_dir(root, stats)[0]
    for g in groups:
        units.extend(FolderUnit(d.path, d.name, g.name) for d in _list_dir(g.path, stats)[0])
    if not units:
        raise LayoutError(
            f"{root}: no identity folders inside group folders (expected <root>/<group>/<identity>/<image>)"
        )
    return Scan("nested", root, units, f"{len(units)} identity folders in {len(groups)} groups", stats)


def scan_flat(path: str) -> Scan:
    """A folder of images with no identities (searched recursively)."""
    root = check_root(path)
    _require_dir(root, "flat")
    stats = ScanStats()
    images = []
    for p in _walk_files(root, stats):
        if is_image_name(p):
            images.append(p)
        else:
            stats.skip(p)
    if not images:
        raise LayoutError(f"{root}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    units: list[Unit] = [
        FileListUnit(tuple(images[i:i + FLAT_CHUNK])) for i in range(0, len(images), FLAT_CHUNK)
    ]
    return Scan("flat", root, units, f"{len(images)} images without identities", stats)


def scan_rec(path: str, extract_to: str | None) -> Scan:
    """InsightFace ``train.rec`` + ``train.idx``; images go to ``extract_to/<identity>/<key>.<ext>``."""
    root = check_root(path)
    pair = find_recordio_pair(root)
    if pair is None:
        raise LayoutError(f"{root}: no .rec file found (expected train.rec and train.idx)")
    reader = RecordIOReader(*pair)
    if not extract_to:
        raise LayoutError(
            f"{pair[0]}: RecordIO images must be extracted to files for FiftyOne: give --extract-to DIR"
        )
    extract_to = os.path.abspath(extract_to)
    keys = reader.image_keys
    units: list[Unit] = [
        RecUnit(reader, tuple(keys[i:i + REC_CHUNK]), extract_to) for i in range(0, len(keys), REC_CHUNK)
    ]
    if not units:
        raise LayoutError(f"{pair[0]}: the RecordIO file holds no image records")
    return Scan(
        "rec", extract_to, units,
        f"RecordIO {os.path.basename(pair[0])}: {len(keys)} images, extracted to {extract_to}",
    )


def _extract_rec_unit(unit: RecUnit) -> Iterator[FaceRecord]:
    """Write a unit's images as files (atomically; existing complete files are kept)."""
    made_dirs: set[str] = set()
    for img in unit.reader.iter_images(unit.keys):
        identity = str(int(img.label)) if float(img.label).is_integer() else str(img.label)
        ext = {"jpeg": ".jpg", "png": ".png", "bmp": ".bmp", "webp": ".webp"}.get(
            sniff_format(img.data[:16]) or "", ".jpg"
        )
        directory = os.path.join(unit.extract_to, identity)
        if directory not in made_dirs:
            os.makedirs(directory, exist_ok=True)
            made_dirs.add(directory)
        target = os.path.join(directory, f"{img.key:08d}{ext}")
        if not (os.path.isfile(target) and os.path.getsize(target) == len(img.data)):
            tmp = f"{target}.part-{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(img.data)
            os.replace(tmp, target)
        yield FaceRecord(target, identity, None)


# ----------------------------------------------------------------------------- detection


def detect_format(path: str) -> tuple[str, str]:
    """Which layout ``path`` is in, and why: ``(format, reason)``."""
    root = check_root(path)
    if find_recordio_pair(root) is not None:
        return "rec", f"found {os.path.basename(find_recordio_pair(root)[0])}"
    if not os.path.isdir(root):
        raise LayoutError(f"{root}: is a file, not a dataset folder or a .rec file")
    if _bupt_race_roots(root):
        return "bupt", "found BUPT race folders"
    dirs, files = _list_dir(root)
    if any(is_image_name(f.name) for f in files) and not dirs:
        return "flat", "images directly in the folder, no sub-folders"
    probe = dirs[:20]
    if any(_has_images(d.path) for d in probe):
        return "folders", "sub-folders hold images: one folder per identity"
    if any(_has_images(dd.path) for d in probe for dd in _list_dir(d.path)[0][:5]):
        return "nested", "sub-folders hold identity folders of images"
    if any(is_image_name(f.name) for f in files):
        return "flat", "images directly in the folder"
    raise LayoutError(f"{root}: no images found in any known layout ({', '.join(FORMATS)})")


def scan(path: str, format: str = "auto", extract_to: str | None = None) -> Scan:
    """Scan ``path`` as ``format`` (or detect it) and return the work to load."""
    if format == "auto":
        format, reason = detect_format(path)
        result = scan(path, format, extract_to)
        result.description = f"detected '{format}' ({reason}): {result.description}"
        return result
    if format == "rec":
        return scan_rec(path, extract_to)
    scanners = {"folders": scan_folders, "bupt": scan_bupt, "nested": scan_nested, "flat": scan_flat}
    if format not in scanners:
        raise LayoutError(f"unknown format {format!r}: choose one of auto, {', '.join(FORMATS)}")
    return scanners[format](path)
