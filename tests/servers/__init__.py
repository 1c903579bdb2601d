"""Private servers started for tests and benchmarks."""
