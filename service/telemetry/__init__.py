"""Tracing, metrics and logging for relayed streams."""
