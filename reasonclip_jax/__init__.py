"""reasonclip_jax: continual pretraining of CLIP-style models in JAX."""

__version__ = "0.1.0"
