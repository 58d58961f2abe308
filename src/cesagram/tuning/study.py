"""Optuna studies over the training configs: ``run_study`` is what ``cesagram tune`` calls.

A study lives in an Optuna RDB storage: by default the SQLite file
``experiments/<study>/optuna.db``, or any SQLAlchemy URL (PostgreSQL, MySQL) given as
``hparams_search.storage``. Every call of ``run_study`` with the same settings opens the same
study (``load_if_exists``), so

- **resuming** is running the same command again: finished trials stay as they are; a trial
  whose worker was killed stops sending heartbeats and is marked FAIL once its grace period has
  passed, and its parameters are queued once more (``RetryHeartbeatStaleTrialCallback``);
- **scaling out** is starting the same command in more processes or machines on one storage:
  each worker asks the storage for the next trial, and the trial budget counts every worker's
  finished (COMPLETE or PRUNED) and running trials.

Budgets: ``n_trials`` finished trials for the whole study (across resumes and workers) and
``timeout_s`` seconds of this worker's wall time (a running trial is never cut short).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import FrozenTrial, TrialState

from cesagram.config import CONFIG_DIR, ConfigError, compose, validated
from cesagram.evaluation.gates import check_gates, describe_failures
from cesagram.tuning import export
from cesagram.tuning.objectives import objective_value, trial_metrics
from cesagram.tuning.pruning import MLFLOW_RUN_ATTR, TrialPruning, TrialRunLink
from cesagram.tuning.sampling import make_pruner, make_sampler
from cesagram.tuning.search_space import (
    SearchSettings,
    check_conditional_keys,
    check_group_choices,
    check_keys,
    override_key,
    overrides,
    suggest,
)
from cesagram.tuning.summary import study_figures, study_summary
from cesagram.tuning.tracking import StudyRuns

logger = logging.getLogger(__name__)

STORAGE_FILE = "optuna.db"
# How long a worker waits before checking again when the rest of the budget is running elsewhere.
WAIT_S = 2.0

ProgressHook = Callable[["StudyProgress"], None]


@dataclass(frozen=True)
class StudyProgress:
    """Where a study stands, for a progress display."""

    study_name: str
    n_trials: int
    finished: int
    running: int
    pruned: int
    failed: int
    best: str


@dataclass
class StudyResult:
    """What a worker's run of a study ended with."""

    study_name: str
    storage: str
    stop_reason: str
    counts: dict[str, int]
    decision: dict[str, Any]
    front: list[dict[str, Any]]
    study_dir: Path
    parent_run_id: str
    experiment_config: Path | None = None
    files: list[Path] = field(default_factory=list)


def load_settings(
    overrides_: Sequence[str], config_dir: Path = CONFIG_DIR
) -> tuple[SearchSettings, dict[str, Any]]:
    """The validated ``hparams_search`` section and the composed config it came with."""
    composed = compose(list(overrides_), config_dir)
    section = composed.get("hparams_search")
    if not section:
        options = sorted(path.stem for path in (config_dir / "hparams_search").glob("*.yaml"))
        raise ConfigError(
            "no search space chosen: add hparams_search=NAME "
            f"(one of {', '.join(options) or 'nothing yet'} in {config_dir / 'hparams_search'})"
        )
    settings = validated(SearchSettings, section, origin="hparams_search.")
    unconditional = [name for name, param in settings.params.items() if not param.when]
    check_keys([*unconditional, *settings.fixed], composed, config_dir)
    check_group_choices(settings.params, config_dir)
    # Conditional keys (strategy.C) exist only in the configs their conditions compose.
    trial_base = [*trial_overrides(overrides_, settings), *overrides(settings.fixed)]
    check_conditional_keys(settings.params, trial_base, config_dir)
    _check_backbones(settings, composed)
    trainer = composed["trainer"]
    devices = trainer.get("devices", 1)
    if (
        "ddp" in str(trainer.get("strategy"))
        or trainer.get("num_nodes", 1) != 1
        or (isinstance(devices, int) and devices > 1)
    ):
        # Lightning's DDP launcher re-runs the command line: every rank would be a new worker.
        raise ConfigError(
            f"trainer.strategy={trainer.get('strategy')}: trials train on one device; scale a "
            "study out with more `cesagram tune` workers on one storage instead"
        )
    return settings, composed


