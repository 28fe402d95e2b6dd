"""The training objectives of the recipe's stages, split into embed and loss halves.

    stage0  InfoNCE(I, T)                                     (descriptive or reasoning CP)
    stage1  lam(t) InfoNCE(I, T_desc) + (1 - lam(t)) InfoNCE(I, T_reason)
    stage2  InfoNCE(I, T_rp) + gamma [CE(W_t t, y_text) + BCE(W_i v, multihot(y_img))]

The penalty beta * ||theta - theta_0||^2 of stage 1 lives in the optimizer (`optim.l2_init`).
`embed` maps a (micro-)batch to normalised embeddings; `loss` takes the full batch's
embeddings, so GradCache can run `embed` per micro-batch and `loss` once over every negative.

Config keys (`config.loss`):
    kind        "softmax" (CLIP InfoNCE) | "sigmoid" (SigLIP)
    impl        "gather" | "ring" (see losses.py)
    lam         stage 1 weight schedule over progress p = step / total_steps:
                dict(start=0.7, end=0.5, final=0.6, ramp_from=0.2, ramp_to=0.8):
                start for p <= ramp_from, linear to end at ramp_to, then final
    gamma       stage 2 category-head weight (0 = "Stage 2 w/o cls")

    python -c "from reasonclip_jax import objectives; print(objectives.STAGES)"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from reasonclip_jax import losses
from reasonclip_jax.errors import UserError
from reasonclip_jax.model import CLIP

STAGES = ("stage0", "stage1", "stage2")
TEXT_KEYS = {"stage0": ("text",), "stage1": ("text_desc", "text_reason"), "stage2": ("text",)}


def lam_schedule(progress: jax.Array, lam: Mapping[str, float]) -> jax.Array:
    """The stage-1 descriptive weight at training progress p in [0, 1]."""
    ramp = (progress - lam["ramp_from"]) / (lam["ramp_to"] - lam["ramp_from"])
    ramped = lam["start"] + (lam["end"] - lam["start"]) * ramp
    return jnp.where(progress <= lam["ramp_from"], lam["start"],
                     jnp.where(progress <= lam["ramp_to"], ramped, lam["final"]))


class Objective:
    """The embed and loss functions of one stage, for one model and mesh."""

    def __init__(self, stage: str, model: CLIP, loss_config: ml_collections.ConfigDict,
                 mesh: jax.sharding.Mesh | None, batch_axes: tuple[str, ...],
                 total_steps: int):
        if stage not in STAGES:
            raise UserError(f"unknown stage '{stage}'; choose one of {list(STAGES)}")
        if stage == "stage2" and not model.num_category_heads:
            raise UserError("stage2 needs the category heads (model.num_category_heads=5)")
        self.stage, self.model, self.cfg = stage, model, loss_config
        self.mesh, self.batch_axes, self.total_steps = mesh, batch_axes, total_steps
        self.text_keys = TEXT_KEYS[stage]

    def inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch fields `embed` needs (what GradCache splits into micro-batches)."""
        return {k: batch[k] for k in ("image", *self.text_keys)}

    def embed(self, params: Any, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Normalised embeddings: image [B, D] and one [B, D] per text field."""
        variables = {"params": params}
        out = {"image": self.model.apply(variables, images=inputs["image"])["image_embeds"]}
        tokens = jnp.concatenate([inputs[k] for k in self.text_keys])  # one text pass
        texts = self.model.apply(variables, tokens=tokens)["text_embeds"]
        for i, k in enumerate(self.text_keys):
            out[k] = texts[i * len(inputs["image"]) : (i + 1) * len(inputs["image"])]
        return out

    def _contrastive(self, params: Any, img: jax.Array, txt: jax.Array
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
        return losses.contrastive_loss(
            img, txt, params["logit_scale"], params.get("logit_bias"), kind=self.cfg.kind,
            impl=self.cfg.impl, mesh=self.mesh, batch_axes=self.batch_axes,
        )

    def loss(self, params: Any, embeds: Mapping[str, jax.Array], batch: Mapping[str, Any],
             step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar loss, metrics) over the whole batch."""
        img = embeds["image"]
        metrics: dict[str, jax.Array] = {"logit_scale": jnp.exp(params["logit_scale"])}
        if self.stage == "stage1":
            desc, m_desc = self._contrastive(params, img, embeds["text_desc"])
            reason, m_reason = self._contrastive(params, img, embeds["text_reason"])
            lam = lam_schedule(step / self.total_steps, self.cfg.lam)
            loss = lam * desc + (1 - lam) * reason
            metrics.update(loss_desc=desc, loss_reason=reason, lam=lam)
            metrics.update({f"desc_{k}": v for k, v in m_desc.items()})
            metrics.update({f"reason_{k}": v for k, v in m_reason.items()})
        else:
            loss, m = self._contrastive(params, img, embeds["text"])
            metrics.update(loss_contrastive=loss, **m)
            if self.stage == "stage2":
                img_logits, txt_logits = self.model.apply(
                    {"params": params}, img, embeds["text"], method=CLIP.category_logits)
                ce = optax.softmax_cross_entropy_with_integer_labels(
                    txt_logits, batch["cat_label"]).mean()
                bce = optax.sigmoid_binary_cross_entropy(img_logits, batch["image_labels"]).mean()
                loss = loss + self.cfg.gamma * (ce + bce)
                metrics.update(
                    loss_text_category=ce, loss_image_category=bce,
                    text_category_acc=jnp.mean(jnp.argmax(txt_logits, -1) == batch["cat_label"]),
                )
        metrics["loss"] = loss
        return loss, metrics
