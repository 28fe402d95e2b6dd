"""Stage 1, reasoning-aware dual alignment, from OpenAI CLIP weights (the recipe's values).

    python -m reasonclip_jax.convert import --format openai --input ViT-L-14-336px.pt \
        --output /ckpt/clip-vit-l14-336
    python -m reasonclip_jax.train --config configs/stage1_clip.py:/data/reasonlite \
        --workdir /runs/s1 --config.init_from=/ckpt/clip-vit-l14-336 \
        --config.total_steps=1282   # 1 epoch of 42M triples at 32,768

Global batch 32,768 = 512 x 32 devices x 2 plain accumulation steps, as the release
(16,384 negatives per contrastive batch); GradCache keeps all 32,768 (see below).
"""

import os

from configs import common


def get_config(data: str = "/data/reasonlite"):
    c = common.base_config()
    c.stage = "stage1"
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
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "dots_no_batch"
    c.checkpoint.every_steps = 320  # ~ every 25% of the epoch
    c.evals = [dict(type="rclip_bench", name="rclip_v3",
                    data_dir=os.path.join(os.path.dirname(data), "rclip_bench_v3"),
                    split="test")]
    # Checkpoint selection as the release: held-out loss (its eval_loss) every ~25% of the
    # run, 8 examples per device over 32 devices, lowest kept in best/.
    c.validation = dict(batch_size=256, data_dirs=[], split="validation")
    c.eval_every = 320
    c.checkpoint.best_metric = "validation/loss"
    c.checkpoint.best_mode = "min"
    return c
