"""Reusable helpers for the test suites (real servers on loopback)."""
