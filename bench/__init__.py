"""Switchboard's benchmarks: `python -m bench` (a table) or `python -m bench --quick --json`.

Every figure is measured next to a baseline taken in the same run on the same machine and is
reported as an absolute value and as a ratio, because these machines are small and shared:
absolute numbers drift from run to run, ratios much less. See bench/README.md.
"""
