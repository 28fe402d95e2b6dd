"""Experiment configs: `python -m reasonclip_jax.train --config configs/FILE.py[:ARG]`."""
