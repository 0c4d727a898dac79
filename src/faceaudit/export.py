"""Export a cleaned face dataset in the layouts trainers read (no FiftyOne here).

Two layouts:

* ``folders``: ``DIR/<identity>/<file>``, the images byte-identical to the originals (copied, or
  hard links / symbolic links on request). Identity and file names are made safe as names of
  one folder level (:func:`safe_name`); names that collide (after that, or by case) get ``~2``,
  ``~3``, ... in the order the identities first appear, which the adapter fixes by sorting on
  ``(source, identity, filepath)``. No written path can leave ``DIR`` (checked for every file).
* ``rec``: InsightFace's RecordIO as ``arcface_torch``'s ``MXFaceDataset`` reads it:
  ``train.rec`` + ``train.idx`` + ``property`` (``<classes>,112,112``). Record 0 is a header
  with ``flag = 2`` and ``label = (N + 1, N + 1 + C)``; records ``1 .. N`` are the images with
  their class (contiguous 0..C-1, in order of first appearance) as float label; records
  ``N + 1 .. N + C`` are one per class with ``label = (first key, end key)`` of its images, as
  InsightFace's tools write them. ``MXFaceDataset`` decodes the bytes and does not resize, so
  every record must be a 112x112 image: an upright JPEG of 112x112 is kept byte-identical; any
  other image (PNG, another size, an EXIF orientation other than 1) is decoded, turned upright,
  resized to 112x112 (no crop: the faces are expected to be aligned crops already) and encoded
  as JPEG quality 95. The manifest counts these.

What goes in: every item of the view that is not tagged ``unreadable``, carries none of the
excluded tags, has a file that exists, and whose identity keeps at least ``min_images`` images
after those exclusions. Samples without an identity are refused (``no_identity="refuse"``, the
default) or each become an identity of their own (``"own"``).

Safe and resumable:

* ``DIR`` is refused when it is, lies inside or contains a protected folder (the dataset's
  source roots, :func:`check_out`) or holds an image of the view (links resolved), before
  anything is written; the adapter also refuses one holding any file of the dataset;
* one export per folder at a time (:func:`export_lock`, released by the kernel if killed);
* the items are read twice through ``items()`` (a callable returning a fresh iterator, in
  chunks): first to count (memory grows with the identities, not the images), then to write;
* ``DIR/.faceaudit-export.json`` names the export being written (a digest of the plan);
  ``train.rec``/``.idx``/``property`` and the manifests are written under hidden temporary
  names and renamed; ``manifest.csv`` then ``manifest.json`` come last, so a folder without
  ``manifest.json`` is never a finished export. Image files of ``folders`` are written at their
  names (as ``cp -r`` does, no rename per file); a resumed run keeps a file only if it
  is finished (a copy of the original's size, a hard link to its inode, a symbolic link to its
  path) and writes the others again;
* a rerun with the same plan into a finished export whose files are all still there
  (:func:`_intact`) changes nothing and says so; into an unfinished (or damaged) one it writes what is missing (folders) or rewrites ``train.rec`` (rec);
* a folder holding anything else (another export, other files) is refused unless ``overwrite``,
  which empties it first.
"""

from __future__ import annotations

import csv
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import struct
import unicodedata
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import __version__, params
from .images import buffer_reader, jpeg_orientation
from .progress import Progress
from .recordio import RecordIOWriter
from .textsafe import FORMULA_START, csv_cell

