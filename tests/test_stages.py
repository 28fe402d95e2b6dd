"""The stage registry, the stage-1 weight schedule and the stage-2 loss against numpy."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from reasonclip_jax.data import views
from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import CLIP, get_preset, init_params
from reasonclip_jax.train import stages

LAM = dict(start=0.7, end=0.5, final=0.6, ramp_from=0.2, ramp_to=0.8)


@pytest.mark.parametrize("p, lam", [(0.0, 0.7), (0.2, 0.7), (0.5, 0.6), (0.8, 0.5),
                                    (0.81, 0.6), (1.0, 0.6)])
def test_stage1_weight_schedule(p, lam):
    assert float(stages.lam_schedule(np.float32(p), LAM)) == pytest.approx(lam, abs=1e-6)


def _loss_config(gamma=0.05):
    return ml_collections.ConfigDict(dict(kind="softmax", impl="gather", gamma=gamma, lam=LAM,
                                          negatives_gradient="global", tile_size=1024))


def _logsumexp(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def test_stage2_loss_is_infonce_plus_gamma_times_heads(rng):
    model = CLIP(get_preset("tiny", image_size=32), num_category_heads=5)
    params = nn.unbox(init_params(model, jax.random.key(0)))
    objective = stages.Objective("stage2", model, _loss_config(), None, ("data",), 10)
    n, d = 6, 64
    img, txt = rng.standard_normal((2, n, d))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    labels = rng.integers(0, 5, n)
    multihot = (rng.random((n, 5)) < 0.6).astype(np.float32)
    batch = {"cat_label": labels, "image_labels": multihot}
    loss, m = objective.loss(params, {"image": img.astype(np.float32),
                                      "text": txt.astype(np.float32)}, batch, 0)
    # float64 reference
    logits = np.exp(float(params["logit_scale"])) * img @ txt.T
    diag = np.diag(logits)
    infonce = 0.5 * (np.mean(_logsumexp(logits, 1) - diag) + np.mean(_logsumexp(logits, 0) - diag))
    h = {k: {kk: np.asarray(vv, np.float64) for kk, vv in v.items()}
         for k, v in params.items() if k.endswith("category_head")}
    t_logits = txt @ h["text_category_head"]["kernel"] + h["text_category_head"]["bias"]
    i_logits = img @ h["image_category_head"]["kernel"] + h["image_category_head"]["bias"]
    ce = np.mean(_logsumexp(t_logits, 1) - t_logits[np.arange(n), labels])
    bce = np.mean(np.logaddexp(0, i_logits) - multihot * i_logits)
    np.testing.assert_allclose(m["loss_contrastive"], infonce, rtol=1e-5)
    np.testing.assert_allclose(m["loss_text_category"], ce, rtol=1e-5)
    np.testing.assert_allclose(m["loss_image_category"], bce, rtol=1e-5)
    np.testing.assert_allclose(loss, infonce + 0.05 * (ce + bce), rtol=1e-5)


def test_stage_errors():
    model = CLIP(get_preset("tiny"))
    with pytest.raises(UserError, match="unknown stage"):
        stages.Objective("stage3", model, _loss_config(), None, ("data",), 10)
    with pytest.raises(UserError, match="stage2 needs 5 category heads, the model has 0"):
        stages.Objective("stage2", model, _loss_config(), None, ("data",), 10)
    with pytest.raises(UserError, match="stage1 needs 0 category heads, the model has 5"):
        stages.Objective("stage1", CLIP(get_preset("tiny"), num_category_heads=5),
                         _loss_config(), None, ("data",), 10)


def test_registry_declares_each_stage_in_one_place():
    cases = {  # stage: (view, text keys, examples per record, category heads)
        "stage0": (views.CaptionView, ("text",), 1, 0),
        "stage1": (views.CaptionPairsView, ("text_desc", "text_reason"), 9, 0),
        "stage2": (views.CategoryCaptionView, ("text",), 1, 5),
    }
    assert sorted(stages.STAGES) == sorted(cases)
    for name, (kind, keys, per_record, heads) in cases.items():
        stage = stages.get_stage(name)
        view = stage.make_view(("reason",))
        assert type(view) is kind and view.text_keys == keys
        assert view.examples_per_record == per_record and stage.category_heads == heads
    assert stages.get_stage("stage0").make_view(("reason",)).text_fields == ("reason",)


def test_embed_gives_each_text_field_its_own_rows():
    """The text fields go through the tower in one pass; each field's embeddings are
    those of the field alone."""
    model = CLIP(get_preset("tiny", image_size=32))
    params = nn.unbox(init_params(model, jax.random.key(0)))
    objective = stages.Objective("stage1", model, _loss_config(), None, ("data",), 10)
    n = 16
    rng = np.random.default_rng(0)
    tokens = {k: rng.integers(1, 400, (n, 77)).astype(np.int32) for k in objective.text_keys}
    for i, k in enumerate(objective.text_keys):  # end-of-text at a different place per row
        tokens[k][np.arange(n), 10 + 3 * np.arange(n) + i] = model.config.eot_token_id
    inputs = {"image": np.zeros((n, 32, 32, 3), np.uint8), **tokens}
    out = objective.embed(params, inputs)
    assert len(objective.text_keys) == 2
    for k in objective.text_keys:
        alone = model.apply({"params": params}, tokens=tokens[k])["text_embeds"]
        np.testing.assert_allclose(out[k], alone, rtol=1e-5, atol=1e-6)
