"""Stage 2, category-structured reasoning, from the stage-1 checkpoint (the recipe's values).

    python -m reasonclip_jax.train --config configs/stage2_clip.py:/data/reasonpro \
        --workdir /runs/s2 --config.init_from=/runs/s1/best --config.total_steps=505

The two category heads are new (init_new_params) and dropped at export.
`--config.loss.gamma=0` is the "Stage 2 w/o cls" ablation.
"""

from configs import common


def get_config(data: str = "/data/reasonpro"):
    c = common.base_config()
    c.stage = "stage2"
    c.input.data_dirs = [data]
    c.input.batch_size = 32768
    c.input.image_size = 336
    c.input.worker_count = 8
    # As the release: 2 plain accumulation steps of 16,384 (each its own contrastive batch)
    # and its gradient rule for negatives (remote copies detached, parallel/losses.py).
    # --config.grad_accum.mode=gradcache keeps all 32,768 negatives;
    # --config.loss.negatives_gradient=global takes the exact gradient of the global loss.
    c.grad_accum = dict(micro_batches=2, mode="plain")
    c.loss.negatives_gradient = "local"
    c.model.remat_policy = "dots_no_batch"
    c.loss.gamma = 0.05
    c.optim.groups = common.optim_groups(1e-5, 2e-5, 1e-4, 1e-4, tower_wd=0.05, head_lr=1.5e-3)
    c.optim.l2_init = dict(beta=0.0, regex=common.TOWERS_WITHOUT_PROJECTIONS)
    # Checkpoint selection as the release: held-out loss (its eval_loss) every ~25% of the
    # run, 8 examples per device over 32 devices, lowest kept in best/.
    c.validation = dict(batch_size=256, data_dirs=[], split="validation")
    c.eval_every = 126
    c.checkpoint.best_metric = "validation/loss"
    c.checkpoint.best_mode = "min"
    return c
