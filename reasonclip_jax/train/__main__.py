"""`python -m reasonclip_jax.train --config configs/FILE.py --workdir DIR`: the trainer."""

from reasonclip_jax.tools.train import run

if __name__ == "__main__":
    run()
