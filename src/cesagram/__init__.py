"""CESAGRAM: multilingual grooming-indicator and conversation-risk models for human review."""

__version__ = "0.1.0"
