"""Helpers shared by the operators: execution mode, form validation and progress in both modes."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import fiftyone as fo
import fiftyone.operators.types as types

from faceaudit import params

LEGACY_ORCHESTRATORS_ENV = "FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"


def allow_delegation_from_the_app() -> None:
    """Let the open-source App queue delegated operations for ``fiftyone delegated launch``.

    FiftyOne 1.22 reads ``fo.config.allow_legacy_orchestrators`` each time the App asks for an
    operator's execution options (``ExecutionOptions.orchestrator_registration_enabled``);
    without it the App answers "Background compute is not yet configured" and cannot queue.
    This runs when the App server imports the plugin, so ``fiftyone app launch`` needs no extra
    environment. A user's own ``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS`` (true or false) wins."""
    if os.environ.get(LEGACY_ORCHESTRATORS_ENV) is None:
        fo.config.allow_legacy_orchestrators = True


allow_delegation_from_the_app()


def execution_mode(ctx, inputs: types.Object, default_delegated: bool = False) -> None:
    """Add the 'run now / delegate' choice (the open-source App hides its own 'Schedule').

    The App's radio sends its values as text, so the choices are "false" / "true"; real booleans
    (``foo.execute_operator`` from Python) are accepted too. :func:`wants_delegation` reads both."""
    choices = types.RadioGroup(orientation="horizontal")
    choices.add_choice("false", label="Run now", description="Run in the App (short jobs)")
    choices.add_choice("true", label="Delegate", description="Queue for `fiftyone delegated launch`")
    inputs.enum("delegate", [*choices.values(), False, True], default=str(default_delegated).lower(),
                label="Execution mode", view=choices,
                **form_check(ctx, "delegate", lambda v: params.to_bool("delegate", v)))


def wants_delegation(ctx, default: bool | None = None) -> bool | None:
    """The form's choice, else ``default``; None leaves it to FiftyOne (``request_delegation``)."""
    return params.to_bool("delegate", ctx.params.get("delegate"), default)


class Form(types.Object):
    """An operator's form whose messages name each field as the form labels it ("Batch size:
    must be at least 1, got 0"), not as the parameter (``batch_size``) or the CLI's option: the
    validation is :mod:`faceaudit.params`' one for every door, the name is each door's own
    (:meth:`faceaudit.params.ParamError.named`)."""

    def define_property(self, name, type, **kwargs):
        error = kwargs.pop(_REFUSED, None)
        prop = super().define_property(name, type, **kwargs)
        if error is not None:
            prop.error_message = in_form_words(error, prop, name)
        return prop

    def as_property(self, label: str, aliases: dict[str, str] | None = None) -> types.Property:
        """The form as ``resolve_input`` returns it, titled ``label``; every field's message now
        names the CLI options it mentions by the form's labels, or ``aliases``
        (:func:`options_as_labels`: once every field is defined, so a message may name a field
        defined after its own)."""
        for prop in self.properties.values():
            if getattr(prop, "error_message", None):
                prop.error_message = options_as_labels(prop.error_message, self, aliases)
        return types.Property(self, view=types.View(label=label))

    def to_json(self):
        return {**super().to_json(), "name": "Object"}  # the App knows FiftyOne's type names only


#: a CLI option in a message, with the verb before it and its value after it if any: "give
#: --checkpoint PATH", "pass --overwrite", "--no-identity own" (a lowercase value only where it
#: is one of the field's choices)
_OPTION = re.compile(r"(?:\b(pass|give|use) )?--([a-z][a-z0-9-]*)(?: ([A-Z][A-Z_]*\b|[a-z][a-z0-9_]*))?")


