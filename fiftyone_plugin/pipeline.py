"""The whole study in one call: load every source, annotate, compare, score and flag outliers,
write the reports (``faceaudit run study.toml``; ``faceaudit run`` alone runs the demo's config).

Each step skips what is done, so a rerun after any interruption continues where it stopped and a
rerun of a finished study changes nothing: loading adds only missing files; annotation labels the
unlabelled samples and relabels those whose labels another model setting made (and is skipped
when none are left); the comparison, the outlier scores and the reports are recomputed only when
their inputs changed, i.e. when the labels (their version: :func:`.labels.labels_version`, which
every label write changes, and their counts) or the step's settings differ from those the stored
result was made with (labels are deterministic, so equal inputs give equal results). The
reports are written and checked as one set. See docs/integrity.md, "Stale results".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from faceaudit import fingerprint
from faceaudit import report as reports
from faceaudit.config import StudyConfig
from faceaudit.outliers import REVIEWED_KEEP_TAG
from faceaudit.progress import Progress, drive

from . import labels, schema
from .annotate import count_samples
from .reporting import report_context

INFO_KEY = "pipeline"


@dataclass
class StudyReport:
    dataset: str
    steps: dict[str, str] = field(default_factory=dict)  # step -> what it did
    written: list[str] = field(default_factory=list)  # report files written by this run
    summary_table: str = ""

    @property
    def nothing_new(self) -> bool:
        return all(s.startswith("skipped") for s in self.steps.values() if s)

    def to_dict(self) -> dict:
        return asdict(self)


def run_study(config: StudyConfig, progress: Callable[[Progress], None] | None = None,
              echo: Callable[[str], None] = print) -> StudyReport:
    """Run every step of the study ``config`` describes (validated by :func:`faceaudit.config.load_config`)."""
    from .ingest import iter_load

    _check_domains(config)
    _check_reports(config)
    report = StudyReport(config.dataset)
    added = 0
    for s in config.sources:
        loaded = drive(iter_load(s.path, source=s.name, domain=s.domain, format=s.format,
                                 dataset_name=config.dataset, extract_to=s.extract_to, limit=s.limit), progress)
        added += loaded.added
        echo(loaded.summary())
    report.steps["load"] = f"{added} samples added" if added else "skipped: every file already loaded"
    dataset = schema.open_dataset(config.dataset, create=False)
    report.steps["annotate"] = _annotate(dataset, config, progress, echo)
    report.steps["embed"] = _embed(config, progress, echo)
    dataset.reload()
    done = schema.get_info(dataset, INFO_KEY, {}) or {}
    inputs = {"labelled": count_samples(dataset.exists(labels.CODE_FIELD)), "samples": count_samples(dataset),
              "labels_version": labels.labels_version(dataset)}  # read before the labels are
    compare_key = _key(inputs, asdict(config.comparison))
    result = _compare(dataset, config, compare_key, report)
    outlier_key = _key(inputs, asdict(config.outliers), states=config.comparison.states,
                       alpha=config.comparison.alpha)
    outlier_state = _outliers(dataset, config, outlier_key, done, report, echo)
    identity_state = _identity(dataset, config, done, report, echo)
    run_key = fingerprint.settings_key({"compare": compare_key, "outliers": outlier_state, "identity": identity_state})
    _write_reports(dataset, config, result, report, run_key)
    report.summary_table = "\n".join(reports.text_table(result).splitlines()[:8])
    return report


def _check_domains(config: StudyConfig) -> None:
    """Refuse, before anything is loaded, a study that cannot be compared: the config's sources
    and those already in the dataset must include a real and a synthetic one (else the study
    would load and annotate everything, then stop at the comparison)."""
    import fiftyone as fo

    domains = {s.domain for s in config.sources}
    if fo.dataset_exists(config.dataset):
        stored = schema.sources_info(schema.open_dataset(config.dataset, create=False))
        domains |= {info.get("domain") for info in stored.values()}
    for domain in ("real", "synthetic"):
        if domain not in domains:
            raise ValueError(f"dataset '{config.dataset}': no {domain} source to compare with, in the config "
                             f"or already loaded; add a [[sources]] table with domain = \"{domain}\"")


def _check_reports(config: StudyConfig) -> None:
    """Before the first load: no report over a file of a source already in the dataset (or in
    its folder); the config's own sources were checked when it was read."""
    import fiftyone as fo

    if fo.dataset_exists(config.dataset):
        r = config.reports
        schema.check_outputs(schema.open_dataset(config.dataset, create=False),
                             {"html": r.html, "json": r.json, "csv": r.csv}, prefix="reports.", overwrite=r.overwrite)


