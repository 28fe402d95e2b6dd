"""Tests of the CLIP image transforms against transformers' PIL CLIPImageProcessor.

    python -m pytest tests/test_image_transforms.py
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import PIL.Image
import pytest

from reasonclip_jax.data import transforms as T

# Same PIL resize and integer crop on uint8 pixels on both sides: only the float32 rounding
# of the normalisation differs (values are O(1), float32 epsilon ~1.2e-7; observed 4.8e-7).
EVAL_TOLERANCE = 2e-6


def _noise_image(width: int, height: int, seed: int) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    # Smooth-ish content so bicubic resizing is exercised like on photos.
    base = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    image = PIL.Image.fromarray(base).resize((width, height), PIL.Image.Resampling.BILINEAR)
    noise = rng.integers(-20, 21, (height, width, 3))
    return PIL.Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def _hf_processor(size: int):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.CLIPImageProcessor(
            do_resize=True, size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )


@pytest.mark.parametrize(
    ("width", "height", "size"),
    # Landscape, portrait, odd long-side excess (227: the case where torchvision's rounding
    # would shift the crop by one pixel), upscaled square, tiny.
    [(300, 200, 224), (200, 333, 224), (301, 224, 224), (227, 224, 224), (97, 97, 224),
     (64, 41, 32), (41, 77, 32)],
)
def test_eval_transform_matches_transformers(width: int, height: int, size: int):
    image = _noise_image(width, height, seed=width * 1000 + height)
    ours = T.eval_transform(image, size)
    theirs = _hf_processor(size)(images=image, return_tensors="np")["pixel_values"][0]
    theirs = np.transpose(theirs, (1, 2, 0))  # CHW -> HWC
    assert ours.shape == (size, size, 3) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() < EVAL_TOLERANCE


def test_shortest_edge_size_truncates_like_torchvision():
    # int(224 * 333 / 200) = int(372.96) = 372, not rounded to 373.
    assert T.shortest_edge_size(200, 333, 224) == (224, 372)
    assert T.shortest_edge_size(333, 200, 224) == (372, 224)
    assert T.shortest_edge_size(50, 50, 224) == (224, 224)


def test_normalize_float64_reference():
    pixels = np.arange(256, dtype=np.uint8).reshape(-1, 1, 1).repeat(3, axis=2)
    ref = (pixels.astype(np.float64) / 255.0 - np.array(T.OPENAI_MEAN)) / np.array(T.OPENAI_STD)
    np.testing.assert_allclose(T.normalize(pixels), ref, atol=2e-6)


def test_decode_image_roundtrip_and_errors():
    buf = io.BytesIO()
    _noise_image(40, 30, 0).convert("L").save(buf, format="JPEG")
    image = T.decode_image(buf.getvalue())
    assert image.mode == "RGB" and image.size == (40, 30)
    for bad in (b"", b"not an image", buf.getvalue()[: len(buf.getvalue()) // 2]):
        with pytest.raises(T.DECODE_ERRORS):
            T.decode_image(bad)


def test_random_resized_crop_box_respects_ranges_and_seed():
    scale, ratio = (0.3, 0.6), (0.5, 2.0)
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = T.random_resized_crop_box(640, 480, rng, scale, ratio)
        assert left >= 0 and top >= 0 and left + w <= 640 and top + h <= 480
        # Rounding w and h to integers moves area and ratio slightly off the sampled values.
        assert scale[0] * 0.97 <= w * h / (640 * 480) <= scale[1] * 1.03
        assert ratio[0] * 0.97 <= w / h <= ratio[1] * 1.03
    boxes = [T.random_resized_crop_box(640, 480, np.random.default_rng(7)) for _ in range(2)]
    assert boxes[0] == boxes[1]


def test_random_resized_crop_box_fallback_is_centred_and_clamped():
    # A scale range no crop can satisfy forces the fallback: a 10:1 strip clamps to ratio 4/3.
    box = T.random_resized_crop_box(1000, 100, np.random.default_rng(0), (2.0, 3.0))
    assert box == ((1000 - 133) // 2, 0, 133, 100)


def test_train_pixels_deterministic_by_rng_and_full_crop_equals_resize():
    image = _noise_image(120, 90, 3)
    a = T.train_pixels(image, 32, np.random.default_rng(1))
    b = T.train_pixels(image, 32, np.random.default_rng(1))
    c = T.train_pixels(image, 32, np.random.default_rng(2))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # scale (1, 1) with the image's own aspect ratio: the crop is the whole image.
    full = T.train_pixels(image, 32, np.random.default_rng(0), (1.0, 1.0), (4 / 3, 4 / 3))
    ref = np.asarray(image.resize((32, 32), PIL.Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(full, ref)


def test_hflip_off_by_default_and_flips_when_on():
    image = _noise_image(64, 64, 4)
    args = (32, (1.0, 1.0), (1.0, 1.0))
    unflipped = T.train_pixels(image, args[0], np.random.default_rng(0), *args[1:])
    outs = [
        T.train_pixels(image, args[0], np.random.default_rng(s), *args[1:], hflip=True)
        for s in range(8)
    ]
    flipped = [o for o in outs if not np.array_equal(o, unflipped)]
    assert 0 < len(flipped) < len(outs)
    for o in flipped:
        np.testing.assert_array_equal(o, unflipped[:, ::-1])
