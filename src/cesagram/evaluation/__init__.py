"""Scoring: the metrics every model is judged by.

`metrics` holds the message-level indicator metrics, the conversation-level risk metrics and the
threshold choice, all pure functions over numpy arrays returning ``dict[str, float]`` with stable
key names (they become MLflow and DVC metric names). Transformers and baselines are scored by the
same functions, so their numbers are comparable.
"""
