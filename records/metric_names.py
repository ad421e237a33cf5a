"""MLflow metric names: each metric under the prefix of its kind (`rollout/…`, `train/…`, `eval/…`,
`time/…`, `export/…`, like SB3's own logger keys), so that the MLflow UI groups its charts by kind; and
the plain names the API answers with (the part after the prefix, as runs logged before had them)."""

from __future__ import annotations

from collections.abc import Mapping

GROUPS: dict[str, tuple[str, ...]] = {
    "rollout": ("reward", "success_rate", "episode_length", "episode", "maze_episodes", "exploration_rate"),
    "train": (
        "loss",
        "policy_loss",
        "value_loss",
        "entropy_loss",
        "approx_kl",
        "clip_fraction",
        "explained_variance",
        "learning_rate",
        "td_loss",
        "reward_model_loss",
    ),
    # best_*: the kept model's, once, on the run and its logged model (see records/mlflow_models.py).
    "eval": (
        "eval_success_rate",
        "eval_path_efficiency",
        "best_eval_success_rate",
        "best_eval_path_efficiency",
    ),
    "time": ("fps",),
    "export": ("onnx_export_seconds", "onnx_action_agreement"),
}
MLFLOW_NAME = {name: f"{group}/{name}" for group, names in GROUPS.items() for name in names}


def mlflow_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """`metrics` under their MLflow names (a name without a group stays as it is)."""
    return {MLFLOW_NAME.get(key, key): value for key, value in metrics.items()}


def api_name(mlflow_key: str) -> str:
    """The plain name of an MLflow metric: `rollout/reward` → `reward`; an ungrouped name as it is."""
    group, slash, name = mlflow_key.partition("/")
    return name if slash and group in GROUPS else mlflow_key
