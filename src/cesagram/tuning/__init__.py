"""Hyperparameter tuning: Optuna studies over the training configs (``cesagram tune``).

``run_study`` runs, resumes or joins the study named by ``hparams_search=NAME``
(``configs/hparams_search/``); trials are ordinary training runs, pruned from a Lightning
callback, tracked as child MLflow runs, and the chosen trial is exported as a Hydra experiment.
"""

from cesagram.tuning.search_space import SearchSettings
from cesagram.tuning.study import StudyProgress, StudyResult, load_settings, run_study

__all__ = ["SearchSettings", "StudyProgress", "StudyResult", "load_settings", "run_study"]