FORMATS = ("folders", "rec")
LINKS = ("copy", "hardlink", "symlink")
NO_IDENTITY = ("refuse", "own")
UNREADABLE_TAG = "unreadable"
REC_SIZE = 112
MANIFEST = "manifest.json"
MANIFEST_CSV = "manifest.csv"
MARKER = ".faceaudit-export.json"
LOCK = ".faceaudit-export.lock"
#: names an identity folder may not take (it would be renamed over, or hide, the export's own files)
RESERVED_NAMES = (MANIFEST, MANIFEST_CSV, MARKER, LOCK)
#: tags faceaudit itself assigns: excluding one is never a typo, even when no sample has it (yet)
KNOWN_TAGS = params.RESERVED_TAGS | {"outlier", "rebalanced"}
PART = ".part"
MAX_NAME_BYTES = 200
CHUNK = 2000


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says why (nothing was written)."""


@dataclass(frozen=True)
class Item:
    """One sample of the view: where its image is and what it is."""

    filepath: str
    source: str
    identity: str | None
    tags: tuple[str, ...] = ()


@dataclass
class Options:
    format: str = "folders"
    link: str = "copy"
    exclude_tags: tuple[str, ...] = ()
    min_images: int = 1
    no_identity: str = "refuse"
    overwrite: bool = False

    def to_dict(self) -> dict:
        return {"format": self.format, "link": self.link, "exclude_tags": list(self.exclude_tags),
                "min_images": self.min_images, "no_identity": self.no_identity}


@dataclass
class Result:
    out: str
    status: str  # "written", "resumed" or "unchanged"
    images: int
    identities: int
    left_out: dict[str, int]
    per_source: dict[str, dict]
    reencoded: int = 0
    manifest: str = ""

    def summary(self) -> str:
        what = {"written": "exported", "resumed": "finished (resumed)",
                "unchanged": "already exported: nothing changed"}[self.status]
        out = ", ".join(f"{n} {reason}" for reason, n in sorted(self.left_out.items())) or "nothing"
        return (f"{what}: {self.images} images of {self.identities} identities in {self.out}; "
                f"left out: {out}; manifest: {self.manifest}")

    def to_dict(self) -> dict:
        return {"out": self.out, "status": self.status, "images": self.images,
                "identities": self.identities, "left_out": self.left_out,
                "per_source": self.per_source, "reencoded": self.reencoded, "manifest": self.manifest}


def check_options(format: str = "folders", link: str = "copy", exclude_tags: Iterable[str] = (),
                  min_images=1, no_identity: str = "refuse", overwrite=False) -> Options:
    """Every export argument checked, through :mod:`faceaudit.params`, before anything is read."""
    from . import params

    return Options(
        format=params.choice("format", format, FORMATS, "folders"),
        link=params.choice("link", link, LINKS, "copy"),
        exclude_tags=tuple(params.name("exclude_tags", t) for t in (exclude_tags or ())),
        min_images=params.min_images(min_images),
        no_identity=params.choice("no_identity", no_identity, NO_IDENTITY, "refuse"),
        overwrite=bool(params.to_bool("overwrite", overwrite, False)),
    )


_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_PLAIN = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9_.+ -]{0,150}(?<![. ])$")  # safe as it is
_RESERVED = re.compile(r"^(con|prn|aux|nul|com\d|lpt\d)(\..*)?$", re.IGNORECASE)


def safe_name(name: str, fallback: str = "_") -> str:
    """``name`` as one safe folder or file name: no separators, control or Windows-reserved
    characters (each becomes ``_``), no leading dot or space (a hidden file, ``..``), no
    trailing dot or space, at most 200 UTF-8 bytes, NFC; empty becomes ``fallback``."""
    if _PLAIN.match(name) and not _RESERVED.match(name):
        return name
    text = _UNSAFE.sub("_", unicodedata.normalize("NFC", str(name)))
    text = "".join("_" if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") and c not in "\u200c\u200d"
                   else c for c in text)
    text = text.strip(" ")
    text = re.sub(r"^\.+", lambda m: "_" * len(m.group()), text).rstrip(". ")
    if _RESERVED.match(text):
        text = "_" + text
    return _cut(text) or fallback


def _cut(text: str) -> str:
    """``text`` cut to :data:`MAX_NAME_BYTES` UTF-8 bytes on a character, its extension (up to 16
    bytes) kept: a long ``….jpg`` must stay a ``.jpg`` for the loaders and trainers that read it."""
    if len(text.encode("utf-8")) <= MAX_NAME_BYTES:
        return text
    stem, ext = os.path.splitext(text)
    if not stem or len(ext.encode("utf-8")) > 16:
        stem, ext = text, ""
    while stem and len((stem + ext).encode("utf-8")) > MAX_NAME_BYTES:
        stem = stem[:-1]
    return stem.rstrip(". ") + ext if stem.rstrip(". ") else ""


class _Names:
    """Unique names in one folder: the second ``a`` (or ``A``) becomes ``a~2``, the third ``a~3``;
    ``reserved`` names count as taken from the start."""

    def __init__(self, reserved: Iterable[str] = ()):
        self.taken: set[str] = {name.casefold() for name in reserved}

    def add(self, wanted: str) -> str:
        stem, ext = os.path.splitext(wanted) if "." in wanted[1:] else (wanted, "")
        name, k = wanted, 1
        while name.casefold() in self.taken:
            k += 1
            name = f"{stem}~{k}{ext}"
        self.taken.add(name.casefold())
        return name


def _key(item: Item) -> tuple[str, str, bool]:
    """The identity an item belongs to: (source, identity); an item without one is its own."""
    if item.identity is None:
        return item.source or "", item.filepath, True
    return item.source or "", item.identity, False


@dataclass
class _Plan:
    """What pass 1 found: per identity its image count, in order of first appearance."""

    kept: dict[tuple, int] = field(default_factory=dict)  # identity -> images before min_images
    missing: dict[str, str] = field(default_factory=dict)  # filepath -> why it cannot be read
    left_out: dict[str, int] = field(default_factory=dict)
    digest: str = ""
    classes: dict[tuple, int] = field(default_factory=dict)
    folders: dict[tuple, str] = field(default_factory=dict)
    images: int = 0


def _reason(item: Item, options: Options, missing: dict[str, str]) -> str | None:
    """Why ``item`` is left out before the identity sizes are known, or None."""
    if UNREADABLE_TAG in item.tags:
        return "unreadable"
    for tag in options.exclude_tags:
        if tag in item.tags:
            return f"tag:{tag}"
    if item.filepath in missing:
        return "unreadable"
    return None


class _Where:
    """Where the view's files lie relative to ``out``, resolved as the kernel does (symbolic links
    followed, one ``realpath`` per folder): an image inside ``out`` would be emptied by
    ``--overwrite`` or exported into itself; a hard link cannot cross file systems."""

    def __init__(self, out: str, link: str):
        self.prefix = os.path.realpath(out) + os.sep
        self.device = os.stat(_existing(out)).st_dev if link == "hardlink" else None
        self.folders: dict[str, str] = {}
        self.inside, self.other_device = 0, None

    def note(self, path: str, st: os.stat_result | None) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        real = self.folders.get(folder)
        if real is None:
            real = self.folders[folder] = os.path.realpath(folder) + os.sep
        self.inside += real.startswith(self.prefix)
        if st is not None and self.device is not None and st.st_dev != self.device and self.other_device is None:
            self.other_device = path

    def check(self, out: str) -> None:
        """Refuse in one line what :meth:`note` found."""
        if self.inside:
            raise ExportError(f"{self.inside} images of the view lie inside {out}: export to a folder "
                              "outside the dataset's files")
        if self.other_device is not None:
            raise ExportError(f"--link hardlink: {self.other_device} is on another file system than {out} "
                              "(a hard link cannot cross file systems); use --link copy or --link symlink")


def _existing(path: str) -> str:
    """``path`` or its nearest folder above that exists."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _stat_file(path: str) -> tuple[os.stat_result | None, str | None]:
    """(its stat, None) for a regular file, else (None, why it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return None, "not a file" if os.path.lexists(path) else "no such file"
    return (st, None) if stat.S_ISREG(st.st_mode) else (None, "not a file")


def _plan(items: Callable[[], Iterable[Item]], options: Options, out: str) -> _Plan:
    """Pass 1 (reads only): what goes in, what is left out and why, the folders' names and the
    digest that names this export; refuses what cannot be exported."""
    plan = _Plan()
    where = _Where(out, options.link)
    digest = hashlib.sha256(json.dumps(options.to_dict(), sort_keys=True).encode())
    no_identity = 0
    for item in items():
        digest.update(f"{item.source}\0{item.identity}\0{item.filepath}\0{sorted(item.tags)}\n".encode())
        reason, st = _reason(item, options, plan.missing), None
        if reason is None:
            st, problem = _stat_file(item.filepath)
            if problem is not None:
                plan.missing[item.filepath], reason = problem, "unreadable"
        where.note(item.filepath, st)
        if reason is not None:
            plan.left_out[reason] = plan.left_out.get(reason, 0) + 1
            continue
        key = _key(item)
        no_identity += key[2]
        plan.kept[key] = plan.kept.get(key, 0) + 1
    where.check(out)
    if no_identity and options.no_identity == "refuse":
        raise ExportError(f"{no_identity} samples of the view have no identity: filter them out, or "
                          "export each as an identity of its own (--no-identity own)")
    _classes(plan, options)
    plan.digest = digest.hexdigest()
    return plan


def _classes(plan: _Plan, options: Options) -> None:
    """The identities that keep ``min_images``: their class (in order of first appearance) and
    folder name (safe, unique, never one of the export's own :data:`RESERVED_NAMES`)."""
    names = _Names(RESERVED_NAMES)
    for key, n in plan.kept.items():
        if n < options.min_images:
            reason = f"identity too small (< {options.min_images} images)"
            plan.left_out[reason] = plan.left_out.get(reason, 0) + n
            continue
        plan.classes[key] = len(plan.classes)
        wanted = os.path.splitext(os.path.basename(key[1]))[0] if key[2] else key[1]
        plan.folders[key] = names.add(safe_name(wanted))
        plan.images += n


def check_out(out: str, protected: dict[str, str] | None = None) -> str:
    """``out`` made absolute, refused in one line when it is, lies inside or contains one of the
    ``protected`` folders (``{real path: what it is}``: the dataset's source roots), compared
    after resolving symbolic links: ``--overwrite`` empties ``out``, and an export inside a source
    root would be loaded back as new samples by its next load."""
    out = params.out_folder(out)
    real = os.path.realpath(out)
    for root, what in (protected or {}).items():
        relation = ("is" if real == root else "lies inside" if real.startswith(root.rstrip(os.sep) + os.sep)
                    else "contains" if root.startswith(real.rstrip(os.sep) + os.sep) else None)
        if relation is not None:
            where = "" if relation == "is" and root == out else f" ({root})"
            raise ExportError(f"{out} {relation} {what}{where}; faceaudit never exports into, over or "
                              "around a loaded dataset's folder: choose a folder outside it")
    return out


def _state(out: str, plan: _Plan, options: Options) -> str:
    """``fresh``, ``resume`` or ``unchanged`` (a finished export whose files are all there);
    refuses a folder that holds something else. Called with the folder's lock held."""
    if not os.path.isdir(out):
        raise ExportError(f"{out} is a file, not a folder")
    entries = [e for e in os.listdir(out) if e != LOCK]
    if not entries:
        return "fresh"
    for name, state in ((MANIFEST, "unchanged"), (MARKER, "resume")):
        try:
            with open(os.path.join(out, name), encoding="utf-8") as f:
                if json.load(f).get("digest") == plan.digest:
                    return state if state == "resume" or _intact(out) else "resume"
        except (OSError, ValueError, AttributeError):
            continue
    if options.overwrite:
        _empty(out)
        return "fresh"
    if MARKER in entries:
        raise ExportError(f"{out} holds an unfinished export with other options or another view; run "
                          "that one again to finish it, or pass --overwrite to replace it")
    from . import params

    raise ExportError(params.not_empty(out, len(entries)))


def check_folder(out, overwrite=False) -> str:
    """The folder ``out`` as a form can check it before the view is read: refused where it is
    not empty and holds no export of faceaudit's (that one the run compares with the view)."""
    from . import params

    return params.export_folder(out, overwrite, resumable=(MANIFEST, MARKER))


def _intact(out: str) -> bool:
    """A finished export's files are all still there (a deleted or cut file makes it a resume):
    each image of ``folders`` checked as a resume checks it (size, inode or link), the record
    files of ``rec`` by their sizes in the manifest. Stats only, no reads of image bytes."""
    with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") == "rec":
        sizes = manifest.get("sizes") or {}
        for name in manifest.get("files") or _RecWriter.FILES:
            st, problem = _stat_file(os.path.join(out, name))
            if problem is not None or sizes.get(name, st.st_size) != st.st_size:
                return False
        return True
    link = (manifest.get("options") or {}).get("link", "copy")
    with open(os.path.join(out, MANIFEST_CSV), newline="", encoding="utf-8") as f:
        return all(_finished(link, row["filepath"], os.path.join(out, row["path"]))
                   for row in csv.DictReader(f) if row["status"] == "in")


def _empty(out: str) -> None:
    """Remove everything in ``out`` but its lock (``--overwrite``); :func:`check_out` and the
    adapter made sure no source folder and no file of the dataset is in it."""
    real = os.path.realpath(out)
    if real in ("/", os.path.realpath(os.path.expanduser("~"))):
        raise ExportError(f"refusing to empty {out}")
    for entry in os.scandir(out):
        if entry.name == LOCK:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


@contextmanager
def export_lock(out: str):
    """Hold ``out``'s export lock (``fcntl.flock`` on ``out/.faceaudit-export.lock``) for the run:
    a second export into the same folder is refused in one line naming the first. The kernel
    drops the lock when its holder dies, so a killed run never blocks the next. The file is
    removed on the way out while still held; a run that locked a removed file tries again."""
    path = os.path.join(out, LOCK)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "pid not written yet"
            os.close(fd)
            raise ExportError(f"another export into {out} is running ({holder}); wait for it to end "
                              "or choose another folder") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode(), 0)
    try:
        yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


