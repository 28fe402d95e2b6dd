"""`python -m reasonclip_jax.plan`: forwards to `reasonclip_jax.tools.plan`."""

from reasonclip_jax.tools.plan import run

if __name__ == "__main__":
    run()
