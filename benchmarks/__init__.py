"""Speed and memory benchmarks of the curvature core against peer libraries.

Run ``bash benchmarks/run.sh`` (see ``benchmarks/README.md``).
"""
