"""The study's sampler and pruner, built from ``hparams_search.sampler`` and ``.pruner``.

Seeding: each trial's sampler is seeded with ``sampler.seed + trial number``. Trial numbers are
handed out by the storage, so a fresh single-worker study replays exactly, a resumed study
continues where it stopped, and workers sharing a study never draw the same random points
(one seeded sampler per process would make every worker repeat the same first draws).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from cesagram.tuning.search_space import SearchSettings


class TrialSeededSampler(BaseSampler):
    """Delegates to a sampler rebuilt, with seed ``seed + trial.number``, for every trial."""

    def __init__(self, build: Callable[[int | None], BaseSampler], seed: int | None) -> None:
        self._build = build
        self._seed = seed
        self._sampler = build(seed)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Reseed for this trial, then let the sampler prepare it."""
        self._sampler = self._build(None if self._seed is None else self._seed + trial.number)
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The wrapped sampler's relative search space."""
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """The wrapped sampler's joint sample."""
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """The wrapped sampler's sample of one parameter."""
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Let the wrapped sampler see the outcome."""
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        """Reseed the wrapped sampler at random."""
        self._sampler.reseed_rng()


def make_sampler(settings: SearchSettings) -> BaseSampler:
    """TPE (default), NSGA-II or random search, seeded per trial."""
    sampler = settings.sampler

    def build(seed: int | None) -> BaseSampler:
        if sampler.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if sampler.name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=sampler.population_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # constant_liar: parallel workers do not all pile onto the same promising point.
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=sampler.n_startup_trials, constant_liar=True
            )

    return TrialSeededSampler(build, sampler.seed)


def make_pruner(settings: SearchSettings) -> optuna.pruners.BasePruner:
    """The configured pruner; none for multi-objective studies (Optuna prunes one value)."""
    pruner = settings.pruner
    if settings.multi_objective or pruner.name == "none":
        return optuna.pruners.NopPruner()
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    if pruner.name == "percentile":
        return optuna.pruners.PercentilePruner(
            pruner.percentile,
            n_startup_trials=pruner.n_startup_trials,
            n_warmup_steps=pruner.n_warmup_steps,
        )
    if pruner.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    return optuna.pruners.ThresholdPruner(
        lower=pruner.lower, upper=pruner.upper, n_warmup_steps=pruner.n_warmup_steps
    )