def options_as_labels(message: str, form: types.Object | None, aliases: dict[str, str] | None = None) -> str:
    """``message`` with each CLI option it mentions named as ``form`` labels that field: "give
    --checkpoint PATH" -> 'give "Checkpoint"', "pass --overwrite" -> 'tick "Overwrite"' (a
    checkbox), "--no-identity own" -> '"Samples without identity": own' (a choice). The
    messages are one for every door and say the CLI's words; ``aliases`` names options the form
    shows otherwise (a radio choice: ``{"threshold": '"A cosine threshold"'}``); an option the
    form has neither field nor alias for stays as it is."""
    fields = form.properties if form is not None else {}
    aliases = aliases or {}

    def label(match: re.Match) -> str:
        verb, option, value = match.group(1), match.group(2).replace("-", "_"), match.group(3)
        prop = fields.get(option)
        name = getattr(prop.view, "label", None) if prop is not None else None
        if not name:
            if option not in aliases:
                return match.group(0)
            return (f"{verb} " if verb else "") + aliases[option] + (f" {value}" if value and value.islower() else "")
        if isinstance(prop.type, types.Boolean):
            return f'tick "{name}"' + (f" {value}" if value else "")
        choices = getattr(prop.type, "values", None) or ()
        if value and value.islower():
            if value in choices:
                return f'"{name}": {value}'
            return (f"{verb} " if verb else "") + f'"{name}" {value}'
        return (f"{verb} " if verb else "") + f'"{name}"'

    return _OPTION.sub(label, message)


def grid_now_shows(view: str) -> str:
    """What an operator that opened the saved view ``view`` says (new-user review C8: the grid
    moved to it silently)."""
    return (f"The grid now shows the saved view {view}; choose another in the saved-view menu above the "
            "grid, or clear it there for the whole dataset")


def rounded(value: float | None, digits: int = 4) -> float | None:
    """``value`` to ``digits`` significant digits, as the App's other numbers are shown."""
    return None if value is None else float(f"{value:.{digits}g}")


def rule_words(rule) -> str:
    """A stored threshold rule as the App says it: without the CLI option it may name ("given
    (--threshold)" made "threshold 0.95 (given (--threshold))")."""
    return re.sub(r"\s*\(--[a-z][a-z0-9-]*[^()]*\)", "", str(rule or "")).strip()


def labels_of(form: types.Property | types.Object) -> types.Object:
    """The :class:`Form` inside ``resolve_input``'s answer (or ``form`` itself)."""
    return getattr(form, "type", form)


class Refused(ValueError):
    """A refusal raised from ``execute``, in the form's words (:func:`app_words`)."""


@contextmanager
def refused_in_form_words(form: Callable[[], Any], aliases: dict[str, str] | None = None):
    """A plain operator's ``execute`` body: a ``ValueError`` it raises (the core's refusal, in
    the CLI's words) is raised again as :class:`Refused` in the form's (``form()``: the
    operator's ``resolve_input`` for this context), which the App shows in its notification."""
    try:
        yield
    except Refused:
        raise
    except ValueError as e:
        raise Refused(app_words(e, form, aliases)) from None


def app_words(error: Exception, form: Callable[[], Any] | None, aliases: dict[str, str] | None = None) -> str:
    """``error``'s message as the App shows it: the CLI options it names as the fields of the
    operator's form (``form()``: its ``resolve_input`` for this context, built only here, when
    something was refused)."""
    if form is None:
        return str(error)
    try:
        fields = labels_of(form())
    except Exception:  # noqa: BLE001 - the message must reach the user even if the form does not resolve
        return str(error)
    prop = fields.properties.get(getattr(error, "param", None))
    return options_as_labels(in_form_words(error, prop, getattr(error, "param", None)), fields, aliases)


#: the option :func:`form_check` hands :meth:`Form.define_property`: the refusal itself
_REFUSED = "faceaudit_refused"


def in_form_words(error: Exception, prop, name: str) -> str:
    """``error``'s message as the form shows it on ``prop`` (field ``name``): a
    :class:`faceaudit.params.ParamError` about that field names it by its label."""
    label = getattr(prop.view, "label", None) if prop is not None else None
    if isinstance(error, params.ParamError) and label:
        return error.named(label)
    return str(error)


def form_check(ctx, name: str, validate: Callable[[Any], Any]) -> dict:
    """Property options that mark form field ``name`` invalid, with the validator's message
    (in a :class:`Form`, naming the field by its label), while its current value is refused
    (the App then keeps Execute disabled)."""
    try:
        validate(ctx.params.get(name))
    except (ValueError, OSError) as e:  # params' ParamError, readers' LayoutError, ...
        return {"invalid": True, "error_message": str(e), _REFUSED: e}
    return {}


