"""`python -m reasonclip_jax.demo`: forwards to `reasonclip_jax.tools.demo`."""

from reasonclip_jax.tools.demo import main

if __name__ == "__main__":
    main()
