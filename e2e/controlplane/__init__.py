"""Building blocks of the local control plane: binaries, certificates, processes."""
