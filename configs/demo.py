"""The CPU demo: a tiny CLIP on the built-in synthetic scenes, RCLIP-style eval.

`python -m reasonclip_jax.demo` runs the whole protocol (base, control, stage 1, stage 2);
by hand, one run at a time:

    python -m data_pipeline.build --source scenes --num-scenes 2000 --num-bench-scenes 1000 \
        --scene-group-size 8 --image-size 48 --seed 0 --output /tmp/scenes
    python -m reasonclip_jax.train --config configs/demo.py:/tmp/scenes,stage0 --workdir /tmp/base \
        --config.total_steps=600
    python -m reasonclip_jax.train --config configs/demo.py:/tmp/scenes,stage1 --workdir /tmp/s1 \
        --config.total_steps=600 --config.init_from=/tmp/base/checkpoints/600

`configs/demo.py:DATA,STAGE` with STAGE stage0 | stage1 | stage2; `,backbone=siglip` trains
the tiny SigLIP with the sigmoid loss instead of the tiny CLIP (`backbone=clip`).
The tiny CLIP here has 48 px images and 128-wide towers (below). Reasoning runs (stage 1, 2)
take batches of whole sibling groups of 8 scenes (`input.group_size`); descriptive-only
runs take random batches. Every `eval_every` steps the run is evaluated on the held-out
benchmark and on descriptive retrieval over 500 held-out scenes; no checkpoint is selected
on them (the test set).
`configs/demo.py:DATA,stage1,smoke` is the seconds-long variant the tests run: 32 px
images, 24 tokens, batch 16, one device, one optimizer group, logs every step, no groups;
`smoke_eval` adds the benchmark evaluation at the end and keeps the best weights;
`smoke_demo` (the demo's `--smoke`) evaluates both on 16 examples.
"""

import os

from configs import common
from reasonclip_jax.errors import UserError

BACKBONES = ("clip", "siglip")
# Scenes rendered at 48 px (data_pipeline.build --image-size 48): each of a scene's three
# slots is 16 px, two whole 8 px patches, so every fact sits on the same patches in every
# image; a 128-wide ViT learns the state cues from that grid several times faster than from
# 64 px, where slots straddle patches (bench/bench_scene_cues.py).
IMAGE_SIZE = 48
DEMO_IMAGE_TOWER = dict(image_size=IMAGE_SIZE, vision_width=128, vision_heads=4,
                        vision_mlp_dim=512)
# The text tower and embedding at 128 as well: at 64 the text side is what holds the states
# back (stage 1 from the same base: 0.335 on the benchmark at width 64, 0.402 at 128).
DEMO_TEXT_TOWER = dict(text_width=128, text_heads=4, text_mlp_dim=512)
CONTEXT_LENGTH = 64  # the longest scene caption has 61 tokens


def get_config(arg: str = "/tmp/scenes"):
    parts = arg.split(",")
    named = dict(p.split("=", 1) for p in parts if "=" in p)
    data, stage, variant = ([p for p in parts if "=" not in p] + ["", ""])[:3]
    stage = stage or "stage1"
    backbone = named.pop("backbone", "clip")
    if named or backbone not in BACKBONES:
        raise UserError(f"configs/demo.py takes DATA,STAGE[,VARIANT][,backbone="
                         f"{'|'.join(BACKBONES)}], got '{arg}'")
    c = common.base_config()
    c.stage = stage
    c.total_steps = 300
    c.model.preset = "tiny"
    c.model.overrides = dict(DEMO_IMAGE_TOWER, **DEMO_TEXT_TOWER, embed_dim=128,
                             context_length=CONTEXT_LENGTH)
    c.model.dtype = "float32"
    c.input.data_dirs = [os.path.join(data, "stage2" if stage == "stage2" else "stage1")]
    c.input.batch_size = 64
    c.input.image_size = IMAGE_SIZE
    c.input.context_length = CONTEXT_LENGTH
    if backbone == "siglip":
        # The tiny SigLIP (attention-pooling head, non-causal text, last-token pooling),
        # the sigmoid loss with its learnable bias, and the recipe's SigLIP lambda schedule.
        # Its image embedding is the vision width, so the text head projects to it too.
        c.model.preset = "siglip-tiny"
        c.model.overrides = dict(DEMO_IMAGE_TOWER, **DEMO_TEXT_TOWER,
                                 embed_dim=DEMO_IMAGE_TOWER["vision_width"])
        c.loss.kind = "sigmoid"
        c.loss.lam = dict(start=0.6, end=0.3, final=0.5, ramp_from=0.2, ramp_to=0.8)
    c.input.augment = "center_crop"
    c.input.worker_count = 0
    c.input.read_threads = 2
    # Batches of whole sibling groups (data_pipeline.build --scene-group-size 8): other
    # states of a caption's family are in its batch.
    # Descriptive-only runs (the base and the control) take random batches: siblings only
    # matter to reasoning captions, and the base converges further without them.
    c.input.group_size = 1 if stage == "stage0" else 8
    c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn=dict(data=1))
    # From scratch, so larger learning rates than the continual-pretraining recipe.
    # Stage 2 continues at a tenth of the tower rate: it has no descriptive term, and its
    # category captions pull the towers off descriptive alignment (seed 0, S = 600: retrieval
    # R@1 0.697 after stage 1 -> 0.577 at 1e-4, 0.645 at 3e-5; benchmark 0.409, 0.381).
    tower_lr = 1e-4 if stage == "stage2" else 1e-3
    c.optim.groups = common.optim_groups(tower_lr, tower_lr, 1e-2, tower_lr, tower_wd=0.0,
                                         head_lr=1e-2 if stage == "stage2" else None)
    c.optim.l2_init = dict(beta=0.0, regex=common.TOWERS_WITHOUT_PROJECTIONS)
    c.optim.logit_scale_max = 50.0
    c.log_every = 10
    c.eval_every = 100
    c.eval_batch_size = 128
    c.evals = [
        dict(type="rclip_bench", name="scenes_bench", data_dir=os.path.join(data, "bench"),
             split="test"),
        # Descriptive alignment: image <-> descriptive caption retrieval on held-out scenes.
        dict(type="retrieval", name="scenes_retrieval", data_dir=os.path.join(data, "bench"),
             split="test", caption_field="desc", max_examples=500),
    ]
    c.checkpoint.every_steps = 100
    # No selection on the benchmark: it is the test set. The demo reports fixed steps.
    c.checkpoint.best_metric = ""
    c_evals = [dict(e) for e in c.evals]
    if variant.startswith("smoke"):
        c.total_steps = 3
        c.num_devices = 1
        c.model.overrides = {"image_size": 32}
        c.input.image_size = 32
        c.input.context_length = 24
        c.input.batch_size = 16
        c.input.read_threads = 1
        c.input.group_size = 1
        c.log_every = 1
        c.eval_every = 0
        c.evals = []
        c.checkpoint.every_steps = 2
        c.checkpoint.best_metric = ""
        if variant == "smoke_eval":  # evaluate at the end and keep the best weights
            c.evals = [dict(type="rclip_bench", name="scenes_bench", split="test",
                            data_dir=os.path.join(data, "bench"), max_examples=32)]
            c.eval_batch_size = 16
            c.checkpoint.best_metric = "scenes_bench/accuracy"
        if variant == "smoke_demo":  # the demo's evaluations on a few examples
            c.evals = [dict(e, max_examples=16) for e in c_evals]
            c.eval_batch_size = 16
        c.optim.groups = [dict(name="all", regex=".*", lr=1e-4, wd=0.01)]
        c.optim.l2_init = dict(beta=1e-3, regex=r"^(visual|text)/")
    return c
