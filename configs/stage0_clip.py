"""Stage-0 baselines: plain InfoNCE on descriptive ("Description CP", the default) or
reasoning captions ("Reasoning CP": `configs/stage0_clip.py:DATA,reason`).

    python -m reasonclip_jax.train --config configs/stage0_clip.py:/data/cc12m_refined \
        --workdir /runs/s0 --config.init_from=/ckpt/clip-vit-b32
"""

from configs import common


def get_config(arg: str = "/data/cc12m_refined"):
    data, _, captions = arg.partition(",")
    c = common.base_config()
    c.stage = "stage0"
    c.input.data_dirs = [data]
    c.input.text_fields = ("reason", "cat_caption") if captions == "reason" else ("desc",)
    c.input.batch_size = 32768
    # As the release: 2 plain accumulation steps of 16,384 (each its own contrastive batch)
    # and its gradient rule for negatives (remote copies detached, parallel/losses.py).
    # --config.grad_accum.mode=gradcache keeps all 32,768 negatives;
    # --config.loss.negatives_gradient=global takes the exact gradient of the global loss.
    c.grad_accum = dict(micro_batches=2, mode="plain")
    c.loss.negatives_gradient = "local"
    c.optim.l2_init = dict(beta=0.0, regex=common.TOWERS_WITHOUT_PROJECTIONS)
    # Checkpoint selection as the release: held-out loss (its eval_loss) every ~25% of the
    # run, 8 examples per device over 32 devices, lowest kept in best/.
    c.validation = dict(batch_size=256, data_dirs=[], split="validation")
    c.eval_every = 320
    c.checkpoint.best_metric = "validation/loss"
    c.checkpoint.best_mode = "min"
    return c
