"""Benchmarks behind ``relay bench``, measured on real processes; results in runbook/.

Each module adds its own subcommand with ``add_bench_command(bench_subparsers)``; nothing is
imported here, so importing one benchmark never pulls in the others.
"""

__all__: list[str] = []
