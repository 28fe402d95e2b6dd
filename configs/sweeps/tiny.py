"""A batch-size study that runs on 2 CPU cores: the tiny CLIP, stage 1 on the synthetic
scenes, global batches 16 to 128, softmax vs sigmoid, learning rate by the square-root rule.

    python -m data_pipeline.build --source scenes --num-scenes 2000 --num-bench-scenes 500 \
        --scene-group-size 8 --image-size 32 --validation-fraction 0.05 --seed 0 \
        --output /tmp/scal_scenes
    python -m reasonclip_jax.sweep --config configs/sweeps/tiny.py:/tmp/scal_scenes \
        --workdir /tmp/study
    python -m reasonclip_jax.sweep --report /tmp/study

Every run reads the same 4,096 training examples in the same order (256 steps at 16 ... 32
steps at 128), warms up over 512 of them, its learning rates are the demo's at the reference
batch 32 times sqrt(B / 32), and it is evaluated at its end on the held-out loss at one
contrastive batch of 64 (128 validation scenes x 9 caption pairs) and on the scenes
benchmark (5-way, chance 0.2; 300 held-out scenes). The sigmoid runs start SigLIP's way
(logit scale 10, bias -10). Self-contained: nothing here depends on configs/demo.py.
"""

import math
import os

import ml_collections

from configs import common


def get_config(arg: str = "/tmp/scal_scenes") -> ml_collections.ConfigDict:
    data = arg
    base = common.base_config()
    base.stage = "stage1"
    base.model.preset = "tiny"
    base.model.dtype = "float32"
    base.model.overrides = {"image_size": 32, "context_length": 64}
    base.input.data_dirs = [os.path.join(data, "stage1")]
    base.input.image_size = 32
    base.input.context_length = 64
    base.input.augment = "center_crop"
    base.input.worker_count = 0  # batches hold stream positions in order (scaling/grid.py)
    base.input.read_threads = 1
    base.input.group_size = 8  # the scenes' sibling groups share a batch
    base.mesh.update(data=-1, fsdp=1, tensor=1)
    # From scratch: the demo's rates, for the reference batch of 32.
    base.optim.groups = common.optim_groups(1e-3, 1e-3, 1e-2, 1e-3, tower_wd=0.0)
    base.optim.l2_init = dict(beta=0.0, regex=common.TOWERS_WITHOUT_PROJECTIONS)
    base.eval_batch_size = 128
    base.evals = [dict(type="rclip_bench", name="scenes_bench", split="test",
                       data_dir=os.path.join(data, "bench"), max_examples=300)]
    base.checkpoint.best_metric = ""
    base.checkpoint.keep = 1
    base.compilation_cache_dir = "~/.cache/reasonclip_jax/xla"

    c = ml_collections.ConfigDict()
    c.base = base
    c.batch_sizes = (16, 32, 64, 128)  # tuples: overridable, --config.batch_sizes="(32,64)"
    c.losses = ("softmax", "sigmoid")
    c.loss_impls = ()
    c.stages = ()
    c.settings = dict(loss=dict(sigmoid=dict(model=dict(overrides=dict(
        logit_scale_init=math.log(10.0), logit_bias_init=-10.0)))))
    c.samples = 4096
    c.warmup_samples = 512
    c.lr_rule = "sqrt"
    c.reference_batch_size = 32
    c.eval_batch_size = 64
    c.eval_every_samples = 0
    c.log_every_samples = 512
    c.checkpoint_every_samples = 1024
    c.micro_batches = {}
    c.device_memory = ""
    return c
