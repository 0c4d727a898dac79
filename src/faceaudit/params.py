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


class ParamError(ValueError):
    """An argument that cannot be used; the message names the argument and the problem."""

    def __init__(self, param: str, problem: str):
        self.param = param
        super().__init__(f"{param}: {problem}")


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


def to_int(param: str, value: Any, default: int | None = None, minimum: int | None = None,
           maximum: int | None = None) -> int | None:
    """An integer (``"5"`` and ``5.0`` accepted, ``5.5``, ``nan`` and ``True`` refused)."""
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
        raise ParamError(param, f"expected a whole number, got {value!r}") from None
    if minimum is not None and result < minimum:
        raise ParamError(param, f"must be at least {minimum}, got {result}")
    if maximum is not None and result > maximum:
        raise ParamError(param, f"must be at most {maximum}, got {result}")
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
        raise ParamError(param, f"must be at least {minimum:g}, got {result:g}")
    if maximum is not None and result > maximum:
        raise ParamError(param, f"must be at most {maximum:g}, got {result:g}")
    return result


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
    return text


def threshold(value: Any, default: float | None = None, param: str = "threshold") -> float | None:
    """The reliability under which a label is undefined: a finite number in [0, 1]."""
    return to_float(param, value, default, minimum=0.0, maximum=1.0)


def alpha(value: Any, default: float = 0.5, param: str = "alpha") -> float:
    """The additive pseudo-count per state: finite, >= 0."""
    return to_float(param, value, default, minimum=0.0)


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
                if env.get(rank) is not None and env.get(size) is not None:
                    index, count = env[rank], env[size]
                    break
            else:
                index, count = 0, 1
        else:
            match = re.match(r"^(\d+)\s*/\s*(\d+)$", text)
            if not match:
                raise ParamError(param, f"expected I/N (e.g. 0/4) or auto, got {value!r}")
            index, count = match.groups()
    index, count = to_int(param, index, minimum=0), to_int(param, count, minimum=1)
    if index >= count:
        raise ParamError(param, f"shard index must be below the shard count: {index}/{count}")
    return index, count


# ----------------------------------------------------------------------------- loading (helper loadsafe)


def max_pixels(value: Any, default: int | None = None, param: str = "max_pixels") -> int:
    """The largest image (width x height) a load accepts and the decoder decodes: at least 1;
    blank: ``faceaudit.images.DEFAULT_MAX_PIXELS`` (40 megapixels)."""
    from .images import DEFAULT_MAX_PIXELS

    return to_int(param, value, DEFAULT_MAX_PIXELS if default is None else default, minimum=1)


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
    """How many jobs to split a run into: 1 to 10,000."""
    return to_int(param, value, default, minimum=1, maximum=10_000)


def seconds(param: str, value: Any, default: float | None = None) -> float | None:
    """A duration in seconds: finite, > 0."""
    result = to_float(param, value, default, minimum=0.0)
    if result is not None and result <= 0:
        raise ParamError(param, f"must be more than 0 seconds, got {result:g}")
    return result


# ----------------------------------------------------------------------------- outputs (helper "attack")


def output_files(paths: dict[str, Any], taken: dict[str, str] | None = None,
                 prefix: str = "--") -> dict[str, str | None]:
    """Report files (``{param: path}``; blank: not wanted) that can be written, checked before any
    work, since reports are written last: each path is not a folder, is no other output's file
    (nor one of ``taken``: ``{real path: what it is}``), and lies in a folder that exists and is
    writable or can be created. Errors name another output as ``prefix + param``. Returns the
    absolute paths."""
    taken = dict(taken or {})
    checked: dict[str, str | None] = {}
    for param, value in paths.items():
        if is_blank(value):
            checked[param] = None
            continue
        path = os.path.abspath(os.path.expanduser(str(value)))
        same = taken.get(os.path.realpath(path))
        if same is not None:
            raise ParamError(param, f"{path} is also {same}: each report needs its own file")
        taken[os.path.realpath(path)] = prefix + param
        if os.path.isdir(path):
            raise ParamError(param, f"{path} is a folder; give a file name")
        parent = os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ParamError(param, f"cannot write {path}: {parent} is a file, not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ParamError(param, f"cannot write {path}: {parent} is not writable")
        checked[param] = path
    return checked


__all__ += ["output_files"]


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
    """The folder an export writes: required, not an existing file; returned absolute."""
    if is_blank(value):
        raise ParamError(param, "a folder is required")
    path = os.path.abspath(os.path.expanduser(str(value).strip()))
    if os.path.exists(path) and not os.path.isdir(path):
        raise ParamError(param, f"{path} is a file, not a folder")
    return path


__all__ += ["out_folder"]
