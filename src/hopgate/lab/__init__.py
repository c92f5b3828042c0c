"""Network-namespace labs: topologies and scenarios for tests, the demo and benchmarks."""