def door_check(inputs: types.Object, check: Callable[[], Any], fallback: str) -> None:
    """Run the door's whole validation (``check``: the same function the CLI runs) while the form
    is resolved, so that a refused value is refused before anything is queued: FiftyOne checks
    the inputs before it runs *or queues* an operation, while ``execute`` runs only in the
    delegated worker. The message goes on the field it names (a :class:`faceaudit.params.
    ParamError`'s ``param``), else on ``fallback``."""
    try:
        check()
    except ValueError as e:
        name = getattr(e, "param", None)
        prop = inputs.properties.get(name)
        message = in_form_words(e, prop, name)
        prop = prop or inputs.properties.get(fallback)
        if prop is not None and not prop.invalid:
            prop.invalid, prop.error_message = True, message


def resolve_path(ctx, name: str) -> None:
    """Make the relative path in form field ``name`` absolute, against this process's working
    folder (the App server's, or the Python caller's), in the parameters that are queued: a
    delegated operation runs in a launcher started anywhere."""
    value = ctx.params.get(name)
    if isinstance(value, str) and value.strip() and "://" not in value:
        ctx.params[name] = os.path.abspath(os.path.expanduser(value.strip()))


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


IMMEDIATE_LIMIT = 2000  # larger views are always delegated: the App's request times out at 600 s
RUN_NOW_DEFAULT = 200  # up to this many samples the form defaults to Run now (about a minute on a CPU)


def view_size(ctx) -> int:
    return ctx.target_view().count() if ctx.dataset is not None else 0


def delegation_by_size(ctx, run_now_up_to: int = RUN_NOW_DEFAULT) -> bool | None:
    """``resolve_delegation`` of a job over the target view: above :data:`IMMEDIATE_LIMIT`
    samples always delegated, else the form's choice (default: delegated above
    ``run_now_up_to``, :data:`RUN_NOW_DEFAULT` unless the job says otherwise)."""
    count = view_size(ctx)
    if count > IMMEDIATE_LIMIT:
        return True
    return wants_delegation(ctx, default=count > run_now_up_to)


def size_notice(ctx, inputs: types.Object, run_now_up_to: int = RUN_NOW_DEFAULT) -> None:
    """The execution-mode choice (Run now by default up to ``run_now_up_to`` samples), with a
    notice when the view is too large to run now."""
    count = view_size(ctx)
    if count > IMMEDIATE_LIMIT:
        inputs.view("note", types.Notice(
            label=f"{count} samples: this runs as a delegated operation (fiftyone delegated launch)"))
    execution_mode(ctx, inputs, default_delegated=count > run_now_up_to)
def shown_errors(ctx, steps, what: str = "failed", form: Callable[[], Any] | None = None):
    """The steps of a generator operator (``steps()``, or a generator ``steps``) with an error
    shown as an error notification in the App (``what: message``, the CLI options it names as
    ``form``'s fields: see :func:`app_words`), as a plain operator's error is shown; a delegated
    run re-raises, so its operation is marked failed with the error, and so does a Python
    caller's (``foo.execute_operator``: its result's ``error``).

    Why: the App reads a generator operator's error but not its message (FiftyOne 1.x's
    ``/operators/execute/generator`` client keeps ``error``, the traceback, and drops
    ``error_message``), so a refusal raised from ``execute`` reached the user as "Operation
    failed: <operator>" with its words at the end of a folded traceback. Use as
    ``return shown_errors(ctx, lambda: steps(job(...)), "embed failed", lambda: self.resolve_input(ctx))``:
    the job is built and started inside the stream, so what it refuses before any work (a path
    that does not exist, a checkpoint that does not load) is caught here too."""
    try:
        return (yield from (steps() if callable(steps) else steps))
    except Exception as e:  # noqa: BLE001 - every error must reach the user, with its words
        if ctx.delegated or not from_the_app(ctx):
            raise
        yield ctx.ops.notify(f"{what}: {app_words(e, form)}", variant="error")
        return None


def from_the_app(ctx) -> bool:
    """Whether the App sent this request (its HTTP body names the operator; a Python caller's
    ``foo.execute_operator`` context does not)."""
    return bool(ctx.request_params.get("operator_uri"))
