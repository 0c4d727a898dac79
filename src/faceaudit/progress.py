"""Progress events shared by the three doors (CLI, operators, Python).

Long jobs are written as generators that yield :class:`Progress` and *return* their result, so
that each door shows progress its own way: a tqdm bar on the command line, ``ctx.set_progress``
in a delegated operation, ``yield ctx.ops.set_progress(...)`` in an immediate one.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` work units finished; ``label`` says what in words."""

    done: int
    total: int
    label: str

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def drive(job: Generator[Progress, None, T], on_progress: Callable[[Progress], None] | None = None) -> T:
    """Run a progress-yielding job to its end and return its result."""
    while True:
        try:
            event = next(job)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(event)
