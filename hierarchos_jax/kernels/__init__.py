"""Fused native kernels (XLA FFI) with their pure-JAX oracles and dispatch."""
