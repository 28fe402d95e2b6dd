"""`python -m reasonclip_jax.encode`: forwards to `reasonclip_jax.tools.encode`."""

from reasonclip_jax.tools.encode import main

if __name__ == "__main__":
    main()
