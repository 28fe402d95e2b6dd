"""The trainer: one loop, read top to bottom.

    python -m reasonclip_jax.train --config configs/demo.py --workdir /tmp/demo \
        [--config.total_steps=200 --config.mesh.fsdp=2 ...]

A run restarted in the same workdir resumes from its latest complete checkpoint (params,
optimizer state, step, input iterator). SIGTERM saves and exits cleanly. Steps whose loss or
gradient is not finite are skipped and counted; `max_nonfinite_streak` in a row stop the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from flax import traverse_util
from ml_collections import config_flags

from reasonclip_jax import (
    checkpoint,
    distributed,
    evaluators,
    grad_accum,
    input_pipeline,
    metrics,
    objectives,
    optimizer,
    sharding,
)
from reasonclip_jax.errors import UserError, exit_on_user_error
from reasonclip_jax.model import CLIP, NUM_CATEGORIES, ModelConfig, get_preset, init_params

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")

log = logging.getLogger("reasonclip_jax.train")


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps."""


# --------------------------------------------------------------------------- helpers


def _model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """The architecture: `init_from`'s checkpoint, else the named preset; then overrides."""
    overrides = dict(config.model.get("overrides", {}))
    if config.init_from:
        return dataclasses.replace(checkpoint.load_model_config(config.init_from), **overrides)
    return get_preset(config.model.preset, **overrides)


def _load_init_params(path: str, abstract: Any, shardings: Any, fresh: Any, new_regex: str
                      ) -> Any:
    """Pretrained params into the model's shardings; params matching `new_regex` (heads a
    stage adds) keep their fresh initialisation. Any other difference is an error."""
    import re

    loaded, _ = checkpoint.load_model(path)
    loaded = traverse_util.flatten_dict(loaded, sep="/")
    ours = traverse_util.flatten_dict(abstract, sep="/")
    for key in loaded:
        if key not in ours:
            raise UserError(f"checkpoint {path} has parameter '{key}' that the model lacks")
    flat_sh = traverse_util.flatten_dict(shardings, sep="/")
    flat_fresh = traverse_util.flatten_dict(fresh, sep="/")
    out = {}
    for key, spec in ours.items():
        if key not in loaded:
            if not (new_regex and re.search(new_regex, key)):
                raise UserError(f"checkpoint {path} lacks parameter '{key}' of the model")
            out[key] = flat_fresh[key]
            continue
        value = loaded[key]
        if tuple(value.shape) != tuple(spec.shape):
            raise UserError(f"checkpoint parameter '{key}' has shape {tuple(value.shape)}, "
                            f"the model expects {tuple(spec.shape)}")
        out[key] = jax.make_array_from_callback(
            spec.shape, flat_sh[key], lambda idx, v=value, d=spec.dtype: np.asarray(v[idx], d))
    return traverse_util.unflatten_dict(out, sep="/")


class Preemption:
    """SIGTERM sets a flag; every process learns of it at the same step."""

    def __init__(self) -> None:
        self.requested = False
        self.multi = jax.process_count() > 1
        if not self.multi:  # JAX's coordination service handles it across processes
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.requested = True

    def reached(self, step: int) -> bool:
        if self.multi:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested


def _mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    host = jax.device_get(history)
    out = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
    out["nonfinite_streak"] = float(max(h["nonfinite_streak"] for h in host))
    return out


