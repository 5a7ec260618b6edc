"""Benchmarks: figures printed and written to bench/out/, never asserted by tests."""
