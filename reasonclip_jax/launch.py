"""`python -m reasonclip_jax.launch`: forwards to `reasonclip_jax.tools.launch`."""

from reasonclip_jax.tools.launch import main

if __name__ == "__main__":
    main()
