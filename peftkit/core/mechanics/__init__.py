"""Training mechanics under the framework: lean training (recomputation, fused operations), 4-bit NF4 storage,
FSDP2 sharding. They know nothing of adapters or methods."""
