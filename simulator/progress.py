"""Progress display for long runs (rich), kept out of the simulator's core."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


@contextmanager
def progress_bar(console: Console, description: str, total: int | None) -> Iterator[callable]:
    """Yields ``update(advance=0, completed=None, description=None)``; a spinner when total is None."""
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def update(advance: int = 0, completed: int | None = None, description: str | None = None) -> None:
            progress.update(task, advance=advance, completed=completed, description=description)
        yield update
