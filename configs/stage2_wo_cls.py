"""The "Stage 2 w/o cls" ablation: stage 2 with gamma = 0 (the heads take no part).

    python -m reasonclip_jax.train --workdir /runs/s2_wo_cls \
        --config configs/stage2_wo_cls.py:backbone=L-14-336,data=/data/reasonpro \
        --config.init_from=/runs/s1/best --config.total_steps=505
"""

from configs import stage2


def get_config(arg: str | None = None):
    return stage2.get_config(",".join(filter(None, [arg, "heads=false"])))
