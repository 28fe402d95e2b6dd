"""The CPU demo: a tiny CLIP, stage 1 on the built-in synthetic scenes, RCLIP-style eval.

Build the data first (or run `python -m reasonclip_jax.demo`, which does everything):

    python -m data_pipeline.build --source scenes --num-scenes 2000 --seed 0 --output /tmp/scenes
    python -m reasonclip_jax.train --config configs/demo.py:/tmp/scenes --workdir /tmp/demo

`configs/demo.py:DATA,stage2` trains stage 2 instead (set --config.init_from to stage 1).
`configs/demo.py:DATA,stage1,smoke` is the seconds-long variant the tests run: 32 px
images, 24 tokens, batch 16, one device, one optimizer group, logs every step;
`smoke_eval` adds the benchmark evaluation at the end.
"""

import os

from configs import common


def get_config(arg: str = "/tmp/scenes"):
    data, stage, variant = (arg.split(",") + ["", ""])[:3]
    stage = stage or "stage1"
    c = common.base_config()
    c.stage = stage
    c.total_steps = 300
    c.model.preset = "tiny"
    c.model.dtype = "float32"
    c.input.data_dirs = [os.path.join(data, "stage2" if stage == "stage2" else "stage1")]
    c.input.batch_size = 64
    c.input.image_size = 64
    c.input.context_length = 77
    c.input.augment = "center_crop"
    c.input.worker_count = 0
    c.input.read_threads = 2
    # Batches of whole sibling groups (data_pipeline.build --scene-group-size 8): other
    # states of a caption's family are in its batch.
    c.input.group_size = 8
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    # From scratch, so larger learning rates than the continual-pretraining recipe.
    c.optim.groups = common.optim_groups(1e-3, 1e-3, 1e-2, 1e-3, tower_wd=0.0,
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
