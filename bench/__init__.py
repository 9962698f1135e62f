"""Benchmark harness for ephemeral-broker: `python -m bench`; `bench.leases` times lease grants."""
