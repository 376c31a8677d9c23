"""Everything CPU-only: fused kernels, the shared-memory transport and the tuned gradient reducer, built from
the C++ sources beside them. Only clip.profiles imports this package; Ascend and GPU never run it."""
