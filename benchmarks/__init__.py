"""Speed and memory benchmarks of the HADFL engine; run them with ``python -m benchmarks.run``."""
