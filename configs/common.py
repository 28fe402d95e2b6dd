"""The pieces every experiment config shares; each config file states what it changes.

Every key the trainer reads is set here, so a config file plus command-line overrides is
the whole description of a run.
"""

from __future__ import annotations

import ml_collections

from reasonclip_jax.data import pipeline

# Recipe, stage 1: vision 1e-5, text 3e-5, logit scale 1e-4 (all wd 0), the rest 1e-4 wd 0.05.
NOT_PROJ_VISION = r"^visual/(?!proj$)"
NOT_PROJ_TEXT = r"^text/(?!text_projection$)"
TOWERS_WITHOUT_PROJECTIONS = r"^(visual|text)/(?!proj$|text_projection$)"


def optim_groups(vision_lr: float, text_lr: float, logit_lr: float, rest_lr: float,
                 tower_wd: float, rest_wd: float = 0.05, head_lr: float | None = None
                 ) -> list[dict]:
    groups = [
        dict(name="vision", regex=NOT_PROJ_VISION, lr=vision_lr, wd=tower_wd),
        dict(name="text", regex=NOT_PROJ_TEXT, lr=text_lr, wd=tower_wd),
        dict(name="logit", regex=r"^logit_(scale|bias)$", lr=logit_lr, wd=0.0),
    ]
    if head_lr is not None:
        groups.append(dict(name="heads", regex=r"_category_head/", lr=head_lr, wd=rest_wd))
    groups.append(dict(name="rest", regex=r".*", lr=rest_lr, wd=rest_wd))
    return groups


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 42
    c.distributed = False  # True: jax.distributed.initialize() auto-detects the cluster
    c.mesh = dict(data=-1, fsdp=1, tensor=1)  # -1 takes the remaining devices
    # Several TPU slices: the data axis split over them (dcn.data=S, or -1 for all); the
    # sizes above are then those within one slice (parallel/sharding.py).
    c.mesh.dcn = dict(data=1)
    c.num_devices = -1  # -1: every device of every process; N: the first N
    c.stage = "stage1"  # a key of train/stages.py STAGES: stage0 | stage1 | stage2
    c.total_steps = 1000
    c.init_from = ""  # a checkpoint (imported weights or an earlier stage); "" = random init
    c.init_new_params = r"_category_head/"  # params allowed to be absent from init_from

    # attention_impl: "einsum" (the fastest on CPU), "xla" (jax.nn.dot_product_attention), or
    # "cudnn" (its fused kernel: NVIDIA GPUs, bfloat16); models/layers.py ATTENTION_IMPLS.
    # scan_unroll: each tower's blocks run as one scanned loop (1); its layer count unrolls
    # them, which compiles longer and on a TPU holds fewer temporaries (README).
    c.model = dict(preset="ViT-B-32", overrides={}, dtype="bfloat16", remat_policy="none",
                   attention_impl="einsum", scan_unroll=1)

    c.input = pipeline.get_config()

    c.loss = dict(
        kind="softmax", impl="gather", gamma=0.05,
        negatives_gradient="global",  # or "local": the PyTorch release's rule (losses.py)
        tile_size=1024,  # impl="tiled_ring": logits held per device, tile_size^2 not n^2
        lam=dict(start=0.7, end=0.5, final=0.6, ramp_from=0.2, ramp_to=0.8),
    )
    c.grad_accum = dict(micro_batches=1, mode="gradcache")  # or "plain" (fewer negatives)

    c.optim = dict(
        b1=0.9, b2=0.999, eps=1e-8, grad_clip_norm=1.0, warmup_fraction=0.1,
        decay="cosine", end_lr_fraction=0.0, logit_scale_max=50.0,
        l2_init=dict(beta=1e-5, regex=TOWERS_WITHOUT_PROJECTIONS),
        groups=optim_groups(1e-5, 3e-5, 1e-4, 1e-4, tower_wd=0.0),
    )

    c.log_every = 50
    c.eval_every = 0  # 0: only at the end
    c.eval_batch_size = 256
    c.evals = []  # evaluators (see reasonclip_jax/evaluators)
    # Held-out loss of the stage's objective (train/validation.py); batch_size 0: off.
    c.validation = dict(batch_size=0, data_dirs=[], split="validation")
    c.checkpoint = dict(every_steps=500, keep=3, async_save=True,
                        best_metric="", best_mode="max")
    c.max_nonfinite_streak = 5
    # MFU against this peak FLOP/s per device; 0: looked up from the device kind (train/mfu.py),
    # no MFU on a kind it does not know (CPU).
    c.peak_flops_per_device = 0.0
    # Compiled programs persist here for later runs (local disk, even when the workdir is a
    # bucket); "" turns the cache off.
    c.compilation_cache_dir = "~/.cache/reasonclip_jax/xla"
    c.profile = dict(start_step=-1, num_steps=3)
    c.log_record_indices = False  # per-process record indices of every step, for provenance
    return c
