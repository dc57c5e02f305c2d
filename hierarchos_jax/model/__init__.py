"""Model components of hierarchos-jax."""
