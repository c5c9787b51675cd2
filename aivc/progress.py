"""Progress reporting: rich bars on a terminal, silent in --json mode, CI and tests."""

from __future__ import annotations

import os
import sys
from typing import Any, Protocol


class Progress(Protocol):
    def phase(self, name: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class NullProgress:
    """Reports nothing."""

    def phase(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class RichProgress:
    """One rich progress bar per phase, on stderr (or ``console``); descriptions and notes
    are plain text, never read as Rich markup (they carry dataset ids and file names)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as _P, TextColumn, TimeElapsedColumn

        self._console = console or Console(stderr=True, markup=False, highlight=False)
        self._p = _P(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self._console, transient=False)
        self._p.start()
        self._task: Any = None

    def phase(self, name: str, total: int | None = None) -> None:
        if self._task is not None:
            t = self._p.tasks[self._task]
            if t.total is not None:
                self._p.update(self._task, completed=t.total)
        self._task = self._p.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._p.advance(self._task, n)

    def note(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._p.stop()


def make_progress(json_mode: bool) -> Progress:
    if json_mode or os.environ.get("CI") or not sys.stderr.isatty():
        return NullProgress()
    return RichProgress()
