"""Benchmarks: scripts that start their own nats-server and processes, print ratios, write JSON.

Run them all with `make bench` (`python -m bench.all`); see bench/RESULTS.md. Not tests.
"""
