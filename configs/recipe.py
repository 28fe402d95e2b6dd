"""What every paper run shares: named config arguments, the backbones, the release's choices.

A config file's argument is `key=value` pairs: `configs/stage1.py:backbone=L-14-336,data=DIR`.
The backbone key sets the model preset, image size and context length together; a SigLIP
backbone also needs `tokenizer=DIR`, its imported checkpoint's `tokenizer/` directory.

The release's SigLIP runs (its scripts/train_s1.sh and s2 notes: `--model_type siglip
--use_sigmoid_loss`, "batch_size 384"), as set here for every SigLIP backbone:
  - the sigmoid loss with SigLIP's learnable logit bias (with softmax InfoNCE the release
    forces the bias to 0, which `loss.kind=softmax` does here too: it ignores the bias);
  - 384 examples per device on 32 devices and 2 plain accumulation steps: 24,576 per
    optimizer step, 12,288 per contrastive batch;
  - stage 1's lambda schedule 0.6 / 0.3 / 0.5 (CLIP: 0.7 / 0.5 / 0.6);
  - text of 64 tokens padded to 64 (SigLIP 2's lower-cased by its tokenizer here);
  - the same learning rates and groups as CLIP; the pooling head and the text head are
    parts of the towers (tower rates, in the L2-to-init penalty), as in the release, whose
    Hugging Face names put them under vision_model / text_model.
"""

from __future__ import annotations

import ml_collections

from configs import common
from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import get_preset

# backbone -> (model preset, image size, context length); the paper's six.
BACKBONES = {
    "B-32": ("ViT-B-32", 224, 77),
    "L-14": ("ViT-L-14", 224, 77),
    "L-14-336": ("ViT-L-14-336", 336, 77),
    "siglip-so400m-384": ("ViT-SO400M-14-SigLIP-384", 384, 64),
    "siglip2-so400m-384": ("ViT-SO400M-14-SigLIP2-384", 384, 64),
    "siglip2-gopt-384": ("ViT-gopt-16-SigLIP2-384", 384, 64),
}
SIGLIP_BATCH = 384 * 32 * 2  # the release: 384 per device, 32 devices, 2 accumulation steps
SIGLIP_LAM = dict(start=0.6, end=0.3, final=0.5, ramp_from=0.2, ramp_to=0.8)


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
    model = get_preset(preset)
    if model.family == "siglip":
        if not args.get("tokenizer"):
            raise UserError(f"backbone {args['backbone']} needs tokenizer=DIR: the imported "
                            "checkpoint's tokenizer/ directory")
        c.loss.kind = "sigmoid"
        c.input.batch_size = SIGLIP_BATCH
        if stage == "stage1":
            c.loss.lam = dict(SIGLIP_LAM)
    c.input.tokenizer = model.tokenizer
    c.input.tokenizer_dir = args.get("tokenizer", "")
    return c
