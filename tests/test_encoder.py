"""The Encoder: batches split over a device mesh give the embeddings of one device.

    python -m pytest tests/test_encoder.py
"""

import functools

import flax.linen as nn
import jax
import numpy as np
import pytest

from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators.encoder import Encoder
from reasonclip_jax.models.clip import CLIP, get_preset, init_params
from reasonclip_jax.parallel import sharding


@pytest.mark.parametrize("mesh_axes", [dict(data=8), dict(data=2, fsdp=4)])
def test_mesh_encoder_equals_one_device(mesh_axes):
    config = get_preset("tiny", image_size=32)
    model = CLIP(config)
    params = jax.device_get(nn.unbox(init_params(model, jax.random.key(0))))
    mesh = sharding.make_mesh(mesh_axes)
    boxed = jax.eval_shape(functools.partial(init_params, model), jax.random.key(0))
    sharded = jax.device_put(params, sharding.logical_shardings(boxed, mesh))  # as trainer
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-2, 2, (11, 32, 32, 3)).astype(np.float32)  # 11: a padded batch
    texts = [f"a photo of {n} red cubes" for n in range(13)]
    single = Encoder(params, config, batch_size=8)
    meshed = Encoder(sharded, config, batch_size=8, mesh=mesh)
    for a, b in ((single.images(pixels), meshed.images(pixels)),
                 (single.texts(texts), meshed.texts(texts))):
        assert a.shape == b.shape and b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert meshed._batch_sharding.spec == sharding.batch_sharding(mesh).spec


def test_batch_that_does_not_split_over_the_mesh_is_a_user_error():
    config = get_preset("tiny", image_size=32)
    params = jax.device_get(nn.unbox(init_params(CLIP(config), jax.random.key(0))))
    with pytest.raises(UserError, match="not divisible by the data-parallel size 8"):
        Encoder(params, config, batch_size=12, mesh=sharding.make_mesh(dict(data=8)))