def trial_overrides(overrides_: Sequence[str], settings: SearchSettings) -> list[str]:
    """The command-line overrides every trial composes: not the study's, not the keys it sets."""
    # A command-line value of a tuned or fixed key would clash with the trial's own.
    controlled = {*settings.params, *settings.fixed}
    return [
        o
        for o in overrides_
        if override_key(o) not in controlled and not override_key(o).startswith("hparams_search")
    ]


def _check_backbones(settings: SearchSettings, composed: Mapping[str, Any]) -> None:
    # A backbone choice must already be prepared: trials never download or convert weights.
    from cesagram.models.backbones import BackboneError, backbone_info

    param = settings.params.get("backbone")
    if param is None or param.type != "categorical":
        return
    for choice in param.choices:
        folder = Path(settings.backbone_dirs.get(str(choice), composed["paths"]["backbone_dir"]))
        try:
            name = backbone_info(folder)["name"]
        except BackboneError as error:
            raise ConfigError(f"hparams_search.params.backbone: {choice}: {error}") from error
        if name != choice:
            raise ConfigError(
                f"hparams_search.params.backbone: {choice}: {folder} holds backbone {name!r}; "
                f"prepare it (`cesagram backbone backbone={choice} paths.backbone_dir=DIR`) and "
                f"name the folder in hparams_search.backbone_dirs.{choice}"
            )


