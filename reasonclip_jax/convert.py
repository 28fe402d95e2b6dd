"""`python -m reasonclip_jax.convert`: forwards to `reasonclip_jax.tools.convert`."""

from reasonclip_jax.tools.convert import main

if __name__ == "__main__":
    main()
