"""`python -m reasonclip_jax.sweep`: forwards to `reasonclip_jax.tools.sweep`."""

from reasonclip_jax.tools.sweep import run

if __name__ == "__main__":
    run()
