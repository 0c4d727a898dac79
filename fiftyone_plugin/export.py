"""Export a view as a training set (:mod:`faceaudit.export` does the writing).

The view's ``filepath``, ``source``, ``identity`` and ``tags`` are read twice (plan, then
write) through one aggregation, the view's own pipeline (sidebar filters and view stages
included) then a projection and a sort on ``(source, identity, filepath)``, streamed from the
cursor in batches: memory does not grow with the view. This reaches below FiftyOne's public API
(``view._pipeline()``, ``dataset._sample_collection``) as :mod:`.counts` does.
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator, Iterator

import fiftyone as fo

from faceaudit import export as core
from faceaudit import params
from faceaudit.progress import Progress

from . import schema

BATCH = 5000


def resolve_view(dataset, view_name: str | None = None, sources=None):
    """The dataset, or its saved view ``view_name``, limited to ``sources`` (all checked)."""
    view = dataset.view()
    if not params.is_blank(view_name):
        view_name = params.name("view", view_name)
        if not dataset.has_saved_view(view_name):
            raise core.ExportError(f"dataset {dataset.name!r} has no saved view {view_name!r} "
                                   f"(saved views: {', '.join(dataset.list_saved_views()) or 'none'})")
        view = dataset.load_saved_view(view_name)
    sources = [params.name("source", s) for s in sources or ()]
    if sources:
        known = schema.sources_info(dataset)
        unknown = [s for s in sources if s not in known]
        if unknown:
            raise core.ExportError(f"source {unknown[0]!r} is not in dataset {dataset.name!r} "
                                   f"(sources: {', '.join(sorted(known)) or 'none'})")
        view = view.match({schema.SOURCE: {"$in": sources}})
    return view


def check_tags(dataset, tags) -> None:
    """Every excluded tag is a tag of the dataset or one faceaudit assigns (``identity_leak`` when
    the audit found none): a typo would silently exclude nothing."""
    known = set(dataset.distinct("tags"))
    unknown = [t for t in tags if t not in known and t not in core.KNOWN_TAGS]
    if unknown:
        raise core.ExportError(f"no sample of dataset {dataset.name!r} has the tag {unknown[0]!r} "
                               f"(tags: {', '.join(sorted(known)) or 'none'})")


def check_out(dataset, out: str) -> str:
    """``out`` clear of every source root of ``dataset`` (:func:`faceaudit.export.check_out`) and
    of every sample's file, in the view or not: ``--overwrite`` empties ``out``, and must never
    remove a file the dataset points at. One indexed prefix query per spelling of ``out``."""
    out = core.check_out(out, schema.source_folders(dataset))
    for spelling in sorted({out, os.path.realpath(out)}):
        prefix = "^" + re.escape(spelling.rstrip(os.sep) + os.sep)
        hit = dataset._sample_collection.find_one({"filepath": {"$regex": prefix}}, {"filepath": 1})
        if hit is not None:
            raise core.ExportError(f"{out} holds {hit['filepath']}, an image of dataset {dataset.name!r}; "
                                   "export to a folder outside the dataset's files")
    return out


def iter_view_items(view) -> Iterator[core.Item]:
    """The view's samples as :class:`faceaudit.export.Item`, grouped by (source, identity)."""
    pipeline = view._pipeline() + [
        {"$project": {"_id": 0, "filepath": 1, schema.SOURCE: 1, schema.IDENTITY: 1, "tags": 1}},
        {"$sort": {schema.SOURCE: 1, schema.IDENTITY: 1, "filepath": 1}},
    ]
    cursor = view._dataset._sample_collection.aggregate(pipeline, allowDiskUse=True, batchSize=BATCH)
    with cursor:
        yield from core.read_items(cursor)


def iter_export(view, out: str, format: str = "folders", exclude_tags=(), min_images=1, link: str = "copy",
                overwrite=False, no_identity: str = "refuse",
                view_name: str | None = None) -> Generator[Progress, None, core.Result]:
    """Export ``view`` (a Dataset or DatasetView) into ``out``; every argument is checked before
    anything is read or written."""
    options = core.check_options(format, link, exclude_tags, min_images, no_identity, overwrite)
    view = view.view()  # a Dataset or a DatasetView
    dataset = view._dataset
    out = check_out(dataset, out)
    check_tags(dataset, options.exclude_tags)
    provenance = {
        "dataset": dataset.name,
        "saved_view": view_name,
        "view_stages": view._serialize(),
        "exclude_tags": list(options.exclude_tags),
        "fiftyone": fo.__version__,
    }
    return (yield from core.export(out, lambda: iter_view_items(view), options, provenance,
                                   protected=schema.source_folders(dataset)))


def export_dataset(dataset, out: str, view_name: str | None = None, sources=None,
                   **options) -> Generator[Progress, None, core.Result]:
    """``faceaudit export``: the dataset or a saved view of it, limited to ``sources``."""
    view = resolve_view(dataset, view_name, sources)
    return (yield from iter_export(view, out, view_name=view_name, **options))
