"""A live progress display of a study's trials (Rich), fed by ``run_study``'s progress hook."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from cesagram.tuning.study import StudyProgress


class TrialProgress:
    """Finished trials of the whole study (every worker) against its budget, and the best."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self._task: TaskID | None = None

    def __enter__(self) -> TrialProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, state: StudyProgress) -> None:
        """Show ``state``: finished of budget, running elsewhere, pruned, failed, best so far."""
        status = (
            f"{state.best} | running {state.running} pruned {state.pruned} failed {state.failed}"
        )
        if self._task is None:
            self._task = self._progress.add_task(
                state.study_name, total=state.n_trials, status=status
            )
        self._progress.update(
            self._task, completed=min(state.finished, state.n_trials), status=status
        )
