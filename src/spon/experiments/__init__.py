"""Experiments built on the library: demo, sweep, compare, diagnose, report, plots, lm-eval harness."""
