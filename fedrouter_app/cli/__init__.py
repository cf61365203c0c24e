"""Command-line entry points: fedrouter, sweeps, prefetching, benchmarks."""
