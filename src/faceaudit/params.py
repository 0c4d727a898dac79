"""One validation per argument, shared by every door (CLI, App operators, Python, config files).

Values may arrive as Python objects (the CLI after argparse, ``foo.execute_operator`` from
Python) or as strings (the App's forms send booleans and numbers as text: ``"false"``, ``"0.6"``).
Each function here takes either, returns the typed value, and raises :class:`ParamError` (a
``ValueError``) whose message names the parameter and the problem. Callers validate *every*
argument before they write anything, so a refused run leaves the database as it was.

Pure Python: nothing here imports FiftyOne or torch.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from typing import Any

__all__ = [
    "ParamError", "is_blank", "to_bool", "to_int", "to_float", "choice", "name", "threshold", "alpha",
    "mc_passes", "batch_size", "workers", "device", "shard", "SHARD_AUTO",
]

#: the longest name a source, dataset or tag may have (FiftyOne limits dataset names too)
MAX_NAME = 200
#: the largest integer any argument may be (unless it says less): MongoDB stores 8-byte ints and
#: JavaScript (the App, the reports) holds integers exactly only up to 2**53 - 1
MAX_INT = 2**53 - 1
#: the largest alpha (pseudo-count per state): far above any useful prior, and far below where
#: numpy's log / JavaScript's numbers overflow to inf
MAX_ALPHA = 1e6

#: tags faceaudit assigns itself or that mean a decision: an outlier run that used one would
#: untag the faces that carry it for another reason and tag healthy ones (``--clear`` then
#: removes them all). The one list, for every door and every engineer's code.
RESERVED_TAGS = frozenset({
    "unreadable",  # damaged or oversized image files (load, annotate)
    "not_a_face",  # images too small or too thin to hold a face
    "no_face",  # images in which no face was found
    "identity_leak", "identity_collision", "identity_outlier",  # identity checks
    "reviewed_keep",  # a reviewer's decision
})


class ParamError(ValueError):
    """An argument that cannot be used; the message names the argument and the problem.

    The validation is one for every door, the argument's name is each door's own: the CLI says
    its option (``--batch-size``), the App the field's label (``Batch size``). A door shows
    :meth:`named` with its name; ``str()`` is the message with the parameter's (``batch_size``)."""

    def __init__(self, param: str, problem: str):
        self.param, self.problem = param, problem
        super().__init__(f"{param}: {problem}")

    def named(self, name: str) -> str:
        """The message with the argument called ``name``: ``"Batch size: must be at least 1, got 0"``."""
        return f"{name}: {self.problem}"


def is_blank(value: Any) -> bool:
    """No value given: None, or text that is empty or only spaces (what an empty form field sends)."""
    return value is None or (isinstance(value, str) and value.strip() == "")


def to_bool(param: str, value: Any, default: bool | None = None) -> bool | None:
    """A boolean from a bool, 0/1, or the strings the App's forms send ("true"/"false")."""
    if is_blank(value):
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ParamError(param, f"expected true or false, got {value!r}")


def _short(number) -> str:
    """``number`` as text, in scientific notation when it is long (never 300 digits)."""
    text = str(number)
    return text if len(text) <= 20 else f"{float(number):.3g}"


