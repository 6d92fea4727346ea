"""Benchmarks of EAS Controller and of its peers on the same machine (see docs/performance.md)."""