def _key(*parts: dict, **more) -> dict:
    """A step's inputs as the database gives them back (tuples become lists)."""
    merged = {k: v for part in parts for k, v in part.items()} | more
    return json.loads(json.dumps(merged))


def _annotate(dataset, config: StudyConfig, progress, echo) -> str:
    """Label what is unlabelled, and relabel what other model settings labelled (the model is
    loaded only when there is something to do)."""
    from .annotate import annotate_options, iter_annotate, settings_key, todo_view

    m = config.model
    options = dict(checkpoint=m.checkpoint, model=m.kind, device=m.device, batch_size=m.batch_size,
                   workers=m.workers, mc_passes=m.passes, threshold=m.threshold)
    if labels.CODE_FIELD in dataset.get_field_schema():
        left = count_samples(todo_view(dataset.view(), settings=settings_key(annotate_options(**options))))
        if left == 0:
            n = count_samples(dataset.exists(labels.CODE_FIELD))
            echo(f"0 samples labelled; {n} already labelled (nothing left to label)")
            return "skipped: every readable sample is labelled with these settings"
    annotated = drive(iter_annotate(config.dataset, relabel=True, **options), progress)
    echo(annotated.summary())
    relabelled = f" ({annotated.relabelled} relabelled: other settings)" if annotated.relabelled else ""
    return f"{annotated.labelled} samples labelled{relabelled}"


def _embed(config: StudyConfig, progress, echo) -> str:
    """Face embeddings (``[embedding]``): only samples without a vector; none left: skipped.
    When the config's model, checkpoint, detect or flip differ from those the stored vectors
    were made with, every sample is embedded again (vectors of two settings are never mixed)."""
    from . import embed

    e = config.embedding
    if e is None:
        return ""
    options = dict(model=e.model, checkpoint=e.checkpoint, detect=e.detect, flip=e.flip)
    changed = _embedding_changed(config.dataset, embed.embed_options(**options))
    if changed:
        echo(f"embed: the [embedding] settings changed ({changed}): embedding every sample again")
    embedded = drive(embed.iter_embed(config.dataset, **options, device=e.device, batch_size=e.batch_size,
                                      workers=e.workers, overwrite=bool(changed)), progress)
    echo(embedded.summary())
    if embedded.embedded == 0 and embedded.no_face == 0 and embedded.failed == 0:
        return "skipped: every readable sample is embedded"
    return f"{embedded.embedded} samples embedded" + (" again (settings changed)" if changed else "")


def _embedding_changed(dataset_name: str, options) -> str:
    """What differs between the stored vectors' settings and ``options`` ("" when nothing does,
    or when no vector is stored)."""
    from . import embed

    dataset = schema.open_dataset(dataset_name, create=False)
    stored = embed.stored_settings(dataset)
    if stored is None or count_samples(dataset.exists(embed.FIELD)) == 0:
        return ""
    now = options.settings()
    return ", ".join(f"{k} {stored[k]!r} -> {now[k]!r}" for k in embed.SETTINGS if stored.get(k) != now[k])


def _identity(dataset, config: StudyConfig, done: dict, report: StudyReport, echo) -> dict | None:
    """The identity audit (``[identity]``) on the embeddings, rerun unless the dataset is in the
    state this step left it in (:func:`_identity_state`); returns that state (None: no step)."""
    from . import identity

    i = config.identity
    if i is None:
        return None
    if schema.get_info(dataset, "identity") and done.get("identity") == _identity_state(dataset, i):
        report.steps["identity"] = "skipped: embeddings, identities, tags and settings unchanged"
        return done["identity"]
    result = identity.identity_audit(dataset, identity.options(i.threshold, i.fmr, i.max_pairs, i.seed), tag=i.tag)
    state = _identity_state(dataset, i)
    _record(dataset, "identity", state)
    leaks = {s: v.get("share_above_threshold") for s, v in result.get("leakage", {}).items() if v.get("applicable")}
    echo(f"identity audit: threshold {result['threshold']:.3g} ({result['threshold_rule']}); "
         + "; ".join(f"{s} leakage {v:.1%}" for s, v in leaks.items() if v is not None))
    report.steps["identity"] = "computed" + (": tagged " + ", ".join(f"{k} {v}" for k, v in result["tagged"].items())
                                             if result.get("tagged") else "")
    return state


