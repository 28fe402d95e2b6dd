"""What every paper run shares: named config arguments, the backbones, the release's choices.

A config file's argument is `key=value` pairs: `configs/stage1.py:backbone=L-14-336,data=DIR`.
The backbone key sets the model preset, image size and context length together.
"""

from __future__ import annotations

import ml_collections

from configs import common
from reasonclip_jax.errors import UserError

# backbone -> (model preset, image size, context length); OpenAI's CLIPs of the paper.
BACKBONES = {
    "B-32": ("ViT-B-32", 224, 77),
    "L-14": ("ViT-L-14", 224, 77),
    "L-14-336": ("ViT-L-14-336", 336, 77),
}


def parse_args(arg: str | None, defaults: dict[str, str]) -> dict[str, str]:
    """`"a=1,b=2"` -> {"a": "1", "b": "2"} over `defaults`; unknown names are an error."""
    out = dict(defaults)
    for item in (arg or "").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"config argument '{item}': use NAME=VALUE, names {sorted(out)}")
        if key not in out:
            raise UserError(f"unknown config argument '{key}'; the names are {sorted(out)}")
        out[key] = value
    return out


def base(stage: str, args: dict[str, str]) -> ml_collections.ConfigDict:
    """A paper run of `stage` on `args['backbone']`, with the release's training choices."""
    if args["backbone"] not in BACKBONES:
        raise UserError(f"unknown backbone '{args['backbone']}'; choose one of "
                        f"{sorted(BACKBONES)}")
    preset, image_size, context_length = BACKBONES[args["backbone"]]
    c = common.base_config()
    c.stage = stage
    c.model.preset = preset
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "dots_no_batch"
    c.input.data_dirs = [args["data"]]
    c.input.image_size = image_size
    c.input.context_length = context_length
    c.input.batch_size = 32768
    c.input.worker_count = 8
    # As the release: 2 plain accumulation steps of 16,384 (each its own contrastive batch)
    # and its gradient rule for negatives (remote copies detached, parallel/losses.py).
    # --config.grad_accum.mode=gradcache keeps all 32,768 negatives;
    # --config.loss.negatives_gradient=global takes the exact gradient of the global loss.
    c.grad_accum = dict(micro_batches=2, mode="plain")
    c.loss.negatives_gradient = "local"
    # Checkpoint selection as the release: held-out loss (its eval_loss, 8 examples per
    # device over 32 devices) every ~25% of the run; the lowest is kept in best/.
    # `--config.eval_every` and `--config.checkpoint.every_steps` follow total_steps.
    c.validation = dict(batch_size=256, data_dirs=[], split="validation")
    c.checkpoint.best_metric = "validation/loss"
    c.checkpoint.best_mode = "min"
    return c