# --------------------------------------------------------------------------- main


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) training; returns the last logged metrics."""
    with contextlib.ExitStack() as stack:
        return _train(config, workdir, stack)


def _train(config: ml_collections.ConfigDict, workdir: str, stack: contextlib.ExitStack
           ) -> dict[str, float]:
    # ---------------------------------------------------------------- logging and setup
    distributed.initialize(auto=config.get("distributed", False))
    jax.config.update("jax_threefry_partitionable", True)
    os.makedirs(workdir, exist_ok=True)
    is_chief = jax.process_index() == 0
    log.info("process %d/%d, %d devices", jax.process_index(), jax.process_count(),
             jax.device_count())

    # ---------------------------------------------------------------- mesh
    devices = jax.devices()
    if config.get("num_devices", -1) > 0:  # a subset, e.g. to compare against one device
        if config.num_devices > len(devices):
            raise UserError(f"num_devices={config.num_devices} but only {len(devices)} exist")
        devices = devices[: config.num_devices]
    mesh = sharding.make_mesh(config.mesh, devices)
    sharding.batch_size_per_shard(mesh, config.input.batch_size)
    batch_sharding = sharding.batch_sharding(mesh)
    total_steps = config.total_steps
    evaluators.check_configs(config.evals)  # a bad eval fails now, not after training

    # ---------------------------------------------------------------- model and optimizer
    model_config = _model_config(config)
    heads = NUM_CATEGORIES if config.stage == "stage2" else 0
    model = CLIP(model_config, dtype=jnp.dtype(config.model.dtype),
                 remat_policy=config.model.remat_policy, num_category_heads=heads)
    opt = optimizer.make_optimizer(config, total_steps)
    objective = objectives.Objective(config.stage, model, config.loss, mesh,
                                     sharding.BATCH_AXES, total_steps)

    # ---------------------------------------------------------------- shapes and shardings
    rng = jax.random.key(config.seed)
    boxed = jax.eval_shape(functools.partial(init_params, model), rng)
    params_sharding = sharding.logical_shardings(boxed, mesh)
    abstract_params = nn.unbox(boxed)

    def init_train_state(params: Any) -> dict[str, Any]:
        zero = jnp.zeros((), jnp.int32)
        return dict(opt_state=opt.tx.init(params), step=zero, nonfinite_total=zero,
                    nonfinite_streak=zero)

    abstract_state = jax.eval_shape(init_train_state, abstract_params)
    state_sharding = dict(
        opt_state=sharding.shardings_like_params(abstract_state["opt_state"], params_sharding,
                                                 mesh),
        **{k: sharding.replicated(mesh) for k in ("step", "nonfinite_total",
                                                   "nonfinite_streak")},
    )

    # ---------------------------------------------------------------- input
    train_iter = input_pipeline.make_train_iterator(config.input)

    # ---------------------------------------------------------------- init or resume
    manager = checkpoint.train_manager(os.path.join(workdir, "checkpoints"),
                                       config.checkpoint.keep, config.checkpoint.async_save)
    init_fn = jax.jit(lambda r: nn.unbox(init_params(model, r)),
                      out_shardings=params_sharding)
    resume_step = manager.latest_step()
    if resume_step is not None:
        saved_config = checkpoint.load_model_config(
            os.path.join(workdir, "checkpoints", str(resume_step)))
        if saved_config != model_config:
            raise UserError(f"{workdir} holds a run of a different model ({saved_config}); "
                            "use a new --workdir")
        target = lambda tree, sh: jax.tree.map(  # noqa: E731
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
        step_dir = os.path.join(workdir, "checkpoints", str(resume_step))
        same_layout = checkpoint.saved_process_count(step_dir) == jax.process_count()
        params, state = checkpoint.restore_train(
            manager, resume_step, target(abstract_params, params_sharding),
            target(abstract_state, state_sharding), train_iter if same_layout else None)
        if not same_layout:  # saved by another process count: position the input by step
            train_iter.close()
            train_iter = input_pipeline.make_train_iterator(
                config.input, start_position=resume_step * config.input.batch_size)
            log.warning("input iterator saved by another process count; resuming it at "
                        "example %d of the stream", resume_step * config.input.batch_size)
        log.info("resumed from step %d", resume_step)
    else:
        params = init_fn(rng)
        if config.init_from:
            params = _load_init_params(config.init_from, abstract_params, params_sharding,
                                       params, config.get("init_new_params", ""))
        state = jax.jit(init_train_state, out_shardings=state_sharding)(params)
    step = int(jax.device_get(state["step"]))

    # ---------------------------------------------------------------- update function
    accum = config.grad_accum
    pin_micro_batch = grad_accum.batch_sharding_constraint(mesh, sharding.BATCH_AXES)

    def train_step(params: Any, state: dict[str, Any], batch: dict[str, jax.Array]
                   ) -> tuple[Any, dict[str, Any], dict[str, jax.Array]]:
        inputs = objective.inputs(batch)
        loss_fn = functools.partial(objective.loss, batch=batch, step=state["step"])
        if accum.micro_batches > 1 and accum.mode == "gradcache":
            (loss, m), grads = grad_accum.gradcache_value_and_grad(
                objective.embed, loss_fn, params, inputs, accum.micro_batches, pin_micro_batch)
        elif accum.micro_batches > 1 and accum.mode == "plain":
            (loss, m), grads = grad_accum.plain_accumulation_value_and_grad(
                lambda p, mb: objective.loss(p, objective.embed(p, mb), mb, state["step"]),
                params, batch, accum.micro_batches, pin_micro_batch)
        else:
            (loss, m), grads = jax.value_and_grad(
                lambda p: loss_fn(p, objective.embed(p, inputs)), has_aux=True)(params)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = opt.tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(  # noqa: E731
            lambda n, o: jnp.where(finite, n, o), new, old)
        streak = jnp.where(finite, 0, state["nonfinite_streak"] + 1)
        new_state = dict(
            opt_state=keep(opt_state, state["opt_state"]), step=state["step"] + 1,
            nonfinite_total=state["nonfinite_total"] + (~finite).astype(jnp.int32),
            nonfinite_streak=streak,
        )
        lrs = {f"lr_{k}": v for k, v in opt.learning_rates(state["step"]).items()}
        m = dict(m, grad_norm=grad_norm, nonfinite_streak=streak,
                 nonfinite_total=new_state["nonfinite_total"], **lrs)
        return keep(new_params, params), new_state, m

    batch_keys = None  # fixed on the first batch
    update = jax.jit(
        train_step,
        in_shardings=(params_sharding, state_sharding, batch_sharding),
        out_shardings=(params_sharding, state_sharding, sharding.replicated(mesh)),
        donate_argnums=(0, 1),
    )

    # ---------------------------------------------------------------- evaluators
    from reasonclip_jax.encode import Encoder

    # One encoder for the whole run: its jitted towers compile once, params change per eval.
    encoder = Encoder(params, model_config, config.eval_batch_size, mesh=mesh)

    def evaluate() -> dict[str, float]:
        if not config.evals:
            return {}
        encoder.params = params
        return evaluators.run_evaluators(config.evals, encoder)

    best = {"value": None}

    def maybe_save_best(scalars: dict[str, float]) -> None:
        name, mode = config.checkpoint.best_metric, config.checkpoint.best_mode
        if not name or name not in scalars:
            return
        value = scalars[name]
        if best["value"] is not None and (value <= best["value"] if mode == "max"
                                          else value >= best["value"]):
            return
        best["value"] = value
        path = os.path.join(workdir, "best")
        tmp = f"{path}.tmp-{step}"
        checkpoint.save_model(tmp, params, model_config)
        if is_chief:
            import shutil

            with open(os.path.join(tmp, "best_metric.json"), "w") as f:
                json.dump({"step": step, name: value}, f)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)

    # ---------------------------------------------------------------- loop
    # Steps and evaluators are traced in here: the model's activation constraints apply.
    stack.enter_context(sharding.activation_sharding(mesh))
    writer = metrics.MetricWriter(workdir)
    preemption = Preemption()
    texts = len(objective.text_keys)
    flops_per_step = metrics.train_flops_per_example(
        model_config, config.input.context_length, texts) * config.input.batch_size
    peak = config.get("peak_flops_per_device", 0.0) * jax.device_count()
    history: list[dict[str, Any]] = []
    last: dict[str, float] = {}
    skipped_records = 0
    tick, tick_step = time.perf_counter(), step
    progress = None
    if is_chief:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True)
    profile = config.get("profile", {})
    profile = profile if profile and profile.get("start_step", -1) >= 0 else None
    stop_reason = None
    while step < total_steps:
        if profile and profile.get("start_step", -1) == step:
            jax.profiler.start_trace(os.path.join(workdir, "profile"))
        local = next(train_iter)
        if config.get("log_record_indices"):
            _log_record_indices(workdir, step, local["record_index"])
        skipped_records = int(local.get("skipped_records", 0))
        if batch_keys is None:
            batch_keys = [k for k in local if np.ndim(local[k]) and k != "record_index"]
        batch = input_pipeline.make_global_batch({k: local[k] for k in batch_keys}, mesh,
                                                 sharding.BATCH_AXES)
        params, state, step_metrics = update(params, state, batch)
        step += 1
        history.append(step_metrics)
        if progress is not None:
            progress.update(1)
        if profile and profile.get("start_step", -1) + profile.get("num_steps", 0) == step:
            jax.profiler.stop_trace()

        if step % config.log_every == 0 or step == total_steps:
            scalars = _mean_metrics(history)
            elapsed = time.perf_counter() - tick
            steps_done = step - tick_step
            scalars["step_time_s"] = elapsed / steps_done
            scalars["samples_per_s"] = steps_done * config.input.batch_size / elapsed
            if peak:
                scalars["mfu"] = flops_per_step * steps_done / elapsed / peak
            scalars["skipped_records"] = _sum_over_processes(skipped_records)
            writer.write(step, scalars)
            last = scalars
            history, tick, tick_step = [], time.perf_counter(), step
            if scalars["nonfinite_streak"] >= config.max_nonfinite_streak:
                stop_reason = (f"{int(scalars['nonfinite_streak'])} consecutive steps with a "
                               f"non-finite loss or gradient at step {step}")
        if (config.eval_every and step % config.eval_every == 0) or step == total_steps:
            scalars = evaluate()
            if scalars:
                writer.write(step, scalars)
                last.update(scalars)
                maybe_save_best(scalars)
        preempted = preemption.reached(step)
        if preempted:
            stop_reason = stop_reason or f"preempted (SIGTERM) at step {step}"
        if stop_reason or step == total_steps or step % config.checkpoint.every_steps == 0:
            checkpoint.save_train(manager, step, params, state, model_config, train_iter,
                                  force=True)
        if stop_reason:
            break

    # ---------------------------------------------------------------- finish
    manager.wait_until_finished()
    manager.close()
    if hasattr(train_iter, "close"):
        train_iter.close()
    writer.close()
    if progress is not None:
        progress.close()
    if stop_reason and not stop_reason.startswith("preempted"):
        raise NonFiniteError(f"stopped after saving: {stop_reason}")
    if stop_reason:
        log.warning("%s; checkpoint saved, exiting", stop_reason)
    return last


def _log_record_indices(workdir: str, step: int, indices: np.ndarray) -> None:
    """Which records this process fed at each step (data provenance, multi-host checks)."""
    os.makedirs(os.path.join(workdir, "record_indices"), exist_ok=True)
    path = os.path.join(workdir, "record_indices", f"process_{jax.process_index()}.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps({"step": step + 1, "record_index": indices.tolist()}) + "\n")


def _sum_over_processes(value: int) -> float:
    if jax.process_count() == 1:
        return float(value)
    from jax.experimental import multihost_utils

    return float(np.sum(multihost_utils.process_allgather(np.asarray(value))))


@exit_on_user_error
def main(argv: Any) -> None:
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if _CONFIG.value is None or not _WORKDIR.value:
        raise UserError("give --config configs/FILE.py and --workdir DIR")
    try:
        train(_CONFIG.value, _WORKDIR.value)
    except NonFiniteError as e:
        raise UserError(str(e)) from None


if __name__ == "__main__":
    app.run(main)
