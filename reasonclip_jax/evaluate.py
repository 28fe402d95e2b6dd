"""`python -m reasonclip_jax.evaluate`: forwards to `reasonclip_jax.tools.evaluate`."""

from reasonclip_jax.tools.evaluate import main

if __name__ == "__main__":
    main()
