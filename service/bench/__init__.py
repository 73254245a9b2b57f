"""Benchmarks behind ``relay bench``: measured on real processes, reported in runbook/."""

from service.bench.cancel import CancelBenchOptions, run_cancel_bench

__all__ = ["CancelBenchOptions", "run_cancel_bench"]
