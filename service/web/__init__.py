"""The browser chat page: static ES modules served at ``/`` (no build step)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["WEB_DIR"]

WEB_DIR = Path(__file__).resolve().parent
"""Directory holding ``index.html`` and the page's modules."""