def storage_url(settings: SearchSettings) -> str:
    """The configured SQLAlchemy URL, or the study's own SQLite file."""
    if settings.storage:
        return settings.storage
    path = Path(settings.export_dir) / settings.study_name / STORAGE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def masked(url: str) -> str:
    """The URL without its password, for logs, MLflow and files."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL fails later, in Optuna, with its own message
        return url


def _without_password(override: str) -> str:
    key, separator, value = override.partition("=")
    return f"{key}={masked(value)}" if separator and key.endswith("storage") else override


def open_study(settings: SearchSettings, url: str) -> optuna.Study:
    """Create the study, or load it when the storage already holds it."""
    study = _first_contact(
        lambda: _create_or_load(settings, url), f"Optuna storage {masked(url)}", url
    )
    directions = [direction.name.lower() for direction in study.directions]
    if directions != list(settings.directions):
        raise ConfigError(
            f"study {settings.study_name} in {masked(url)} optimises {directions}, the config "
            f"asks for {settings.directions}: use another study_name or storage"
        )
    return study


def _create_or_load(settings: SearchSettings, url: str) -> optuna.Study:
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 60}}  # SQLite: workers wait for each other's writes
        if url.startswith("sqlite")
        else {"pool_pre_ping": True}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=settings.heartbeat.interval_s,
            grace_period=settings.heartbeat.grace_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=settings.heartbeat.max_retry
            ),
        )
        study = optuna.create_study(
            storage=storage,
            study_name=settings.study_name,
            directions=settings.directions,
            sampler=make_sampler(settings),
            pruner=make_pruner(settings),
            load_if_exists=True,
        )
    return study


T = TypeVar("T")


def _first_contact(connect: Callable[[], T], what: str, url: str, attempts: int = 5) -> T:
    # Workers started together race to create a new store's tables. For SQLite files an
    # inter-process lock makes them take turns (MLflow's migrations leave a half-built file
    # behind otherwise); for servers a retry finds the tables the other worker created.
    for attempt in range(1, attempts + 1):
        try:
            with _sqlite_lock(url):
                return connect()
        except ConfigError:
            raise
        except ImportError as error:
            raise ConfigError(f"{what}: {error} (install the database driver)") from error
        except Exception as error:
            if attempt == attempts:
                raise ConfigError(f"{what}: {error}") from error
            logger.warning("%s: %s; retrying (%d/%d)", what, error, attempt, attempts - 1)
            time.sleep(attempt)
    raise AssertionError("unreachable")


@contextmanager
def _sqlite_lock(url: str) -> Iterator[None]:
    """Hold an exclusive advisory lock named after a SQLite database file (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the retry above still helps
        yield
        return
    if not url.startswith("sqlite:///"):
        yield
        return
    database = Path(url.removeprefix("sqlite:///")).resolve()
    digest = hashlib.sha256(str(database).encode()).hexdigest()[:16]
    # In the temporary folder, not beside the database: no lock files in the project.
    with (Path(tempfile.gettempdir()) / f"cesagram-sqlite-{digest}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class TrialRunner:
    """The objective: one training run of the composed config with the trial's parameters."""

    def __init__(
        self,
        settings: SearchSettings,
        base_overrides: Sequence[str],
        config_dir: Path,
        runs: StudyRuns,
        trials_dir: Path,
    ) -> None:
        self.settings = settings
        self.config_dir = config_dir
        self.runs = runs
        self.trials_dir = trials_dir
        self.base_overrides = trial_overrides(base_overrides, settings)
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.last_trial: int | None = None

    def trial_config(self, values: Mapping[str, Any], number: int) -> DictConfig:
        """The run config of trial ``number``: its own output folders, nothing registered."""
        from cesagram.training.probe import embedding_cache

        settings = self.settings
        composed = compose(
            [*self.base_overrides, *overrides({**settings.fixed, **values})], self.config_dir
        )
        cfg = OmegaConf.create(composed)
        # Every trial embeds into the project's embedding cache (keyed by backbone, pooling,
        # length and text), not one under its own folder: probe trials then compute nothing
        # that an earlier trial or `cesagram train` already has.
        cfg.paths.embedding_cache_dir = str(embedding_cache(cfg).root)
        trial_dir = self.trials_dir / f"trial_{number}"
        cfg.paths.output_dir = str(trial_dir)
        cfg.paths.models_dir = str(trial_dir / "models")
        cfg.paths.metrics_dir = str(trial_dir / "metrics")
        backbone = values.get("backbone")
        if backbone is not None and str(backbone) in settings.backbone_dirs:
            cfg.paths.backbone_dir = settings.backbone_dirs[str(backbone)]
        cfg.logger.register_models = False
        cfg.logger.log_model = False  # a trial's model is rebuilt from the exported config
        cfg.ckpt_path = None
        # The study's own display replaces the per-batch bar.
        if cfg.get("callbacks") and "progress_bar" in cfg.callbacks:
            cfg.callbacks.progress_bar = None
        cfg.trainer.enable_progress_bar = False
        return cfg

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        from cesagram.training.strategies import train_with_strategy

        settings = self.settings
        self.last_trial = trial.number
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr(MLFLOW_RUN_ATTR, None)  # a retried trial inherits the killed one's
        values = suggest(trial, settings.params)
        cfg = self.trial_config(values, trial.number)
        link = TrialRunLink(trial)
        pruning = TrialPruning(trial, settings.objectives[0].metric)
        callbacks: list[Any] = [link]
        if not settings.multi_objective and settings.pruner.name != "none":
            callbacks.append(pruning)
        logger.info("Trial %d: %s", trial.number, " ".join(overrides(values)))
        try:
            # full and lp_ft fine-tune under Lightning (the callbacks link and prune the run);
            # the linear probe has no epochs and returns its run id instead.
            metrics, objects = train_with_strategy(
                cfg, settings.task, extra_callbacks=callbacks, parent_run_id=self.runs.run_id
            )
            if objects.get("run_id"):
                link.record(str(objects["run_id"]))
            measured = trial_metrics(settings, cfg, metrics, objects)
            objective_values = [
                objective_value(measured, objective.metric) for objective in settings.objectives
            ]
            if not all(math.isfinite(value) for value in objective_values):
                raise ValueError(
                    f"objective values {objective_values} are not all finite (a validation set "
                    "of one class gives no AUPRC)"
                )
        except optuna.TrialPruned as pruned:
            last = {settings.objectives[0].metric: pruning.last_value}
            self.runs.record_trial(link.run_id, trial.number, "PRUNED", last, str(pruned))
            raise
        except SystemExit as stop:
            # Lightning turns Ctrl+C into SystemExit; Optuna records FAIL for KeyboardInterrupt.
            self.runs.record_trial(link.run_id, trial.number, "FAIL", message="interrupted")
            raise KeyboardInterrupt from stop
        except BaseException as error:
            self.runs.record_trial(link.run_id, trial.number, "FAIL", message=repr(error))
            raise
        finally:
            self._tidy(Path(cfg.paths.output_dir), Path(cfg.paths.models_dir))
        trial.set_user_attr("metrics", measured)
        named = {
            f"objective/{o.metric}": v
            for o, v in zip(settings.objectives, objective_values, strict=True)
        }
        self.runs.record_trial(link.run_id, trial.number, "COMPLETE", {**measured, **named})
        return objective_values[0] if len(objective_values) == 1 else objective_values

    def _tidy(self, output_dir: Path, models_dir: Path) -> None:
        # The trial's model is in its MLflow run; local checkpoints would only fill the disk.
        if self.settings.keep_trial_files:
            return
        shutil.rmtree(output_dir / self.settings.task / "checkpoints", ignore_errors=True)
        shutil.rmtree(models_dir, ignore_errors=True)


def _counts(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _best_text(study: optuna.Study, settings: SearchSettings) -> str:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "no trial completed yet"
    objective = settings.objectives[0]
    pick = max if objective.direction == "maximize" else min
    best = pick(complete, key=lambda trial: trial.values[0])
    return f"best {objective.metric} {best.values[0]:.4f} (#{best.number})"


def optimize(
    study: optuna.Study,
    runner: TrialRunner,
    settings: SearchSettings,
    on_progress: ProgressHook | None = None,
) -> str:
    """Run trials until a budget is spent; returns why this worker stopped."""
    try:
        return _trial_loop(study, runner, settings, on_progress)
    except KeyboardInterrupt:
        _requeue(study, runner.last_trial, settings)
        return "interrupted (a running trial is recorded as FAIL and queued again)"


def _trial_loop(
    study: optuna.Study,
    runner: TrialRunner,
    settings: SearchSettings,
    on_progress: ProgressHook | None,
) -> str:
    started = time.monotonic()
    failures = 0
    while True:
        _fail_stale(study)
        counts = _counts(study)
        finished = counts["COMPLETE"] + counts["PRUNED"]
        if on_progress is not None:
            on_progress(
                StudyProgress(
                    settings.study_name,
                    settings.n_trials,
                    finished,
                    counts["RUNNING"],
                    counts["PRUNED"],
                    counts["FAIL"],
                    _best_text(study, settings),
                )
            )
        if finished >= settings.n_trials:
            return f"trial budget reached ({finished} of {settings.n_trials} finished)"
        if settings.timeout_s is not None and time.monotonic() - started >= settings.timeout_s:
            return f"wall-time budget reached ({settings.timeout_s:g} s)"
        if failures >= settings.max_failures:
            return f"{failures} trials failed in this worker (hparams_search.max_failures)"
        if finished + counts["RUNNING"] >= settings.n_trials:
            # The rest of the budget is running elsewhere: wait for it to finish or go stale.
            time.sleep(min(WAIT_S, settings.heartbeat.interval_s))
            continue
        runner.last_trial = None
        study.optimize(runner, n_trials=1, catch=(Exception,), gc_after_trial=True)
        if runner.last_trial is not None:
            trial = study.get_trials(deepcopy=False)[runner.last_trial]
            if trial.state == TrialState.FAIL:
                failures += 1


def _requeue(study: optuna.Study, number: int | None, settings: SearchSettings) -> None:
    if number is None:
        return
    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.FAIL:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=settings.heartbeat.max_retry
            )(study, trial)


def choose(study: optuna.Study, settings: SearchSettings) -> dict[str, Any]:
    """The best trial that passes the gates, and why (single: best value; multi: Pareto front)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {"trial": None, "reason": "no trial completed"}
    objective = settings.objectives[0]
    pool: list[FrozenTrial] = list(study.best_trials) if settings.multi_objective else complete
    pool.sort(key=lambda trial: trial.values[0], reverse=objective.direction == "maximize")
    where = f"the {len(pool)} Pareto-optimal trials" if settings.multi_objective else "all trials"
    rejected: list[str] = []
    for trial in pool:
        gates = check_gates(trial.user_attrs.get("metrics", {}), settings.gates)
        if gates["passed"]:
            reason = f"best {objective.metric} of {where}"
            if settings.gates:
                reason += " that pass every gate"
            if rejected:
                reason += f"; better ones failed gates ({'; '.join(rejected)})"
            return {
                "trial": trial.number,
                "values": dict(
                    zip([o.metric for o in settings.objectives], trial.values, strict=True)
                ),
                "params": dict(trial.params),
                "metrics": dict(trial.user_attrs.get("metrics", {})),
                "gates": gates,
                "reason": reason,
            }
        rejected.append(f"trial {trial.number}: " + ", ".join(describe_failures(gates)))
    return {"trial": None, "reason": f"no trial of {where} passes the gates: {'; '.join(rejected)}"}


def _front(study: optuna.Study, settings: SearchSettings) -> list[dict[str, Any]]:
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    trials = study.best_trials if settings.multi_objective else [study.best_trial]
    metrics = [objective.metric for objective in settings.objectives]
    return [
        {
            "trial": trial.number,
            "values": dict(zip(metrics, trial.values, strict=True)),
            "params": trial.params,
        }
        for trial in trials
    ]


def run_study(
    overrides_: Sequence[str],
    *,
    config_dir: Path = CONFIG_DIR,
    on_progress: ProgressHook | None = None,
) -> StudyResult:
    """Run (or resume, or join) the study that ``hparams_search=NAME`` in ``overrides_`` names.

    ``overrides_`` are ``cesagram tune``'s Hydra overrides; every trial composes them with its
    own parameters. Ends with the chosen trial exported (``export.py``) and the study summary
    on its parent MLflow run.
    """
    from cesagram.training.tracking import tracking_uri

    settings, composed = load_settings(overrides_, config_dir)
    study_dir = Path(settings.export_dir) / settings.study_name
    url = storage_url(settings)
    study = open_study(settings, url)
    definition = settings.model_dump(mode="json")
    logging_cfg = composed["logger"]
    mlflow_uri = tracking_uri(logging_cfg["tracking_uri"])
    runs = _first_contact(
        lambda: StudyRuns(
            mlflow_uri,
            logging_cfg["experiment_name"],
            logging_cfg.get("artifact_location"),
            settings.study_name,
            {**definition, "storage": masked(url)},
        ),
        "MLflow tracking store",
        mlflow_uri,
    )
    runner = TrialRunner(
        settings, overrides_, config_dir, runs, Path(settings.trials_dir) / settings.study_name
    )
    export.write_yaml(
        study_dir / export.STUDY_FILE,
        {
            "study_name": settings.study_name,
            "storage": masked(url),
            "command": " ".join(["cesagram tune", *map(_without_password, overrides_)]),
            "mlflow_parent_run_id": runs.run_id,
            "hparams_search": definition,
        },
        header=["The study's definition, written by `cesagram tune` (see experiments/README.md)."],
    )
    if settings.storage is None:
        (study_dir / ".gitignore").write_text(f"{STORAGE_FILE}*\n")
    runs.close_orphans(study.get_trials(deepcopy=False))
    stop_reason = optimize(study, runner, settings, on_progress)
    runs.close_orphans(study.get_trials(deepcopy=False))
    logger.info("Study %s: %s", settings.study_name, stop_reason)
    return _finish(study, settings, runs, runner, config_dir, study_dir, url, stop_reason)


def _finish(
    study: optuna.Study,
    settings: SearchSettings,
    runs: StudyRuns,
    runner: TrialRunner,
    config_dir: Path,
    study_dir: Path,
    url: str,
    stop_reason: str,
) -> StudyResult:
    decision = choose(study, settings)
    result = StudyResult(
        study_name=settings.study_name,
        storage=masked(url),
        stop_reason=stop_reason,
        counts=_counts(study),
        decision=decision,
        front=_front(study, settings),
        study_dir=study_dir,
        parent_run_id=runs.run_id,
    )
    reproduce = None
    if decision["trial"] is not None:
        target_dir = Path(settings.experiment_config_dir or config_dir / "experiment")
        result.experiment_config = target_dir / f"{settings.study_name}.yaml"
        reproduce = export.reproduce_command(
            settings.task, settings.study_name, runner.base_overrides
        )
        header = [
            f"Trial {decision['trial']} of tuning study {settings.study_name}: "
            f"{decision['reason']}.",
            "Values: " + ", ".join(f"{k} {v:.4f}" for k, v in decision["values"].items()),
            f"Written by `cesagram tune`; the study and the full command: {study_dir}/best.yaml",
            f"Train it: cesagram train {settings.task} experiment={settings.study_name}",
        ]
        result.experiment_config.parent.mkdir(parents=True, exist_ok=True)
        result.experiment_config.write_text(
            export.experiment_config({**settings.fixed, **decision["params"]}, config_dir, header)
        )
    export.write_yaml(
        study_dir / export.BEST_FILE,
        {
            **decision,
            "experiment_config": str(result.experiment_config) if reproduce else None,
            "reproduce": reproduce,
            "dvc": f"dvc exp run -S experiment={settings.study_name}" if reproduce else None,
        },
        header=[f"The trial that study {settings.study_name} chose, written by `cesagram tune`."],
    )
    summary = study_summary(study, settings, decision, stop_reason)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        result.files = study_figures(study, settings, runner.trials_dir / "summary")
    best_tags: dict[str, Any] = dict(decision.get("params") or {})
    best_tags["trial"] = decision["trial"]
    best_metrics = {f"best/{k}": float(v) for k, v in (decision.get("values") or {}).items()}
    runs.summarise(summary, result.files, best_tags, best_metrics)
    return result
