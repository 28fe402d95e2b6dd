"""Pod-scale batch-size studies: stage 1 from OpenAI CLIP weights (ViT-B-32 or ViT-L-14-336),
global batches 4,096 to 65,536, softmax vs sigmoid, on a TPU v5e or v5p slice.

    python -m reasonclip_jax.convert import --format openai --input ViT-L-14-336px.pt \
        --output gs://BUCKET/ckpt/clip-vit-l14-336
    # the micro-batches below: the planner, for the slice the study runs on
    python -m reasonclip_jax.plan --sweep --topology v5p:4x4x8 \
        --config configs/sweeps/pod.py:backbone=L-14-336,topology=v5p:4x4x8
    # every worker of the slice (Cloud TPU: --worker=all), the same command; the data
    # mounted read-only at /gcs (README, "On a Cloud TPU pod"), the study in the bucket
    python -m reasonclip_jax.sweep --workdir gs://BUCKET/studies/l14-336-v5p \
        --config configs/sweeps/pod.py:backbone=L-14-336,topology=v5p:4x4x8,\
data=/gcs/data/reasonlite,init=gs://BUCKET/ckpt/clip-vit-l14-336 --config.base.distributed=True
    python -m reasonclip_jax.sweep --report gs://BUCKET/studies/l14-336-v5p

Several slices: add --config.base.mesh.dcn.data=-1 (the data axis over them) and plan with
--slices N.

Arguments: backbone (B-32 | L-14-336), topology (v5e:16x16: 256 chips of 16 GiB, the
parameters and optimizer state sharded over them (fsdp); v5p:4x4x8: 128 chips of 95 GiB,
data parallel), data, init (the imported CLIP checkpoint), samples (training examples per
run; default 10,485,760 = 320 steps at 32,768, a quarter of the paper's stage-1 epoch).

The recipe's stage 1 (configs/recipe.py) with what a study needs: the exact tiled ring loss
(memory that grows with n x D only), GradCache micro-batches where a batch does not fit (never
the release's plain accumulation, which halves the negatives), the exact gradient of the global
loss, the learning rates of the recipe at 32,768 scaled by the square-root rule, 10% warmup in
samples, the held-out loss at the release's batch of 256 every quarter. The sigmoid runs add
SigLIP's logit bias (initialised at -10, the scale at 10) to the pretrained CLIP.

MICRO_BATCHES holds, per backbone and slice, the fewest GradCache micro-batches whose update
step fits as the planner compiled them (the first command above; README, "Batch-size
studies"). A batch it does not list is fitted when its run starts: the sweep compiles the
step on the slice and takes the fewest micro-batches within `device_memory`, ~90% of the
chip's HBM. `python -m reasonclip_jax.plan ... --nocompile` gives the analytic plan of every
batch in seconds.
"""

import math

import ml_collections

from configs import recipe
from reasonclip_jax.errors import UserError

TOPOLOGIES = {  # slice -> (mesh, memory a step may use per chip: ~90% of its HBM)
    "v5e:16x16": (dict(data=1, fsdp=-1, tensor=1), "14.4GiB"),
    "v5p:4x4x8": (dict(data=-1, fsdp=1, tensor=1), "85.5GiB"),
}
BATCH_SIZES = (4096, 8192, 16384, 32768, 65536)
# (backbone, slice) -> {global batch: GradCache micro-batches}, as the planner compiled them
# within the slice's device_memory (README, "Batch-size studies"; XLA's peak GiB per chip in
# the comments). ViT-B-32 was compiled at 65,536 only: it fits without micro-batches there,
# so every smaller batch does. A batch not listed is fitted when its run starts.
MICRO_BATCHES = {
    ("B-32", "v5e:16x16"): {b: 1 for b in BATCH_SIZES},  # 65,536: 6.97
    ("B-32", "v5p:4x4x8"): {b: 1 for b in BATCH_SIZES},  # 65,536: 16.10
    # 4,096: 5.31; 8,192: 10.50; 16,384: 9.80; 32,768: 9.89; 65,536: 10.10 (at most 32
    # examples a chip at once)
    ("L-14-336", "v5e:16x16"): {4096: 1, 8192: 1, 16384: 2, 32768: 4, 65536: 8},
    # 4,096: 18.95; 8,192: 29.30; 16,384: 48.03; 32,768: 46.89 (in one step 87.84, over the
    # 85.5 allowed); 65,536: 83.89
    ("L-14-336", "v5p:4x4x8"): {4096: 1, 8192: 1, 16384: 1, 32768: 2, 65536: 2},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = recipe.parse_args(arg, dict(backbone="L-14-336", topology="v5p:4x4x8",
                                       data="/data/reasonlite", init="", samples="10485760"))
    if args["backbone"] not in ("B-32", "L-14-336") or args["topology"] not in TOPOLOGIES:
        raise UserError(f"configs/sweeps/pod.py: backbone B-32 | L-14-336, topology "
                        f"{' | '.join(TOPOLOGIES)}; got {args['backbone']}, {args['topology']}")
    base = recipe.base("stage1", args)
    base.init_from = args["init"]
    mesh, device_memory = TOPOLOGIES[args["topology"]]
    base.mesh.update(mesh)  # mesh.dcn as the base has it: --config.base.mesh.dcn.data=S
    base.loss.impl = "tiled_ring"
    base.loss.negatives_gradient = "global"
    base.grad_accum = dict(micro_batches=1, mode="gradcache")
    base.evals = []

    samples = int(args["samples"])
    c = ml_collections.ConfigDict()
    c.base = base
    c.batch_sizes = BATCH_SIZES
    c.losses = ("softmax", "sigmoid")
    c.loss_impls = ()
    c.stages = ()
    c.settings = dict(loss=dict(sigmoid=dict(
        model=dict(overrides=dict(logit_scale_init=math.log(10.0), logit_bias_init=-10.0)),
        init_new_params=r"_category_head/|^logit_bias$")))
    c.samples = samples
    c.warmup_samples = samples // 10
    c.lr_rule = "sqrt"
    c.reference_batch_size = 32768
    c.eval_batch_size = 256
    c.eval_every_samples = samples // 4
    c.log_every_samples = 65536 * 4
    c.checkpoint_every_samples = samples // 4
    c.micro_batches = {str(b): k for b, k in
                       MICRO_BATCHES[(args["backbone"], args["topology"])].items()}
    c.device_memory = device_memory
    return c
