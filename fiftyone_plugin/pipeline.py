"""The whole study in one call: load every source, annotate, compare, score and flag outliers,
write the reports (``faceaudit run study.toml``; ``faceaudit run`` alone runs the demo's config).

Each step skips what is done, so a rerun after any interruption continues where it stopped and a
rerun of a finished study changes nothing: loading adds only missing files; annotation labels only
unlabelled samples (and is skipped when none are left); the comparison, the outlier scores and
the reports are recomputed only when their inputs changed, i.e. when the labelled samples or the
step's settings differ from those recorded in ``dataset.info['faceaudit']['pipeline']`` after the
step last finished (labels are deterministic, so equal inputs give equal results).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from faceaudit import report as reports
from faceaudit.config import StudyConfig
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
    inputs = {"labelled": count_samples(dataset.exists(labels.CODE_FIELD)), "samples": count_samples(dataset)}
    compare_key = _key(inputs, asdict(config.comparison))
    result = _compare(dataset, config, compare_key, done, report)
    outlier_key = _key(inputs, asdict(config.outliers), states=config.comparison.states,
                       alpha=config.comparison.alpha)
    _outliers(dataset, config, outlier_key, done, report, echo)
    # the HTML report shows the outliers too: new tags make the reports stale as a new comparison does
    fresh = not (report.steps["compare"].startswith("skipped") and report.steps["outliers"].startswith("skipped"))
    _write_reports(dataset, config, result, report, fresh=fresh)
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


def _key(*parts: dict, **more) -> dict:
    """A step's inputs as the database gives them back (tuples become lists)."""
    merged = {k: v for part in parts for k, v in part.items()} | more
    return json.loads(json.dumps(merged))


def _annotate(dataset, config: StudyConfig, progress, echo) -> str:
    from .annotate import iter_annotate, todo_view

    if labels.CODE_FIELD in dataset.get_field_schema():
        left = todo_view(dataset.view()).count()
        if left == 0:
            n = dataset.exists(labels.CODE_FIELD).count()
            echo(f"0 samples labelled; {n} already labelled (nothing left to label)")
            return "skipped: every readable sample is labelled"
    m = config.model
    annotated = drive(iter_annotate(config.dataset, checkpoint=m.checkpoint, model=m.kind, device=m.device,
                                    batch_size=m.batch_size, workers=m.workers, mc_passes=m.passes,
                                    threshold=m.threshold), progress)
    echo(annotated.summary())
    return f"{annotated.labelled} samples labelled"


def _embed(config: StudyConfig, progress, echo) -> str:
    """Face embeddings (``[embedding]``): only samples without a vector; none left: skipped."""
    from .embed import iter_embed

    e = config.embedding
    if e is None:
        return ""
    embedded = drive(iter_embed(config.dataset, model=e.model, checkpoint=e.checkpoint, detect=e.detect,
                                flip=e.flip, device=e.device, batch_size=e.batch_size, workers=e.workers),
                     progress)
    echo(embedded.summary())
    if embedded.embedded == 0 and embedded.no_face == 0 and embedded.failed == 0:
        return "skipped: every readable sample is embedded"
    return f"{embedded.embedded} samples embedded"


def _compare(dataset, config: StudyConfig, key: dict, done: dict, report: StudyReport) -> dict:
    from .compare import compute_comparison, store_comparison, stored_comparison

    stored = stored_comparison(dataset)
    if stored is not None and done.get("compare") == key:
        report.steps["compare"] = "skipped: labels unchanged"
        return stored
    c = config.comparison
    _, result = compute_comparison(dataset, states=c.states, alpha=c.alpha, bootstrap=c.bootstrap, seed=c.seed)
    store_comparison(dataset, result)
    _record(dataset, "compare", key)
    report.steps["compare"] = "computed"
    return result


def _outliers(dataset, config: StudyConfig, key: dict, done: dict, report: StudyReport, echo) -> None:
    from . import outliers

    if done.get("outliers") == key:
        report.steps["outliers"] = "skipped: labels unchanged"
        return
    o = config.outliers
    outliers.score_realness(dataset, states=config.comparison.states, alpha=config.comparison.alpha, joint=o.joint)
    outliers.identity_consistency(dataset.view(), write=True)
    n = outliers.flag_outliers(dataset, top=o.top, threshold=o.threshold, tag=o.tag)
    _record(dataset, "outliers", key)
    report.steps["outliers"] = f"{n} synthetic samples tagged '{o.tag}'"
    echo(f"{n} synthetic faces real data explains least tagged '{o.tag}' "
         f"(saved view '{outliers.OUTLIERS_VIEW}')")


def _record(dataset, step: str, key: dict) -> None:
    done = dict(schema.get_info(dataset, INFO_KEY, {}) or {})
    done[step] = key
    schema.set_info(dataset, INFO_KEY, done)


def _write_reports(dataset, config: StudyConfig, result: dict, report: StudyReport, fresh: bool) -> None:
    """Write each configured report that is missing, or all of them after a new comparison. The
    HTML report carries its provenance (run, sources, realness, outliers' thumbnails)."""
    writers = {"html": lambda r, path: reports.to_html(r, report_context(dataset, path, tag=config.outliers.tag)),
               "json": lambda r, path: json.dumps(r, indent=1), "csv": lambda r, path: reports.to_csv(r)}
    for kind, write in writers.items():
        path = getattr(config.reports, kind)
        if path is None or (os.path.exists(path) and not fresh):
            continue
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.part-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(write(result, path))
        os.replace(tmp, path)
        report.written.append(path)
    if report.written:
        report.steps["reports"] = "written: " + ", ".join(report.written)
    else:
        report.steps["reports"] = "skipped: reports up to date" if any(asdict(config.reports).values()) else ""


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