def _identity_state(dataset, settings) -> dict:
    """Everything the stored identity audit depends on or left behind: the step's settings, the
    vectors' settings and counts, each identity's size and its samples' identity and
    ``reviewed_keep`` tags (an identity renamed or merged, a tag changed in the App), and a digest
    of the stored audit itself (an audit run by hand, from the App or the CLI, with other
    settings replaces it). Equal states: the stored audit is this step's and still current."""
    from . import identity
    from .embed import FIELD

    made_with = {k: v for k, v in (schema.get_info(dataset, "embedding") or {}).items()
                 if not k.endswith("_at")}  # the settings, not when a run last finished
    tags = [*identity.TAGS, REVIEWED_KEEP_TAG]
    group = {"_id": {"s": "$" + schema.SOURCE, "i": "$" + schema.IDENTITY}, "n": {"$sum": 1}}
    group |= {f"t{k}": {"$sum": {"$cond": [{"$in": [t, {"$ifNull": ["$tags", []]}]}, 1, 0]}} for k, t in enumerate(tags)}
    rows = sorted(json.dumps(r, sort_keys=True, default=str)
                  for r in dataset._sample_collection.aggregate([{"$group": group}], allowDiskUse=True))
    return _key(asdict(settings), embedding=made_with, embedded=count_samples(dataset.exists(FIELD)),
                samples=count_samples(dataset), identities=fingerprint.settings_key({"rows": rows}),
                audit=fingerprint.settings_key({"audit": schema.get_info(dataset, "identity")}))


def _compare(dataset, config: StudyConfig, key: dict, report: StudyReport) -> dict:
    """The stored comparison if it was computed with ``key`` (the labels' version and counts and
    the comparison's settings; a ``faceaudit compare`` by hand stores one under its own key),
    else a new one, stored under ``key``."""
    from .compare import compute_comparison, store_comparison, stored_comparison

    stored = stored_comparison(dataset, key)
    if stored is not None:
        report.steps["compare"] = "skipped: labels and settings unchanged"
        return stored
    c = config.comparison
    _, result = compute_comparison(dataset, states=c.states, alpha=c.alpha, bootstrap=c.bootstrap, seed=c.seed)
    store_comparison(dataset, result, key)
    report.steps["compare"] = "computed"
    return result


def _outliers(dataset, config: StudyConfig, key: dict, done: dict, report: StudyReport, echo) -> dict:
    """Realness scores, identity consistency and the outlier tags, redone unless the dataset is
    in the state this step left it in (:func:`_outlier_state`); returns that state."""
    from . import outliers

    o = config.outliers
    if done.get("outliers") == _outlier_state(dataset, key, o.tag):
        report.steps["outliers"] = "skipped: labels, tags and settings unchanged"
        return done["outliers"]
    outliers.score_realness(dataset, states=config.comparison.states, alpha=config.comparison.alpha, joint=o.joint)
    outliers.identity_consistency(dataset.view(), write=True)
    n = outliers.flag_outliers(dataset, top=o.top, threshold=o.threshold, tag=o.tag)
    state = _outlier_state(dataset, key, o.tag)
    _record(dataset, "outliers", state)
    report.steps["outliers"] = f"{n} synthetic samples tagged '{o.tag}'"
    echo(f"{n} synthetic faces real data explains least tagged '{o.tag}' "
         f"(saved view '{outliers.OUTLIERS_VIEW}')")
    return state


