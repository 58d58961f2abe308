"""What a study leaves in the project: its definition, its decision and the best config.

- ``experiments/<study>/study.yaml``: the search settings and the command-line overrides the
  study ran with (the study's definition, for review and re-runs);
- ``experiments/<study>/best.yaml``: the chosen trial, its values, metrics and gates, and why;
- ``configs/experiment/<study>.yaml``: the chosen parameters (and the study's fixed settings)
  as a Hydra experiment config, so ``cesagram train <task> experiment=<study>`` and
  ``dvc exp run -S experiment=<study>`` train that configuration again.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from cesagram.tuning.search_space import is_group

STUDY_FILE = "study.yaml"
BEST_FILE = "best.yaml"


def nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (``indicators.optimizer.lr``) as nested mappings."""
    tree: dict[str, Any] = {}
    for key, value in values.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def experiment_config(values: Mapping[str, Any], config_dir: Path, header: Sequence[str]) -> str:
    """A ``# @package _global_`` experiment config setting ``values`` (groups via defaults)."""
    groups = {key: value for key, value in values.items() if is_group(key, config_dir)}
    body: dict[str, Any] = {}
    if groups:
        body["defaults"] = [{f"override /{key}": value} for key, value in groups.items()]
    body.update(nested({key: value for key, value in values.items() if key not in groups}))
    comments = "".join(f"# {line}\n" for line in header)
    return "# @package _global_\n" + comments + yaml.safe_dump(body, sort_keys=False)


def write_yaml(path: Path, content: Mapping[str, Any], header: Sequence[str] = ()) -> Path:
    """Write ``content`` as YAML under a comment header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    comments = "".join(f"# {line}\n" for line in header)
    path.write_text(comments + yaml.safe_dump(dict(content), sort_keys=False, allow_unicode=True))
    return path


def reproduce_command(task: str, study_name: str, overrides: Sequence[str]) -> str:
    """The ``cesagram train`` line that retrains the exported configuration."""
    return shlex.join(["cesagram", "train", task, f"experiment={study_name}", *overrides])
