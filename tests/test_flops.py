"""Model FLOPs against the recipe's published per-sample forward figures (224 px, 77 tokens)."""

import pytest

from reasonclip_jax.models import flops
from reasonclip_jax.models.clip import PRESETS

PUBLISHED_GFLOPS = [  # (preset, image forward, text forward), reasonclip_recipe.md
    ("ViT-B-32", 8.82, 5.96), ("ViT-B-16", 35.13, 5.96), ("ViT-L-14", 162.03, 13.3),
]


@pytest.mark.parametrize("preset, image_gflops, text_gflops", PUBLISHED_GFLOPS)
def test_forward_flops_match_published_figures(preset, image_gflops, text_gflops):
    c = PRESETS[preset]
    assert flops.image_forward_flops(c) / 1e9 == pytest.approx(image_gflops, rel=0.01)
    assert flops.text_forward_flops(c, 77) / 1e9 == pytest.approx(text_gflops, rel=0.01)


@pytest.mark.parametrize("preset, image_gflops, text_gflops", PUBLISHED_GFLOPS)
def test_train_flops_are_three_forwards_of_the_published_figures(preset, image_gflops,
                                                                 text_gflops):
    # Stage 1 embeds one image and two captions; a train step is ~3x its forward.
    published = 3 * (image_gflops + 2 * text_gflops)
    train = flops.train_flops_per_example(PRESETS[preset], 77, texts=2) / 1e9
    assert train == pytest.approx(published, rel=0.01)