def _outlier_state(dataset, key: dict, tag: str) -> dict:
    """The outlier step's inputs (``key``) and what it left: how many samples carry ``tag`` and
    ``reviewed_keep``, and a digest of the stored realness settings. An ``outliers`` run by hand
    (other top, threshold or joint attributes), a clear, or faces marked as reviewed in the App
    change it, so the run redoes the step and the reports."""
    coll = dataset._sample_collection
    return _key(key, tagged=coll.count_documents({"tags": tag}),
                reviewed=coll.count_documents({"tags": REVIEWED_KEEP_TAG}),
                realness=fingerprint.settings_key({"realness": schema.get_info(dataset, "realness")}))


def _record(dataset, step: str, key) -> None:
    schema.set_info_entry(dataset, INFO_KEY, step, key)  # this step only: a concurrent run keeps its own


#: test hook: ``<kind>.part`` (after that report's temporary file is written) or ``<kind>`` (after
#: it is renamed into place) makes the run sleep there, so that a test can SIGKILL it at that point
PAUSE_ENV = "FACEAUDIT_PAUSE_IN_REPORTS"


def _write_reports(dataset, config: StudyConfig, result: dict, report: StudyReport, run_key: str) -> None:
    """Write the configured reports as one set: each to a temporary file, then all renamed into
    place, then recorded (``pipeline.reports``: per path, the run's key and the file's digest).
    They are rewritten, all together, unless every one is on disk as this run's key recorded it,
    so a run killed between two renames leaves a set that the next run rewrites. Temporary files
    of killed runs are removed. The HTML report carries its provenance (run, sources, realness,
    outliers' thumbnails)."""
    writers = {"html": lambda r, path: reports.to_html(r, report_context(dataset, path, tag=config.outliers.tag)),
               "json": lambda r, path: json.dumps(r, indent=1), "csv": lambda r, path: reports.to_csv(r)}
    paths = {kind: os.path.abspath(getattr(config.reports, kind)) for kind in writers
             if getattr(config.reports, kind) is not None}
    for path in paths.values():
        _remove_leftovers(path)
    recorded = {r.get("path"): r for r in (schema.get_info(dataset, INFO_KEY, {}) or {}).get("reports") or []
                if isinstance(r, dict)}  # a list: paths hold dots, which MongoDB keys should not
    if paths and all(_is_current(path, recorded.get(path), run_key) for path in paths.values()):
        report.steps["reports"] = "skipped: reports up to date"
        return
    if not paths:
        report.steps["reports"] = ""
        return
    parts = {}
    for kind, path in paths.items():
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        parts[kind] = f"{path}.part-{os.getpid()}"
        with open(parts[kind], "w", encoding="utf-8", newline="") as f:
            f.write(writers[kind](result, path))
        _pause(f"{kind}.part")
    for kind, path in paths.items():
        os.replace(parts[kind], path)
        report.written.append(path)
        _pause(kind)
    _record(dataset, "reports", [{"path": path, "key": run_key, "digest": fingerprint.file_digest(path)}
                                 for path in paths.values()])
    report.steps["reports"] = "written: " + ", ".join(report.written)


def _is_current(path: str, record: dict | None, run_key: str) -> bool:
    """``path`` holds what the run with ``run_key`` wrote there (and nothing else since)."""
    return (record is not None and record.get("key") == run_key and os.path.isfile(path)
            and fingerprint.file_digest(path) == record.get("digest"))


def _remove_leftovers(path: str) -> None:
    """Remove ``path.part-PID`` files whose process is gone (a run killed while writing)."""
    folder, name = os.path.split(path)
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return
    for entry in entries:
        pid = entry[len(name) + len(".part-"):] if entry.startswith(name + ".part-") else ""
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.remove(os.path.join(folder, entry))
            except OSError:
                pass


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had this pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True


def _pause(step: str) -> None:
    if os.environ.get(PAUSE_ENV) == step:
        import time

        time.sleep(600)


def open_app(dataset_name: str) -> None:
    """Open the App on the dataset with the attribute comparison panel beside the grid; returns
    when the App is closed."""
    import fiftyone as fo

    dataset = schema.open_dataset(dataset_name, create=False)
    spaces = fo.Space(children=[fo.Panel(type="Samples", pinned=True),
                                fo.Panel(type="attribute_comparison")],
                      orientation="horizontal")
    session = fo.launch_app(dataset, spaces=spaces)
    session.wait()
