"""The runtime a run lives in, below everything else: user errors and the launchers' one-line
error wrapper (`errors`), multi-process helpers (`distributed`), the mesh and name-based
parameter sharding (`sharding`), the host allocator set before JAX starts (`host_allocator`)
and what this CPU does natively (`cpu_features`)."""
