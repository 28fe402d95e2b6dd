"""The CPU demo: a tiny CLIP on the built-in synthetic scenes, RCLIP-style eval.

`python -m reasonclip_jax.demo` runs the whole protocol (base, control, stage 1, stage 2);
by hand, one run at a time:

    python -m data_pipeline.build --source scenes --num-scenes 2000 --num-bench-scenes 1000 \
        --scene-group-size 8 --seed 0 --output /tmp/scenes
    python -m reasonclip_jax.train --config configs/demo.py:/tmp/scenes,stage0 --workdir /tmp/base
    python -m reasonclip_jax.train --config configs/demo.py:/tmp/scenes,stage1 --workdir /tmp/s1 \
        --config.init_from=/tmp/base/checkpoints/300

`configs/demo.py:DATA,STAGE` with STAGE stage0 | stage1 | stage2; `,backbone=siglip` trains
the tiny SigLIP with the sigmoid loss instead of the tiny CLIP (`backbone=clip`).
Batches hold whole sibling groups of 8 scenes (`input.group_size`), and every
`eval_every` steps the run is evaluated on the held-out benchmark and on descriptive
retrieval over 500 held-out scenes; no checkpoint is selected on them (the test set).
`configs/demo.py:DATA,stage1,smoke` is the seconds-long variant the tests run: 32 px
images, 24 tokens, batch 16, one device, one optimizer group, logs every step, no groups;
`smoke_eval` adds the benchmark evaluation at the end and keeps the best weights;
`smoke_demo` (the demo's `--smoke`) evaluates both on 16 examples.
"""

import os

from configs import common
from reasonclip_jax.errors import UserError

BACKBONES = ("clip", "siglip")


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
    c.model.dtype = "float32"
    c.input.data_dirs = [os.path.join(data, "stage2" if stage == "stage2" else "stage1")]
    c.input.batch_size = 64
    c.input.image_size = 64
    c.input.context_length = 77
    if backbone == "siglip":
        # The tiny SigLIP (attention-pooling head, non-causal text, last-token pooling),
        # its context of 64 (the longest scene caption has 54 tokens), the sigmoid loss
        # with its learnable bias, and the recipe's SigLIP lambda schedule.
        c.model.preset = "siglip-tiny"
        c.input.context_length = 64
        c.loss.kind = "sigmoid"
        c.loss.lam = dict(start=0.6, end=0.3, final=0.5, ramp_from=0.2, ramp_to=0.8)
    c.input.augment = "center_crop"
    c.input.worker_count = 0
    c.input.read_threads = 2
    # Batches of whole sibling groups (data_pipeline.build --scene-group-size 8): other
    # states of a caption's family are in its batch.
    c.input.group_size = 8
    c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn=dict(data=1))
    # From scratch, so larger learning rates than the continual-pretraining recipe.
    # Stage 2 continues at a lower tower rate: at 1e-3 its category captions pull the towers
    # off descriptive alignment (held-out retrieval R@1 0.31 -> 0.09 in 300 steps; 0.20 at 3e-4).
    tower_lr = 3e-4 if stage == "stage2" else 1e-3
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
