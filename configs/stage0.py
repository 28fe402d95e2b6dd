"""Stage-0 baselines: plain InfoNCE on descriptive captions ("Description CP", the default)
or on reasoning captions ("Reasoning CP": captions=reason), from OpenAI CLIP weights.

    python -m reasonclip_jax.train --workdir /runs/s0 \
        --config configs/stage0.py:backbone=B-32,data=/data/cc12m_refined,captions=desc \
        --config.init_from=/ckpt/clip-vit-b32

Arguments: backbone (B-32 | L-14 | L-14-336 | siglip-so400m-384 | siglip2-so400m-384 |
siglip2-gopt-384), data, tokenizer (SigLIP: the imported tokenizer/ directory),
captions (desc | reason).
"""

from configs import common, recipe
from reasonclip_jax.errors import UserError


def get_config(arg: str | None = None):
    args = recipe.parse_args(arg, dict(backbone="B-32", data="/data/cc12m_refined",
                                       captions="desc", tokenizer=""))
    c = recipe.base("stage0", args)
    pools = {"desc": ("desc",), "reason": ("reason", "cat_caption")}
    if args["captions"] not in pools:
        raise UserError(f"captions={args['captions']}: use desc or reason")
    c.input.text_fields = pools[args["captions"]]
    c.optim.l2_init = dict(beta=0.0, regex=common.TOWERS_WITHOUT_PROJECTIONS)
    c.eval_every = c.checkpoint.every_steps = 320
    return c
