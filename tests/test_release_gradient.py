"""`negatives_gradient="local"`: the PyTorch release's gradient rule, against a simulated
W-device run of its `compute_loss` (trainning/ft_clip_r_s1.py, RISys-Lab/ReasonCLIP @ 8286f85)
in torch: features all-gathered with the remote copies detached, labels arange(B) + rank * B,
CE both ways over local rows x global columns (or the SigLIP logistic loss over local images
x global texts, divided by B), gradients averaged over the W ranks as DDP does.

    python -m pytest tests/test_release_gradient.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from reasonclip_jax.parallel.losses import contrastive_loss

N, D, WORLD = 32, 16, 8
LOG_SCALE, BIAS = float(np.log(10.0)), -4.0


def gather_with_local_grad(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """The release's helper: every rank's slice, only this rank's keeps its gradient."""
    b = x.size(0) // world
    parts = [x[i * b:(i + 1) * b] if i == rank else x.detach()[i * b:(i + 1) * b]
             for i in range(world)]
    return torch.cat(parts)


def siglip_logistic_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The release's `_siglip_logistic_loss`."""
    label_matrix = logits.new_full(logits.shape, -1.0)
    label_matrix[torch.arange(logits.size(0)), labels] = 1.0
    return -F.logsigmoid(label_matrix * logits).sum() / logits.size(0)


def release_loss_and_grads(img: np.ndarray, txt: np.ndarray, kind: str, world: int):
    """Mean over ranks of each rank's loss, and the DDP-averaged gradients (float64)."""
    img_t = torch.tensor(img, dtype=torch.float64, requires_grad=True)
    txt_t = torch.tensor(txt, dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(LOG_SCALE, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(BIAS, dtype=torch.float64, requires_grad=True)
    b = img.shape[0] // world
    losses = []
    for rank in range(world):
        local_img, local_txt = img_t[rank * b:(rank + 1) * b], txt_t[rank * b:(rank + 1) * b]
        all_img = gather_with_local_grad(img_t, rank, world)
        all_txt = gather_with_local_grad(txt_t, rank, world)
        labels = torch.arange(b) + rank * b
        if kind == "sigmoid":
            logits = log_scale.exp() * (local_img @ all_txt.t()) + bias
            losses.append(siglip_logistic_loss(logits, labels))
        else:  # the release forces the bias to 0 for CE
            per_image = log_scale.exp() * (local_img @ all_txt.t())
            per_text = log_scale.exp() * (local_txt @ all_img.t())
            losses.append(0.5 * (F.cross_entropy(per_image, labels)
                                 + F.cross_entropy(per_text, labels)))
    total = torch.stack(losses).mean()  # DDP: gradients averaged over the ranks
    total.backward()
    return float(total.detach()), [t.grad.numpy() if t.grad is not None else np.zeros(())
                          for t in (img_t, txt_t, log_scale, bias)]


def ours(img, txt, kind, rule, mesh):
    def fn(img, txt, log_scale, bias):
        return contrastive_loss(img, txt, log_scale, bias, kind=kind, impl="gather",
                                mesh=mesh, batch_axes=("data", "fsdp"),
                                negatives_gradient=rule)[0]

    batch = NamedSharding(mesh, P(("data", "fsdp")))
    value, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))(
        jax.device_put(img, batch), jax.device_put(txt, batch), jnp.float32(LOG_SCALE),
        jnp.float32(BIAS))
    return float(value), [np.asarray(g, np.float64) for g in grads]


def embeddings(seed: int = 0):
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((N, D))
    txt = img + 0.5 * rng.standard_normal((N, D))
    norm = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return norm(img), norm(txt)


def assert_close(actual, expected, rtol=2e-5):
    scale = max(np.max(np.abs(expected)), 1e-12)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1)])
def test_local_rule_is_the_releases_and_global_is_not(kind, mesh_shape):
    mesh = jax.make_mesh(mesh_shape, ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    img, txt = embeddings()
    want_value, want_grads = release_loss_and_grads(img, txt, kind, WORLD)
    value, grads = ours(img, txt, kind, "local", mesh)
    assert value == pytest.approx(want_value, rel=1e-5)
    for got, want in zip(grads, want_grads, strict=True):
        if kind == "softmax" and want.ndim == 0 and want == 0:
            continue  # the bias takes no part in CE
        assert_close(got, want)
    # The exact global gradient: the same loss value, different text gradients (texts are
    # negatives of every device's images; sigmoid's image rows are local in both rules).
    value_global, grads_global = ours(img, txt, kind, "global", mesh)
    assert value_global == pytest.approx(want_value, rel=1e-5)
    assert np.max(np.abs(grads_global[1] - want_grads[1])) > 0.2 * np.max(np.abs(want_grads[1]))
    # On one device the release's rule is the global gradient.
    one_value, one_grads = release_loss_and_grads(img, txt, kind, 1)
    np.testing.assert_allclose(one_value, value_global, rtol=1e-5)
    for got, want in zip(grads_global[:2], one_grads[:2], strict=True):
        assert_close(got, want)


def test_local_rule_needs_gather():
    img, txt = embeddings()
    mesh = jax.make_mesh((8, 1, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with pytest.raises(ValueError, match="needs impl='gather'"):
        contrastive_loss(img, txt, LOG_SCALE, kind="softmax", impl="ring", mesh=mesh,
                         negatives_gradient="local")
    with pytest.raises(ValueError, match="unknown negatives_gradient"):
        contrastive_loss(img, txt, LOG_SCALE, negatives_gradient="remote")
