"""Benchmarks, measured side by side in one run: kernel GEMV, decode tokens/s, training step cost."""
