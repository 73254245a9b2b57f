"""Observability-first relay for LLM Server-Sent-Events streams."""

__all__ = ["__version__"]

__version__ = "0.1.0"
