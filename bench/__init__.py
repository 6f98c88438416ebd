"""Benchmarks of telerad-broker against the real dev/test stack (``python -m bench``).

See ``bench/README.md`` for what each figure means and the latest results on the reference
machine.
"""
