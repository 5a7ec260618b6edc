"""NVIDIA's ComputeDomain API on the local test cluster, and a stand-in for its driver."""
