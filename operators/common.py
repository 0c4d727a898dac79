"""Helpers shared by the operators: execution mode and progress in both modes."""

from __future__ import annotations

import fiftyone.operators.types as types


def execution_mode(ctx, inputs: types.Object, default_delegated: bool = False) -> None:
    """Add the 'run now / delegate' choice (the open-source App hides its own 'Schedule')."""
    choices = types.RadioGroup(orientation="horizontal")
    choices.add_choice(False, label="Run now", description="Run in the App (short jobs)")
    choices.add_choice(True, label="Delegate", description="Queue for `fiftyone delegated launch`")
    inputs.enum(
        "delegate", choices.values(), default=default_delegated, label="Execution mode", view=choices
    )


def wants_delegation(ctx, default: bool | None = None) -> bool | None:
    """The form's choice, else ``default``; None leaves it to FiftyOne (``request_delegation``)."""
    choice = ctx.params.get("delegate")
    return default if choice is None else bool(choice)


def progress_op(ctx, event):
    """Report a :class:`faceaudit.progress.Progress`: returns an op to yield in immediate mode,
    or None after reporting it directly in a delegated run."""
    if ctx.delegated:
        ctx.set_progress(progress=event.fraction, label=event.label)
        return None
    return ctx.ops.set_progress(progress=event.fraction, label=event.label)


def run_job(ctx, job):
    """Drive a progress-yielding core job inside a generator operator; returns its result.

    Use as ``result = yield from run_job(ctx, job)``.
    """
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        op = progress_op(ctx, event)
        if op is not None:
            yield op
