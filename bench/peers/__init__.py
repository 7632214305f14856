"""`make bench-peers`: Railyard side by side with what users would run instead, on the same machine, the same
model bytes and the same load generator (bench/loadgen.py), one system up at a time, two rounds in opposite
order. `python -m bench.peers` (the Makefile target creates the peers' virtual environments first; see
harness.py for what is measured, `BENCH_QUICK=1` for a short development run)."""
