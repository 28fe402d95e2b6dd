"""The recipe's stages, in one registry: each stage's view of the data, heads and loss.

    stage0  InfoNCE(I, T)                                     (descriptive or reasoning CP)
    stage1  lam(t) InfoNCE(I, T_desc) + (1 - lam(t)) InfoNCE(I, T_reason)
    stage2  InfoNCE(I, T_rp) + gamma [CE(W_t t, y_text) + BCE(W_i v, multihot(y_img))]

A `Stage` declares the view that turns records into examples (its text keys and examples
per record, `data/views.py`), the category heads the model needs and its loss. The penalty
beta * ||theta - theta_0||^2 of stage 1 lives in the optimizer (`optim.l2_init`).
`Objective.embed` maps a (micro-)batch to normalised embeddings; `Objective.loss` takes the
full batch's embeddings, so GradCache can run `embed` per micro-batch and `loss` once over
every negative.

Config keys (`config.loss`):
    kind        "softmax" (CLIP InfoNCE) | "sigmoid" (SigLIP)
    impl        "gather" | "ring" | "tiled_ring" (see parallel/losses.py)
    tile_size   the tiles' side for impl="tiled_ring" (divides the per-device batch)
    negatives_gradient  "global" (the exact gradient of the global loss) | "local" (the
                release's rule: remote negatives detached; gather only)
    lam         stage 1 weight schedule over progress p = step / total_steps:
                dict(start=0.7, end=0.5, final=0.6, ramp_from=0.2, ramp_to=0.8):
                start for p <= ramp_from, linear to end at ramp_to, then final
    gamma       stage 2 category-head weight (0 = "Stage 2 w/o cls")

    python -c "from reasonclip_jax.train import stages; print(list(stages.STAGES))"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from reasonclip_jax.data import views
from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import CLIP
from reasonclip_jax.parallel import losses

Metrics = dict[str, jax.Array]


def lam_schedule(progress: jax.Array, lam: Mapping[str, float]) -> jax.Array:
    """The stage-1 descriptive weight at training progress p in [0, 1]."""
    ramp = (progress - lam["ramp_from"]) / (lam["ramp_to"] - lam["ramp_from"])
    ramped = lam["start"] + (lam["end"] - lam["start"]) * ramp
    return jnp.where(progress <= lam["ramp_from"], lam["start"],
                     jnp.where(progress <= lam["ramp_to"], ramped, lam["final"]))


# ------------------------------------------------------------------------ stage losses
# Each: (objective, params, embeddings, batch, step) -> (loss, metrics).


def _contrastive_loss(o: Objective, params: Any, embeds: Mapping[str, jax.Array],
                      batch: Mapping[str, Any], step: jax.Array) -> tuple[jax.Array, Metrics]:
    loss, m = o.contrastive(params, embeds["image"], embeds["text"])
    return loss, dict(loss_contrastive=loss, **m)


def _dual_alignment_loss(o: Objective, params: Any, embeds: Mapping[str, jax.Array],
                         batch: Mapping[str, Any], step: jax.Array
                         ) -> tuple[jax.Array, Metrics]:
    desc, m_desc = o.contrastive(params, embeds["image"], embeds["text_desc"])
    reason, m_reason = o.contrastive(params, embeds["image"], embeds["text_reason"])
    lam = lam_schedule(step / o.total_steps, o.cfg.lam)
    metrics = dict(loss_desc=desc, loss_reason=reason, lam=lam)
    metrics.update({f"desc_{k}": v for k, v in m_desc.items()})
    metrics.update({f"reason_{k}": v for k, v in m_reason.items()})
    return lam * desc + (1 - lam) * reason, metrics


def _category_structured_loss(o: Objective, params: Any, embeds: Mapping[str, jax.Array],
                              batch: Mapping[str, Any], step: jax.Array
                              ) -> tuple[jax.Array, Metrics]:
    loss, metrics = _contrastive_loss(o, params, embeds, batch, step)
    img_logits, txt_logits = o.model.apply(
        {"params": params}, embeds["image"], embeds["text"], method=CLIP.category_logits)
    ce = optax.softmax_cross_entropy_with_integer_labels(txt_logits, batch["cat_label"]).mean()
    bce = optax.sigmoid_binary_cross_entropy(img_logits, batch["image_labels"]).mean()
    metrics.update(
        loss_text_category=ce, loss_image_category=bce,
        text_category_acc=jnp.mean(jnp.argmax(txt_logits, -1) == batch["cat_label"]),
    )
    return loss + o.cfg.gamma * (ce + bce), metrics


# ------------------------------------------------------------------------ the registry

LossFn = Callable[..., tuple[jax.Array, Metrics]]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the recipe: its data view, its category heads and its loss."""

    name: str
    description: str
    make_view: Callable[[Sequence[str]], views.View]  # input.text_fields -> the view
    category_heads: int
    loss: LossFn


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("stage0", "contrastive pretraining on one caption pool (descriptive or reasoning CP)",
          lambda text_fields: views.CaptionView(tuple(text_fields)), 0, _contrastive_loss),
    Stage("stage1", "dual descriptive + reasoning alignment",
          lambda text_fields: views.CaptionPairsView(), 0, _dual_alignment_loss),
    Stage("stage2", "category-structured reasoning with category heads",
          lambda text_fields: views.CategoryCaptionView(), views.NUM_CATEGORIES,
          _category_structured_loss),
)}


