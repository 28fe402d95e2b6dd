"""Stage 1, reasoning-aware dual alignment, from OpenAI CLIP weights (the recipe's values).

    python -m reasonclip_jax.convert import --format openai --input ViT-L-14-336px.pt \
        --output /ckpt/clip-vit-l14-336
    python -m reasonclip_jax.train --workdir /runs/s1 \
        --config configs/stage1.py:backbone=L-14-336,data=/data/reasonlite \
        --config.init_from=/ckpt/clip-vit-l14-336 \
        --config.total_steps=1282   # 1 epoch of 42M triples at 32,768
    python -m reasonclip_jax.convert import --format hf --input siglip2-so400m-patch14-384 \
        --output /ckpt/siglip2-so400m-384
    python -m reasonclip_jax.train --workdir /runs/s1-siglip2 \
        --config configs/stage1.py:backbone=siglip2-so400m-384,data=/data/reasonlite,\
tokenizer=/ckpt/siglip2-so400m-384/tokenizer \
        --config.init_from=/ckpt/siglip2-so400m-384 --config.total_steps=1709  # at 24,576

Arguments: backbone (B-32 | L-14 | L-14-336 | siglip-so400m-384 | siglip2-so400m-384 |
siglip2-gopt-384), data, bench (an RCLIP-Bench V3 shard
directory evaluated with the held-out loss; empty: none), tokenizer (SigLIP backbones: the
imported checkpoint's tokenizer/ directory).
"""

from configs import recipe


def get_config(arg: str | None = None):
    args = recipe.parse_args(arg, dict(backbone="L-14-336", data="/data/reasonlite", bench="",
                                       tokenizer=""))
    c = recipe.base("stage1", args)
    c.eval_every = c.checkpoint.every_steps = 320  # ~ every 25% of 1,282 steps
    if args["bench"]:
        c.evals = [dict(type="rclip_bench", name="rclip_v3", data_dir=args["bench"],
                        split="test")]
    return c