def _inside(out: str, path: str) -> str:
    """``path`` (``out`` joined with safe names) checked to lie inside ``out``."""
    if not os.path.normpath(path).startswith(out + os.sep):
        raise ExportError(f"{path} would lie outside {out}")
    return path


def export(out: str, items: Callable[[], Iterable[Item]], options: Options,
           provenance: dict | None = None, protected: dict[str, str] | None = None) -> Generator[Progress, None, Result]:
    """Export what ``items()`` yields into ``out`` (see the module docstring); yields progress,
    returns the :class:`Result`. ``items`` must yield each identity's items together (the
    adapter sorts by source, identity, filepath) and the same items each time it is called.
    ``protected``: folders ``out`` must keep clear of (:func:`check_out`). Everything that can be
    refused is refused before the first write; the folder is locked for the run."""
    out = check_out(out, protected)
    plan = _plan(items, options, out)
    if not plan.classes:
        raise ExportError("nothing to export: every sample of the view is left out "
                          f"({', '.join(f'{n} {r}' for r, n in sorted(plan.left_out.items())) or 'the view is empty'})")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"{out} is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
        with export_lock(out):
            state = _state(out, plan, options)
            yield Progress(0, plan.images, "writing")
            if state == "unchanged":
                with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
                    return _result(out, "unchanged", json.load(f))
            manifest = yield from _write(out, items, plan, options, state, provenance or {})
    except OSError as e:  # disk full, a permission, a name taken by a folder: say where, and what next
        where = f" ({e.filename})" if e.filename else ""
        raise ExportError(f"writing the export into {out} failed: {e.strerror or e}{where}; "
                          "fix that and run the same export again: it resumes") from None
    return _result(out, "resumed" if state == "resume" else "written", manifest)


