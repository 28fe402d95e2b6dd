"""Batch-size study configs (`python -m reasonclip_jax.sweep`)."""
