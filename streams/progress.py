"""Progress bars for long work, on stderr so stdout stays parseable.

Example
-------
>>> with progress_bar("replay", total=3) as advance:
...     for _ in range(3):
...         advance(1)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

stderr = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(label: str, total: float | None) -> Iterator[Callable[[float], None]]:
    """Yield ``advance(n)``; shows count, rate and time left while the block runs."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


@contextlib.contextmanager
def optional_progress(
    enabled: bool, label: str, total: float | None
) -> Iterator[Callable[[float], None]]:
    """:func:`progress_bar` when ``enabled``, else a silent ``advance``."""
    if not enabled:
        yield lambda _n: None
        return
    with progress_bar(label, total) as advance:
        yield advance


class RateColumn(ProgressColumn):
    """Items per second, as a plain number."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:>9,.0f}/s" if speed else "        -/s", style="cyan")
