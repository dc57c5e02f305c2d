"""hierarchos-jax: a JAX reimplementation of Hierarchos."""