def _path_cell(path: str) -> str:
    """A path cell of ``manifest.csv`` a spreadsheet cannot run as a formula and a trainer still
    joins to the same file: ``./`` before one that begins with ``=``, ``+``, ``-``, ``@``."""
    return "./" + path if path.startswith(FORMULA_START) else path


def _write(out: str, items: Callable[[], Iterable[Item]], plan: _Plan, options: Options, state: str,
           provenance: dict) -> Generator[Progress, None, dict]:
    """Pass 2: the images, then ``manifest.csv`` and ``manifest.json`` last; returns the manifest."""
    _write_json(os.path.join(out, MARKER), {"digest": plan.digest, "options": options.to_dict()})
    writer = _FolderWriter(out, options.link, state == "resume") if options.format == "folders" else _RecWriter(out, plan)
    csv_part = os.path.join(out, "." + MANIFEST_CSV + PART)
    written = 0
    with open(csv_part, "w", newline="", encoding="utf-8") as f:
        rows = csv.writer(f)
        rows.writerow(["filepath", "source", "identity", "status", "reason", "class", "path"])
        seen: dict[tuple, int] = {}
        last_class = -1
        for item in items():
            reason = _reason(item, options, plan.missing)
            key = _key(item)
            if reason is None and key not in plan.classes:
                reason = f"identity too small (< {options.min_images} images)"
            names = [_path_cell(item.filepath), csv_cell(item.source), csv_cell("" if key[2] else key[1])]
            if reason is not None:
                rows.writerow([*names, "left out", reason, "", ""])
                continue
            cls = plan.classes[key]
            if cls < last_class:
                raise ExportError("the items do not come grouped by identity (sort them by source, identity)")
            last_class = cls
            seen[key] = seen.get(key, 0) + 1
            target = writer.add(item, cls, plan.folders[key])
            rows.writerow([*names, "in", "", cls, _path_cell(target)])
            written += 1
            if written % CHUNK == 0:
                yield Progress(written, plan.images, f"{written} of {plan.images} images")
    if written != plan.images or any(seen.get(k) != plan.kept[k] for k in plan.classes):
        raise ExportError("the view changed during the export (samples added, removed or tagged); "
                          "run it again")
    writer.close()
    manifest = _manifest(out, plan, options, provenance, writer)
    os.replace(csv_part, os.path.join(out, MANIFEST_CSV))
    _write_json(os.path.join(out, MANIFEST), manifest)
    os.unlink(os.path.join(out, MARKER))
    yield Progress(plan.images, plan.images, f"{plan.images} images in {writer.written_in(plan)}")
    return manifest


