"""Benchmark harness for ephemeral-broker (`python -m bench`)."""
