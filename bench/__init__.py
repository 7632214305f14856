"""Benchmarks: `make bench` (or `python -m bench`). Each prints its figures as ratios against a baseline
measured in the same run, and writes them to docs/benchmarks.md."""