def get_stage(name: str) -> Stage:
    """The registered stage `name` (UserError naming the choices otherwise)."""
    if name not in STAGES:
        raise UserError(f"unknown stage '{name}'; choose one of {list(STAGES)}")
    return STAGES[name]


class Objective:
    """The embed and loss functions of one stage, for one model and mesh."""

    def __init__(self, stage: str | Stage, model: CLIP, loss_config: ml_collections.ConfigDict,
                 mesh: jax.sharding.Mesh | None, batch_axes: tuple[str, ...],
                 total_steps: int, text_fields: Sequence[str] = ("desc",)):
        self.stage = get_stage(stage) if isinstance(stage, str) else stage
        if model.num_category_heads != self.stage.category_heads:
            raise UserError(f"{self.stage.name} needs {self.stage.category_heads} category "
                            f"heads, the model has {model.num_category_heads}")
        self.model, self.cfg = model, loss_config
        self.mesh, self.batch_axes, self.total_steps = mesh, batch_axes, total_steps
        self.view = self.stage.make_view(text_fields)
        self.text_keys = self.view.text_keys

    def inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch fields `embed` needs (what GradCache splits into micro-batches)."""
        return {k: batch[k] for k in ("image", *self.text_keys)}

    def embed(self, params: Any, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Normalised embeddings: image [B, D] and one [B, D] per text field."""
        variables = {"params": params}
        out = {"image": self.model.apply(variables, images=inputs["image"])["image_embeds"]}
        # One text pass over both fields. Concatenating the batch-sharded fields end to end
        # all-gathers their token ids (2 x B x L int32) before slicing them back; keeping
        # them on their devices instead made XLA:TPU hold more temporaries (v5e 2x2, tiny at
        # 2,048 without remat: 0.95 -> 1.29 GiB), so the ids are gathered.
        tokens = jnp.concatenate([inputs[k] for k in self.text_keys])
        texts = self.model.apply(variables, tokens=tokens)["text_embeds"]
        for i, k in enumerate(self.text_keys):
            out[k] = texts[i * len(inputs["image"]) : (i + 1) * len(inputs["image"])]
        return out

    def contrastive(self, params: Any, img: jax.Array, txt: jax.Array
                    ) -> tuple[jax.Array, Metrics]:
        """The configured contrastive loss over the global batch."""
        return losses.contrastive_loss(
            img, txt, params["logit_scale"], params.get("logit_bias"), kind=self.cfg.kind,
            impl=self.cfg.impl, mesh=self.mesh, batch_axes=self.batch_axes,
            negatives_gradient=self.cfg.negatives_gradient, tile_size=self.cfg.tile_size,
        )

    def loss(self, params: Any, embeds: Mapping[str, jax.Array], batch: Mapping[str, Any],
             step: jax.Array) -> tuple[jax.Array, Metrics]:
        """(scalar loss, metrics) over the whole batch."""
        loss, metrics = self.stage.loss(self, params, embeds, batch, step)
        metrics.update(logit_scale=jnp.exp(params["logit_scale"]), loss=loss)
        return loss, metrics
