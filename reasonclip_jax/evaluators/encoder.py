"""The Encoder: batched, jitted image and text embeddings of a CLIP's (or SigLIP's) parameters.

The trainer builds one for its evaluations (params change, the compiled towers stay), and
`evaluate` / `encode` build one from a checkpoint. Evaluators see it as an `Embedder`.

    python -m reasonclip_jax.encode --checkpoint CKPT --texts-file t.txt --output e.npz
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from reasonclip_jax.errors import UserError
from reasonclip_jax.models.clip import CLIP, ModelConfig
from reasonclip_jax.models.preprocessing import MEAN_STD
from reasonclip_jax.models.siglip_tokenizer import load_tokenizer
from reasonclip_jax.parallel import sharding


class Encoder:
    """Batched, jitted embedding with fixed batch shapes (one compile per tower).

    With `mesh`, params may be sharded global arrays (as in the trainer, also across
    processes); inputs are taken as identical on every process, each batch is split over the
    mesh's batch axes (every device embeds its rows) and results come back replicated, so
    every process gets all embeddings.
    """

    def __init__(self, params: Any, config: ModelConfig, batch_size: int = 64,
                 mesh: jax.sharding.Mesh | None = None, dtype: Any = jnp.float32,
                 tokenizer_dir: str | None = None, pad_texts_to_longest: bool = False):
        """`tokenizer_dir`: a SigLIP model's tokenizer files (`config.tokenizer` picks the
        kind). `pad_texts_to_longest`: pad each batch of texts to its longest, as the
        release's evaluation does, instead of to the context length the model was trained
        with; SigLIP pools the last position, so scores then depend on the batching."""
        self.params, self.config, self.batch_size = params, config, batch_size
        self.tokenizer = load_tokenizer(config.tokenizer, tokenizer_dir)
        if pad_texts_to_longest and config.tokenizer == "clip":
            raise UserError("padding texts to the longest is for SigLIP tokenizers; CLIP pools "
                            "its end token, so padding changes nothing")
        self.pad_texts_to_longest = pad_texts_to_longest
        model = CLIP(config, dtype=dtype)
        self._batch_sharding = None
        out = {}
        if mesh is not None:
            sharding.batch_size_per_shard(mesh, batch_size)  # eval_batch_size must split
            self._batch_sharding = sharding.batch_sharding(mesh)
            out = {"out_shardings": sharding.replicated(mesh)}
        self._image = jax.jit(
            lambda p, x: model.apply({"params": p}, images=x)["image_embeds"], **out)
        self._text = jax.jit(
            lambda p, t: model.apply({"params": p}, tokens=t)["text_embeds"], **out)

    @property
    def image_size(self) -> int:
        """The side of the square images `images` takes (see `evaluators.common.Embedder`)."""
        return self.config.image_size

    def _batched(self, fn: Any, inputs: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            pad = self.batch_size - len(chunk)
            padded = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            if self._batch_sharding is not None:  # each device takes its rows of the batch
                padded = jax.make_array_from_callback(padded.shape, self._batch_sharding,
                                                      lambda index, x=padded: x[index])
            outs.append(np.asarray(fn(self.params, padded))[: len(chunk)])
        return np.concatenate(outs) if outs else np.zeros((0, self.config.embed_dim), np.float32)

    @property
    def process_count(self) -> int:
        """Processes that share image decoding (`evaluators.common.embed_images`)."""
        return jax.process_count() if self._batch_sharding is not None else 1

    @property
    def process_index(self) -> int:
        return jax.process_index()

    def images_of_processes(self, pixels: np.ndarray, kept: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Every process's `pixels` [m, S, S, 3] (the same m everywhere) embedded on the mesh:
        ([P * m, D] in process order, and every process's `kept` [P * m]), on every process.

        Global batch b is made of rows [b * k, (b + 1) * k) of each process (k = batch / P),
        so each process feeds only the images it decoded.
        """
        pixels = self.model_pixels(pixels)
        count = jax.process_count()
        if self.batch_size % count:
            raise UserError(f"eval batch {self.batch_size} is not divisible by the {count} "
                            "processes")
        k = self.batch_size // count
        m = len(pixels)
        rows = -(-m // k) * k
        padded = np.concatenate([pixels, np.zeros((rows - m, *pixels.shape[1:]), pixels.dtype)])
        outs = []
        for start in range(0, rows, k):
            batch = jax.make_array_from_process_local_data(self._batch_sharding,
                                                           padded[start : start + k])
            outs.append(np.asarray(self._image(self.params, batch)).reshape(count, k, -1))
        embeds = np.concatenate(outs, axis=1)[:, :m].reshape(count * m, -1)
        all_kept = np.asarray(multihost_utils.process_allgather(kept)).reshape(-1)
        return embeds, all_kept

    def model_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Float pixels come CLIP-normalised (`transforms.eval_transform`, the `Embedder`
        contract); a SigLIP model gets the same pixels normalised with its own mean and std.
        uint8 pixels go as they are: the model normalises them on the device."""
        if self.config.family == "clip" or not np.issubdtype(pixels.dtype, np.floating):
            return pixels
        (clip_mean, clip_std), (mean, std) = MEAN_STD["clip"], MEAN_STD[self.config.family]
        raw = pixels.astype(np.float64) * np.asarray(clip_std) + np.asarray(clip_mean)
        return ((raw - np.asarray(mean)) / np.asarray(std)).astype(np.float32)

    def images(self, pixels: np.ndarray) -> np.ndarray:
        return self._batched(self._image, self.model_pixels(pixels))

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        length = self.config.context_length
        if not self.pad_texts_to_longest:
            return self._batched(self._text, self.tokenizer(texts, length))
        chunks = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        outs = [self._batched(self._text, self.tokenizer(chunk, length, pad_to_longest=True))
                for chunk in chunks]
        return np.concatenate(outs) if outs else np.zeros((0, self.config.embed_dim), np.float32)
