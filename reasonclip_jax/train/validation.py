"""Held-out loss: the stage's own training objective on the validation split.

As the release's `eval_loss` (a Hugging Face Trainer evaluation of its `compute_loss`): the
stage's loss terms with lambda at the current step, plus the L2-to-init penalty
`beta * sum ||theta - theta_0||^2`, averaged over validation batches of a fixed global size
(`validation.batch_size`; the release's is 8 per device, gathered) with the incomplete last
batch left out (`dataloader_drop_last`). Every example of the stage's view is used (stage 1:
all 9 caption pairs of each record), in shard order, without augmentation. A batch that holds
padding (the last one, or one with a record that could not be read) is left out too, so
every contrastive batch has the same number of negatives.

Config (`config.validation`):
    batch_size   global contrastive batch of the held-out loss; 0 turns it off
    data_dirs    shard directories; empty: the training `input.data_dirs`
    split        the shards' split, "validation" (0.2% of the records by default, written
                 by `data_pipeline.build --validation-fraction`)

Metrics (at every evaluation of the trainer): `validation/loss`, each loss term as
`validation/TERM`, `validation/l2_init_penalty` and `validation/num_batches`. Select
checkpoints by it with `checkpoint.best_metric="validation/loss"`, `best_mode="min"`.

    python -m reasonclip_jax.train --config configs/demo.py:/tmp/scenes --workdir /tmp/demo \
        --config.validation.batch_size=32 --config.checkpoint.best_metric=validation/loss \
        --config.checkpoint.best_mode=min
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reasonclip_jax.data import examples, pipeline
from reasonclip_jax.errors import UserError
from reasonclip_jax.parallel import sharding
from reasonclip_jax.train import optimizer, stages

# Loss terms averaged over batches (scalars of the stage's metrics that are losses).
_TERMS = ("loss", "loss_desc", "loss_reason", "loss_contrastive", "loss_text_category",
          "loss_image_category")


def input_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The validation split's input config: the training input's, one pass, no workers."""
    cfg = ml_collections.ConfigDict(config.input.to_dict())
    cfg.data_dirs = list(config.validation.data_dirs or config.input.data_dirs)
    cfg.split = config.validation.split
    cfg.batch_size = config.validation.batch_size
    cfg.worker_count = 0
    return cfg


def _batch_loss(params: Any, opt_state: Any, batch: dict[str, jax.Array], step: jax.Array, *,
                objective: stages.Objective, opt: optimizer.Optimizer
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(batch has no padding, the loss terms and the L2 penalty) of one global batch."""
    loss, metrics = objective.loss(params, objective.embed(params, objective.inputs(batch)),
                                   batch, step)
    terms = {k: v for k, v in metrics.items() if k in _TERMS}
    penalty = opt.l2_init_penalty(params, opt_state)
    terms["loss"] = loss + penalty
    terms["l2_init_penalty"] = penalty
    return jnp.all(batch["mask"]), terms


class ValidationLoss:
    """Computes the held-out loss of given params (jitted once; the data is read each call)."""

    def __init__(self, config: ml_collections.ConfigDict, objective: stages.Objective,
                 opt: optimizer.Optimizer, mesh: jax.sharding.Mesh, params_sharding: Any,
                 state_sharding: Any) -> None:
        self.cfg = input_config(config)
        self.objective, self.mesh = objective, mesh
        sharding.batch_size_per_shard(mesh, self.cfg.batch_size)
        sources = examples.open_sources(self.cfg.data_dirs, self.cfg.split)
        total = sum(s.num_records for s in sources) * objective.view.examples_per_record
        if total < self.cfg.batch_size:
            raise UserError(f"validation: no complete batch of {self.cfg.batch_size} in split "
                            f"'{self.cfg.split}' ({total} examples); lower "
                            "validation.batch_size, or 0 turns the held-out loss off")
        self._loss = jax.jit(
            functools.partial(_batch_loss, objective=objective, opt=opt),
            in_shardings=(params_sharding, state_sharding["opt_state"],
                          sharding.batch_sharding(mesh), sharding.replicated(mesh)),
            out_shardings=sharding.replicated(mesh),
        )

    def __call__(self, params: Any, opt_state: Any, step: int) -> dict[str, float]:
        keys = ("image", *self.objective.text_keys, *self.objective.view.label_zeros(), "mask")
        sums: dict[str, Any] = {}
        full_batches = 0
        iterator = pipeline.make_eval_iterator(self.cfg, self.objective.view)
        try:
            for local in iterator:
                batch = pipeline.make_global_batch({k: local[k] for k in keys}, self.mesh,
                                                   sharding.BATCH_AXES)
                full, terms = self._loss(params, opt_state, batch, jnp.int32(step))
                # Summed on the device; one transfer at the end.
                sums = {k: sums.get(k, 0.0) + jnp.where(full, v, 0.0) for k, v in terms.items()}
                full_batches = full_batches + full.astype(jnp.int32)
        finally:
            iterator.close()
        count = int(jax.device_get(full_batches))
        if count == 0:
            raise UserError(f"validation: no complete batch of {self.cfg.batch_size} in split "
                            f"'{self.cfg.split}'; lower validation.batch_size")
        out = {f"validation/{k}": float(np.asarray(v)) / count
               for k, v in jax.device_get(sums).items()}
        out["validation/num_batches"] = float(count)
        return out
