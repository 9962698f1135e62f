"""Benchmarks of ephemeral-broker (`python -m bench`); `bench.leases` measures lease grants."""