def _result(out: str, status: str, manifest: dict) -> Result:
    return Result(out=out, status=status, images=manifest["images"], identities=manifest["identities"],
                  left_out=manifest["left_out"], per_source=manifest["per_source"],
                  reencoded=manifest.get("reencoded", 0), manifest=os.path.join(out, MANIFEST))


def _manifest(out: str, plan: _Plan, options: Options, provenance: dict, writer) -> dict:
    per_source: dict[str, dict] = {}
    classes = []
    for key, cls in plan.classes.items():
        n = plan.kept[key]
        s = per_source.setdefault(key[0], {"images": 0, "identities": 0})
        s["images"] += n
        s["identities"] += 1
        classes.append({"class": cls, "source": key[0], "identity": None if key[2] else key[1],
                        "folder": plan.folders[key] if options.format == "folders" else None, "images": n})
    small = [{"source": k[0], "identity": None if k[2] else k[1], "images": n}
             for k, n in plan.kept.items() if k not in plan.classes]
    return {
        "format": options.format,
        "files": writer.files(),
        "images": plan.images,
        "identities": len(plan.classes),
        "per_source": per_source,
        "left_out": dict(sorted(plan.left_out.items())),
        "identities_too_small": small,
        "unreadable_files": [{"filepath": p, "reason": r} for p, r in sorted(plan.missing.items())],
        "reencoded": getattr(writer, "reencoded", 0),
        "sizes": writer.sizes(),
        "classes": classes,
        "options": options.to_dict(),
        "digest": plan.digest,
        "provenance": {"faceaudit": __version__, **provenance,
                       "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        "csv": MANIFEST_CSV + ": one row per sample of the view, in or left out, with the reason",
    }


def _write_json(path: str, value: dict) -> None:
    part = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + PART)
    with open(part, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, ensure_ascii=False)
    os.replace(part, path)


