"""Nets: sparse-convolution engine, models, label store, incremental inference, training (no Qt)."""
