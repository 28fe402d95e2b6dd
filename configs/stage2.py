"""Stage 2, category-structured reasoning, from the stage-1 checkpoint the recipe selects.

    python -m reasonclip_jax.train --workdir /runs/s2 \
        --config configs/stage2.py:backbone=L-14-336,data=/data/reasonpro \
        --config.init_from=/runs/s1/best --config.total_steps=505

Arguments: backbone (B-32 | L-14 | L-14-336 | siglip-so400m-384 | siglip2-so400m-384 |
siglip2-gopt-384), data, tokenizer (SigLIP: the imported tokenizer/ directory),
heads (true | false: "Stage 2 w/o cls",
gamma = 0; `configs/stage2_wo_cls.py` is the same with heads=false).
The two category heads are new (init_new_params) and dropped at export.
"""

from configs import common, recipe
from reasonclip_jax.errors import UserError


def get_config(arg: str | None = None):
    args = recipe.parse_args(arg, dict(backbone="L-14-336", data="/data/reasonpro",
                                       heads="true", tokenizer=""))
    if args["heads"] not in ("true", "false"):
        raise UserError(f"heads={args['heads']}: use true or false")
    c = recipe.base("stage2", args)
    c.loss.gamma = 0.05 if args["heads"] == "true" else 0.0
    c.optim.groups = common.optim_groups(1e-5, 2e-5, 1e-4, 1e-4, tower_wd=0.05, head_lr=1.5e-3)
    c.optim.l2_init = dict(beta=0.0, regex=common.TOWERS_WITHOUT_PROJECTIONS)
    c.eval_every = c.checkpoint.every_steps = 126  # ~ every 25% of 505 steps
    return c