class _FolderWriter:
    """``out/<folder>/<file>``, each file written at its name (``cp -r``'s cost): until the
    manifest is written last the folder is not a finished export, and a resumed run checks each
    file it finds (:meth:`_done`) before keeping it."""

    def __init__(self, out: str, link: str, resume: bool):
        self.out, self.link, self.resume = out, link, resume
        self.folder: str | None = None
        self.names = _Names()
        self.count = 0

    def add(self, item: Item, cls: int, folder: str) -> str:
        if folder != self.folder:
            self.folder, self.names = folder, _Names()
            os.makedirs(_inside(self.out, os.path.join(self.out, folder)), exist_ok=True)
        name = self.names.add(safe_name(os.path.basename(item.filepath), fallback=f"{self.count}.jpg"))
        rel = f"{folder}/{name}"
        target = _inside(self.out, os.path.join(self.out, folder, name))
        self.count += 1
        if self.resume:
            if _finished(self.link, item.filepath, target):
                return rel
            if os.path.lexists(target):
                os.unlink(target)
        if self.link == "copy":
            shutil.copyfile(item.filepath, target)
        elif self.link == "hardlink":
            os.link(item.filepath, target)
        else:
            os.symlink(os.path.abspath(item.filepath), target)
        return rel

    def close(self) -> None:
        pass

    def files(self) -> list[str]:
        return []  # one folder per identity, listed under "classes"

    def sizes(self) -> dict[str, int]:
        return {}  # the images are checked one by one (manifest.csv)

    def written_in(self, plan: _Plan) -> str:
        return f"{len(plan.classes)} identity folders"