def to_int(param: str, value: Any, default: int | None = None, minimum: int | None = None,
           maximum: int | None = MAX_INT) -> int | None:
    """An integer (``"5"`` and ``5.0`` accepted, ``5.5``, ``nan`` and ``True`` refused), at most
    ``maximum`` (:data:`MAX_INT` unless the parameter says less; ``None``: unbounded)."""
    if is_blank(value):
        return default
    if isinstance(value, bool):
        raise ParamError(param, f"expected a whole number, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float) and not number.is_integer():
            raise ValueError
        result = int(number)
    except (TypeError, ValueError, OverflowError):
        raise ParamError(param, f"expected a whole number, got {_short(value) if isinstance(value, (int, float)) else repr(value)[:40]}") from None
    if minimum is not None and result < minimum:
        raise ParamError(param, f"must be at least {minimum}, got {_short(result)}")
    if maximum is not None and result > maximum:
        raise ParamError(param, f"must be at most {_short(maximum)}, got {_short(result)}")
    return result


def to_float(param: str, value: Any, default: float | None = None, minimum: float | None = None,
             maximum: float | None = None) -> float | None:
    """A finite float in [minimum, maximum]; ``nan`` and infinities are refused."""
    if is_blank(value):
        return default
    if isinstance(value, bool):
        raise ParamError(param, f"expected a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise ParamError(param, f"expected a number, got {value!r}") from None
    if not math.isfinite(result):
        raise ParamError(param, f"must be a finite number, got {value!r}")
    if minimum is not None and result < minimum:
        raise ParamError(param, f"must be at least {minimum:g}, got {_beside(result, minimum)}")
    if maximum is not None and result > maximum:
        raise ParamError(param, f"must be at most {maximum:g}, got {_beside(result, maximum)}")
    return result


def _beside(value: float, bound: float) -> str:
    """``value`` in as few digits as tell it from ``bound`` (``-1.0000001``, not ``-1``)."""
    text = f"{value:g}"
    return repr(value) if text == f"{bound:g}" else text


def choice(param: str, value: Any, choices, default: str | None = None) -> str | None:
    """One of ``choices`` (compared as text)."""
    if is_blank(value):
        return default
    text = str(value).strip()
    if text not in choices:
        raise ParamError(param, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
    return text


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: bidirectional embeddings, overrides and isolates (a name shown reversed: "Trojan Source") and
#: the Unicode line and paragraph separators; joiners that scripts need (U+200C/D) stay allowed
_BIDI_OR_BREAK = re.compile("[\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def name(param: str, value: Any, required: bool = True) -> str | None:
    """A user-chosen name (source, dataset, tag): printable, not starting with ``$``.

    Names are stored and later compared with stored values; MongoDB reads a string that starts
    with ``$`` as a field path in aggregation expressions, and control characters print as
    terminal escape sequences. Both are refused here, once for every door."""
    if is_blank(value):
        if required:
            raise ParamError(param, "a name is required")
        return None
    text = str(value)
    if text != text.strip():
        raise ParamError(param, f"must not start or end with spaces: {text!r}")
    if text.startswith("$"):
        raise ParamError(param, f"must not start with '$' (MongoDB reads it as a field path): {text!r}")
    if _CONTROL.search(text) or any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        raise ParamError(param, f"must not contain control characters: {ascii(text)}")
    if _BIDI_OR_BREAK.search(text):
        raise ParamError(param, f"must not contain text-direction overrides or line separators: {ascii(text)}")
    if len(text) > MAX_NAME:
        raise ParamError(param, f"must be at most {MAX_NAME} characters, got {len(text)}")
    return normal_form(text)


def threshold(value: Any, default: float | None = None, param: str = "threshold") -> float | None:
    """The reliability under which a label is undefined: a finite number in [0, 1]."""
    return to_float(param, value, default, minimum=0.0, maximum=1.0)


def alpha(value: Any, default: float = 0.5, param: str = "alpha") -> float:
    """The additive pseudo-count per state: 0 to :data:`MAX_ALPHA`."""
    return to_float(param, value, default, minimum=0.0, maximum=MAX_ALPHA)


def mc_passes(value: Any, default: int | None = None, param: str = "mc_passes") -> int | None:
    """Stochastic passes for reliability: at least 1 (blank: the checkpoint's)."""
    return to_int(param, value, default, minimum=1, maximum=10_000)


def batch_size(value: Any, default: int = 256, param: str = "batch_size") -> int:
    return to_int(param, value, default, minimum=1, maximum=1_000_000)


def workers(value: Any, default: int | None = None, param: str = "workers") -> int | None:
    """Image-reading processes: 0 reads in the main process; blank: min(8, cores)."""
    return to_int(param, value, default, minimum=0, maximum=1024)


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def device(value: Any, default: str = "auto", param: str = "device") -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""
    if is_blank(value):
        return default
    text = str(value).strip()
    if not _DEVICE.match(text):
        raise ParamError(param, f"must be auto, cpu, cuda, cuda:N or mps; got {value!r}")
    return text


SHARD_AUTO = "auto"
#: the most shards a run may be split into (``--shard I/N``, ``WORLD_SIZE``, ``--shards``)
MAX_SHARDS = 10_000


def shard(value: Any, env: dict[str, str] | None = None, param: str = "shard") -> tuple[int, int] | None:
    """``"I/N"`` (0 <= I < N) or ``"auto"`` as ``(I, N)``; blank: None (no sharding).

    ``auto`` reads torchrun's ``RANK``/``WORLD_SIZE``, else Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``;
    with neither set it is ``(0, 1)``."""
    if is_blank(value):
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        index, count = value
    else:
        text = str(value).strip()
        if text == SHARD_AUTO:
            env = os.environ if env is None else env
            for rank, size in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
                given = [not is_blank(env.get(rank)), not is_blank(env.get(size))]
                if all(given):
                    index, count = to_int(rank, env[rank], minimum=0), to_int(size, env[size], minimum=1, maximum=MAX_SHARDS)
                    break
                if any(given) or env.get(rank) is not None or env.get(size) is not None:
                    raise ParamError(param, f"--shard auto needs both {rank} and {size} set (the launcher "
                                     f"sets both); got {rank}={env.get(rank)!r} {size}={env.get(size)!r}")
            else:
                index, count = 0, 1
        else:
            match = re.match(r"^(\d+)\s*/\s*(\d+)$", text)
            if not match:
                raise ParamError(param, f"expected I/N (e.g. 0/4) or auto, got {value!r}")
            index, count = match.groups()
    index, count = to_int(param, index, minimum=0), to_int(param, count, minimum=1, maximum=MAX_SHARDS)
    if index >= count:
        raise ParamError(param, f"shard index must be below the shard count: {index}/{count}")
    return index, count


# ----------------------------------------------------------------------------- loading (helper loadsafe)


#: the largest max_pixels: 2**31 pixels (46,000 x 46,000), a decoder's own limit
MAX_PIXELS = 2**31


def max_pixels(value: Any, default: int | None = None, param: str = "max_pixels") -> int:
    """The largest image (width x height) a load accepts and the decoder decodes: at least 1;
    blank: ``faceaudit.images.DEFAULT_MAX_PIXELS`` (40 megapixels)."""
    from .images import DEFAULT_MAX_PIXELS

    return to_int(param, value, DEFAULT_MAX_PIXELS if default is None else default, minimum=1, maximum=MAX_PIXELS)


__all__ += ["max_pixels"]


# ----------------------------------------------------------------------------- scale (helper "scale")


def rank_device(value: Any, cuda_available: bool, env: dict[str, str] | None = None,
                param: str = "device") -> str:
    """The device of one of several local workers: ``auto``/``cuda`` become ``cuda:LOCAL_RANK``
    (torchrun and Slurm's ``SLURM_LOCALID`` say which GPU of the node is this worker's) when
    CUDA exists; any other device is kept."""
    text = device(value, param=param)
    env = os.environ if env is None else env
    local = env.get("LOCAL_RANK", env.get("SLURM_LOCALID"))
    if text in ("auto", "cuda") and cuda_available and local is not None:
        return f"cuda:{to_int('LOCAL_RANK', local, minimum=0)}"
    return text


def shards(value: Any, default: int = 1, param: str = "shards") -> int:
    """How many jobs to split a run into: 1 to :data:`MAX_SHARDS`."""
    return to_int(param, value, default, minimum=1, maximum=MAX_SHARDS)


def seconds(param: str, value: Any, default: float | None = None) -> float | None:
    """A duration in seconds: finite, > 0."""
    result = to_float(param, value, default, minimum=0.0)
    if result is not None and result <= 0:
        raise ParamError(param, f"must be more than 0 seconds, got {result:g}")
    return result


# ----------------------------------------------------------------------------- outputs (helper "attack")


def output_files(paths: dict[str, Any], taken: dict[str, str] | None = None,
                 prefix: str = "--", protected: dict[str, str] | None = None,
                 overwrite: bool = False) -> dict[str, str | None]:
    """Report files (``{param: path}``; blank: not wanted) that can be written, checked before any
    work, since reports are written last: each path is not a folder, is no other output's file
    (nor one of ``taken``: ``{real path: what it is}``), lies under none of the ``protected``
    folders (``{real path: what it is}``: the loaded sources' folders), is not an existing file
    faceaudit did not write (:func:`written_by_faceaudit`) unless ``overwrite``, and lies in a
    folder that exists and is writable or can be created. Errors name another output as
    ``prefix + param``. Returns the absolute paths."""
    taken = dict(taken or {})
    checked: dict[str, str | None] = {}
    for param, value in paths.items():
        if is_blank(value):
            checked[param] = None
            continue
        path = os.path.abspath(os.path.expanduser(str(value)))
        real = os.path.realpath(path)
        same = taken.get(real)
        if same is not None:
            raise ParamError(param, f"{path} is also {same}: each report needs its own file")
        taken[real] = prefix + param
        if os.path.isdir(path):
            raise ParamError(param, f"{path} is a folder; give a file name")
        for folder, what in (protected or {}).items():
            if real == folder or real.startswith(folder.rstrip(os.sep) + os.sep):
                raise ParamError(param, f"{path} is inside {what} ({folder}); faceaudit never writes "
                                 "into a loaded dataset's folder: choose a path outside it")
        if os.path.lexists(path) and not overwrite and not written_by_faceaudit(path, param):
            raise ParamError(param, f"{path} exists and is not a faceaudit {_KIND_NAMES.get(param, param)} "
                             f"output; refused so as not to overwrite it (give {_OVERWRITE_HINT.get(prefix, '--overwrite')} "
                             "to replace it)")
        parent = os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ParamError(param, f"cannot write {path}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ParamError(param, f"cannot write {path}: {parent} is not writable")
        checked[param] = path
    return checked


_KIND_NAMES = {"html": "HTML report", "json": "JSON report", "csv": "CSV report", "file": "label file"}
_OVERWRITE_HINT = {"reports.": "overwrite = true in [reports]"}
#: how each kind of faceaudit output starts (within its first 4 KiB): an existing file may be
#: replaced by a new one of its kind only when it is one
_SIGNATURES = {
    "html": re.compile(r"^<!DOCTYPE html>\s*<html[^>]*><head><meta charset=\"utf-8\"><title>faceaudit (identity audit|report): "),
    "csv": re.compile(r"^(attribute,category,kl_real_synth,kl_synth_real,js|source,metric,value)[,\r\n]"),
}


#: the keys a faceaudit JSON report has: the comparison's, the identity audit's
_JSON_KEYS = ({"states", "alpha", "attributes", "sources"}, {"threshold", "threshold_rule", "sources"})


def written_by_faceaudit(path: str, kind: str) -> bool:
    """Whether the existing ``path`` is a faceaudit output of ``kind`` (``html``, ``json``,
    ``csv``), judged from its content: a regular file that starts as faceaudit's do (a JSON
    report: an object with the comparison's keys). Label files (``file``) never are: a
    MAAD-Face CSV looks the same whoever wrote it, so replacing one takes ``--overwrite``."""
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if kind == "json" and os.fstat(f.fileno()).st_size <= 64 * 2**20:
                import json

                f.seek(0)
                data = json.loads(f.read().decode("utf-8"))
                return isinstance(data, dict) and any(keys <= set(data) for keys in _JSON_KEYS)
    except (OSError, ValueError):
        return False
    signature = _SIGNATURES.get(kind)
    return signature is not None and bool(signature.match(head.decode("utf-8", errors="replace")))


__all__ += ["output_files", "written_by_faceaudit"]


# ----------------------------------------------------------------------------- integrity (helper "state")


def tag(value: Any, default: str | None = None, param: str = "tag") -> str | None:
    """An outlier tag: a :func:`name` that is none of :data:`RESERVED_TAGS`."""
    text = name(param, default if is_blank(value) else value, required=default is not None)
    if text is not None and text.lower() in RESERVED_TAGS:
        raise ParamError(param, f"{text!r} is reserved (faceaudit's own tags: {', '.join(sorted(RESERVED_TAGS))}); "
                         "choose another tag")
    return text


#: the tags and saved views of faceaudit's other tools, which rebalance's tag (its tag and
#: saved-view name) must not take: it untags the name's samples and replaces the view of that name
#: (tests/test_rebalance.py checks these are the adapters' names)
OTHER_TOOLS_NAMES = {
    "outlier": "faceaudit outliers' tag",
    "synthetic_outliers": "faceaudit outliers' saved view",
    "identity_leaks": "faceaudit identity's saved view",
    "identity_collisions": "faceaudit identity's saved view",
    "identity_outliers": "faceaudit identity's saved view",
}


def rebalance_tag(value: Any, default: str, param: str = "tag") -> str:
    """Rebalance's tag and saved-view name: a :func:`tag` that is none of the other tools'
    names (:data:`OTHER_TOOLS_NAMES`)."""
    text = tag(value, default, param)
    owner = OTHER_TOOLS_NAMES.get(text.lower())
    if owner:
        raise ParamError(param, f"{text!r} is {owner}: rebalance would untag its samples and replace the view "
                                "of that name; choose another tag")
    return text


def top(value: Any, default: int | None = None, param: str = "top") -> int | None:
    """How many samples to tag: 1 to 10**9 (a count MongoDB's limit and the App both hold)."""
    return to_int(param, value, default, minimum=1, maximum=MAX_TOP)


#: the largest ``top`` K (no dataset this tool audits has 10**9 synthetic faces)
MAX_TOP = 10**9
MAX_BOOTSTRAP = 100_000
MAX_SEED = 2**32 - 1


def bootstrap(value: Any, default: int = 0, param: str = "bootstrap") -> int:
    """Bootstrap resamples: 0 (none) to :data:`MAX_BOOTSTRAP`."""
    return to_int(param, value, default, minimum=0, maximum=MAX_BOOTSTRAP)


def seed(value: Any, default: int = 0, param: str = "seed") -> int:
    """A random seed: 0 to 2**32 - 1."""
    return to_int(param, value, default, minimum=0, maximum=MAX_SEED)


def limit(value: Any, default: int | None = None, param: str = "limit") -> int | None:
    """At most this many images of a source: at least 1 (blank: all)."""
    return to_int(param, value, default, minimum=1)


def joint(value: Any, attributes, most: int, param: str = "joint") -> tuple[str, ...]:
    """Attributes scored jointly: a list of distinct known names, at most ``most`` of them."""
    if is_blank(value) or value == ():
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ParamError(param, f"expected a list of attribute names, got {value!r}"[:200])
    for a in value:
        if a not in attributes:
            raise ParamError(param, f"unknown attribute {a!r} (attributes are MAAD-Face's {len(attributes)}: "
                             f"{', '.join(attributes[:4])}, ...)"[:200])
    repeated = sorted({a for a in value if list(value).count(a) > 1})
    if repeated:
        raise ParamError(param, f"each attribute at most once; repeated: {', '.join(repeated)}")
    if len(value) > most:
        raise ParamError(param, f"at most {most} distinct attributes, got {len(value)}")
    return tuple(value)


_MAGIC = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
          (b"RIFF", "a RIFF (WebP/WAV) file"), (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF"),
          (b"\x7fELF", "a program"), (b"{", "a JSON or text file"), (b"#", "a text file"),
          (b"\x08\x00", "an ONNX or protobuf file"))


def checkpoint_file(value: Any, param: str = "checkpoint") -> str | None:
    """A checkpoint path that can be a torch checkpoint: a URL (checked when fetched) or a
    regular file in torch's format (a zip, or a pickle of torch's legacy format), checked from
    its first bytes before anything is loaded. Blank: None."""
    if is_blank(value):
        return None
    text = str(value).strip()
    if "://" in text:
        return text
    path = os.path.expanduser(text)
    if not os.path.exists(path):
        raise ParamError(param, f"{text}: no such checkpoint file")
    if os.path.isdir(path):
        raise ParamError(param, f"{text} is a folder, not a checkpoint file (give the .pt file in it)")
    if not os.path.isfile(path):
        raise ParamError(param, f"{text} is not a regular file (a device, pipe or socket), not a checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise ParamError(param, f"cannot read {text}: {e.strerror or e}") from None
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # torch.save's zip / legacy pickle
        return text
    what = "an empty file" if not head else next((w for m, w in _MAGIC if head.startswith(m)), "not in torch's format")
    raise ParamError(param, f"{text} is not a torch checkpoint ({what}); faceaudit checkpoints "
                     "are written by faceaudit train-mac")


__all__ += ["MAX_INT", "RESERVED_TAGS", "tag", "top", "bootstrap", "seed", "limit", "joint", "checkpoint_file"]
__all__ += ["output_files"]


# ----------------------------------------------------------------------------- embeddings (helper "embed")

#: face embedders (``faceaudit.embedders.MODELS``; the default first)
EMBED_MODELS = ("dlib", "iresnet", "onnx")


def embed_model(value: Any, default: str = "dlib", param: str = "model") -> str:
    """The face embedder: dlib (default, offline), iresnet (a backbone.pth) or onnx."""
    return choice(param, value, EMBED_MODELS, default)


def model_file(value: Any, required: bool = True, param: str = "checkpoint") -> str | None:
    """A local model file that exists and is a file; returned absolute (delegated workers run in
    other folders)."""
    if is_blank(value):
        if required:
            raise ParamError(param, "a model file is required")
        return None
    path = os.path.abspath(os.path.expanduser(str(value).strip()))
    if not os.path.exists(path):
        raise ParamError(param, f"{path}: no such file")
    if os.path.isdir(path):
        raise ParamError(param, f"{path}: is a folder, not a model file")
    if not os.path.isfile(path):  # a FIFO would block the loader; a device is no model
        raise ParamError(param, f"{path}: is not a regular file (a device, pipe or socket), not a model file")
    return path


def embedding_model(model: Any, checkpoint: Any = None, detect: Any = False, flip: Any = False,
                    check_file: bool = True) -> tuple[str, str | None, bool, bool]:
    """``(model, checkpoint, detect, flip)`` of an embedding run, checked together: dlib takes no
    checkpoint and no flip; iresnet and onnx need a checkpoint file and take no detect; an ONNX
    file must be a face-recognition model (one NCHW 3 x H x W input, an (N, d) output: opened
    with onnxruntime, nothing run) unless ``check_file`` is False."""
    model = embed_model(model)
    detect, flip = bool(to_bool("detect", detect, False)), bool(to_bool("flip", flip, False))
    if model == "dlib":
        if not is_blank(checkpoint):
            raise ParamError("checkpoint", "model dlib uses the weights face_recognition_models ships; "
                             "--checkpoint is for iresnet and onnx")
        if flip:
            raise ParamError("flip", "--flip is for iresnet and onnx models")
        return model, None, detect, False
    if detect:
        raise ParamError("detect", f"--detect is for the dlib model; {model} takes aligned crops")
    path = model_file(checkpoint)
    if model == "onnx" and check_file:
        from .embedders import EmbedderError, check_onnx

        try:
            check_onnx(path)
        except EmbedderError as e:
            raise ParamError("checkpoint", str(e)) from None
    return model, path, detect, flip


__all__ += ["EMBED_MODELS", "embed_model", "model_file", "embedding_model"]
# ----------------------------------------------------------------------------- names (helper "inputs")


def normal_form(text: str) -> str:
    """``text`` in Unicode normalisation form C: ``café`` typed as one letter (NFC, Windows,
    Linux) or as ``e`` + a combining accent (NFD, macOS file names) is one name, not two sources
    or identities that look the same. Every name :func:`name` accepts, and every identity and
    group folder name a reader reads, goes through here."""
    return unicodedata.normalize("NFC", text)


__all__ += ["normal_form"]
# ----------------------------------------------------------------------------- export (helper "export")


def min_images(value: Any, default: int = 1, param: str = "min_images") -> int:
    """The fewest images an exported identity keeps: at least 1."""
    return to_int(param, value, default, minimum=1)


def keep_share(value: Any, default: float = 0.5, param: str = "keep") -> float:
    """The share of a source a rebalanced subset keeps at least: more than 0, at most 1."""
    result = to_float(param, value, default, minimum=0.0, maximum=1.0)
    if result <= 0:
        raise ParamError(param, f"must be more than 0, got {result:g}")
    return result


__all__ += ["min_images", "keep_share"]


def out_folder(value: Any, param: str = "out") -> str:
    """The folder an export writes: required, not an existing file, not a symbolic link to nothing
    (creating it would fail with a bare ``FileExistsError``); returned absolute."""
    if is_blank(value):
        raise ParamError(param, "a folder is required")
    path = os.path.abspath(os.path.expanduser(str(value).strip()))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ParamError(param, f"{path} is a file, not a folder")
    if os.path.islink(path) and not os.path.exists(path):
        raise ParamError(param, f"{path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                         "create that folder or choose another")
    return path


def not_empty(path: str, entries: int) -> str:
    """Why an export does not write into ``path``, a folder of ``entries`` entries that holds
    something else than this export (the words of every door)."""
    return (f"{path} is not empty and holds something else than this export ({entries} entries); "
            "choose an empty folder or pass --overwrite to replace it")


def export_folder(value: Any, overwrite: Any = False, resumable=(), param: str = "out") -> str:
    """:func:`out_folder`, and not a non-empty folder unless ``overwrite``, or it holds one of
    the files named ``resumable`` (an export's own: the run compares it with the view)."""
    path = out_folder(value, param)
    if to_bool("overwrite", overwrite, False) or not os.path.isdir(path):
        return path
    entries = os.listdir(path)
    if entries and not set(resumable) & set(entries):
        raise ParamError(param, not_empty(path, len(entries)))
    return path


__all__ += ["out_folder", "not_empty", "export_folder"]


def overwrite(value: Any, shards: int = 1, param: str = "overwrite") -> bool:
    """Whether an embedding run drops every stored vector first (needed to change the model,
    its file, detect or flip). Only in one job: each of N shards would drop the others' vectors."""
    wanted = bool(to_bool(param, value, False))
    if wanted and shards > 1:
        raise ParamError(param, "drops every stored vector first: embed in one job (--shards 1), "
                                "then split later runs")
    return wanted


__all__ += ["overwrite"]
