"""Our metric instruments, the guarded fast path into the metrics SDK, and cardinality caps."""
