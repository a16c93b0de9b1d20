"""The committed benchmarks (run as scripts; importable for their tests)."""