def _finished(link: str, source: str, target: str) -> bool:
    """``target`` is already the finished file of ``source`` (a copy of the same size, a hard
    link to the same inode, a symbolic link to the same path): a resume keeps it, and a finished
    export is whole only if every image is. A copy killed mid-way is shorter than its original
    (files are written from the start), so it is written again."""
    try:
        if link == "symlink":
            return os.readlink(target) == os.path.abspath(source)
        a, b = os.stat(source), os.lstat(target)
    except OSError:
        return False
    if link == "hardlink":
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
    return b.st_size == a.st_size and stat.S_ISREG(b.st_mode)


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF marker, without decoding; None if not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def rec_bytes(data: bytes, size: int = REC_SIZE) -> tuple[bytes, bool]:
    """The bytes a record holds: ``data`` itself for an upright ``size`` x ``size`` JPEG, else the
    image turned upright by its EXIF orientation (as faceaudit's own decode and every viewer
    show it; mxnet's decoder ignores EXIF), resized to ``size`` x ``size`` and encoded as JPEG
    quality 95. Returns (bytes, re-encoded)."""
    if jpeg_size(data) == (size, size) and jpeg_orientation(buffer_reader(data)) == 1:
        return data, False
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=95)
    return buf.getvalue(), True


class _RecWriter:
    """``train.rec``/``train.idx``/``property`` under hidden temporary names, renamed on close.
    A resumed rec export writes the pair again from the start (a record stream has no per-file
    unit to keep); the result is the same bytes."""

    FILES = ("train.rec", "train.idx", "property")

    def __init__(self, out: str, plan: _Plan):
        self.out = out
        self.parts = {n: os.path.join(out, "." + n + PART) for n in self.FILES}
        self.writer = RecordIOWriter(self.parts["train.rec"], self.parts["train.idx"])
        n, c = plan.images, len(plan.classes)
        self.writer.put_header(0, (float(n + 1), float(n + 1 + c)))
        self.classes, self.key, self.reencoded = c, 0, 0
        self.ranges: list[list[int]] = []  # per class [first key, end key)

    def add(self, item: Item, cls: int, folder: str) -> str:
        self.key += 1
        with open(item.filepath, "rb") as f:
            raw = f.read()
        try:
            data, changed = rec_bytes(raw)
        except Exception as e:  # PIL raises many kinds for a damaged file
            raise ExportError(f"{item.filepath} cannot be decoded ({type(e).__name__}: {e}); tag it "
                              f"'{UNREADABLE_TAG}' or exclude it, then run again") from None
        self.reencoded += changed
        self.writer.put_image(self.key, float(cls), data)
        if len(self.ranges) == cls:
            self.ranges.append([self.key, self.key + 1])
        else:
            self.ranges[cls][1] = self.key + 1
        return f"train.rec#{self.key}"

    def close(self) -> None:
        start = self.key + 1
        for j, (first, end) in enumerate(self.ranges):
            self.writer.put_header(start + j, (float(first), float(end)))
        self.writer.close()
        with open(self.parts["property"], "w", encoding="ascii") as f:
            f.write(f"{self.classes},{REC_SIZE},{REC_SIZE}\n")
        for name, part in self.parts.items():
            os.replace(part, os.path.join(self.out, name))

    def files(self) -> list[str]:
        return list(self.FILES)

    def sizes(self) -> dict[str, int]:
        """The record files' sizes, kept in the manifest: a later cut or deleted one is redone."""
        return {n: os.path.getsize(os.path.join(self.out, n)) for n in self.FILES}

    def written_in(self, plan: _Plan) -> str:
        return "train.rec (with train.idx and property)"


def read_items(rows: Iterable[dict]) -> Iterator[Item]:
    """Items from dicts with ``filepath``, ``source``, ``identity`` and ``tags`` (as the adapter reads)."""
    for r in rows:
        yield Item(r["filepath"], r.get("source") or "", r.get("identity"), tuple(r.get("tags") or ()))
