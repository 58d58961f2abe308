"""The study summary for its parent MLflow run: counts, best trials, importance, figures.

Parameter importance is Optuna's fANOVA (a random forest over the completed trials, the first
objective as target); it needs at least two completed trials whose parameters differ, and is
left out, with the reason, otherwise. Figures use matplotlib's Agg backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import optuna
from optuna.trial import FrozenTrial, TrialState

from cesagram.tuning.search_space import SearchSettings

logger = logging.getLogger(__name__)

IMPORTANCE_SEED = 0


def importance(study: optuna.Study, settings: SearchSettings) -> dict[str, Any]:
    """fANOVA importance of each parameter for the first objective, or why there is none."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {"importance": None, "reason": f"{len(complete)} completed trial(s); needs 2"}
    try:
        values = optuna.importance.get_param_importances(
            study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED),
            target=_first_objective,
        )
    except (RuntimeError, ValueError) as error:
        return {"importance": None, "reason": str(error)}
    return {
        "importance": {name: float(value) for name, value in values.items()},
        "target": settings.objectives[0].metric,
        "evaluator": "fanova",
    }


def _first_objective(trial: FrozenTrial) -> float:
    assert trial.values is not None
    return float(trial.values[0])


def study_summary(
    study: optuna.Study, settings: SearchSettings, decision: Mapping[str, Any], stop_reason: str
) -> dict[str, Any]:
    """JSON-ready summary: settings, trial counts by state, the chosen trial, importance."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: 0 for state in TrialState}
    for trial in trials:
        counts[trial.state.name] += 1
    return {
        "study_name": settings.study_name,
        "task": settings.task,
        "objectives": [objective.model_dump() for objective in settings.objectives],
        "stop_reason": stop_reason,
        "counts": counts,
        "chosen": dict(decision),
        "importance": importance(study, settings),
        "trials": [_trial_row(trial) for trial in trials],
    }


def _trial_row(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "values": trial.values,
        "params": trial.params,
        "intermediate": {str(step): value for step, value in trial.intermediate_values.items()},
        "worker": trial.user_attrs.get("worker"),
        "retry_of": trial.system_attrs.get("failed_trial"),
        "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
    }


def study_figures(study: optuna.Study, settings: SearchSettings, folder: Path) -> list[Path]:
    """Optimisation history, intermediate values (pruning) and the Pareto front, as PNGs."""
    folder.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    files: list[Path] = []
    if not complete:
        return files
    metric = settings.objectives[0].metric
    vis = optuna.visualization.matplotlib
    plots: dict[str, Any] = {
        "optimization_history.png": lambda: vis.plot_optimization_history(
            study, target=_first_objective if settings.multi_objective else None, target_name=metric
        ),
    }
    if settings.multi_objective and len(settings.objectives) <= 3:
        plots["pareto_front.png"] = lambda: vis.plot_pareto_front(
            study,
            target_names=[objective.metric for objective in settings.objectives],
        )
    if not settings.multi_objective and settings.pruner.name != "none":
        plots["intermediate_values.png"] = lambda: vis.plot_intermediate_values(study)
    for name, draw in plots.items():
        try:
            axes = draw()
        except (ValueError, RuntimeError) as error:
            logger.warning("%s not drawn: %s", name, error)
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        path = folder / name
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)
        files.append(path)
    return files
