"""The trainer: one `train()` that reads top to bottom in banner-separated steps.

    python -m reasonclip_jax.train --config configs/demo.py --workdir /tmp/demo \
        [--config.total_steps=200 --config.mesh.fsdp=2 ...]      (tools/train.py)

A run restarted in the same workdir resumes from its latest complete checkpoint (params,
optimizer state, step, input iterator). SIGTERM saves and exits cleanly. Steps whose loss or
gradient is not finite are skipped and counted; `max_nonfinite_streak` in a row stop the run.
Every resource (input workers, checkpoint manager, metric writer, progress bar, profiler) is
on one `ExitStack`, so an exception closes them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.experimental.compilation_cache import compilation_cache
from tqdm import tqdm

from reasonclip_jax import evaluators, paths
from reasonclip_jax.data import pipeline
from reasonclip_jax.errors import UserError
from reasonclip_jax.evaluators.encoder import Encoder
from reasonclip_jax.models import flops
from reasonclip_jax.models.clip import CLIP, ModelConfig, get_preset, init_params
from reasonclip_jax.parallel import distributed, grad_accum, sharding
from reasonclip_jax.train import checkpoint, metrics, mfu, optimizer, stages, validation

log = logging.getLogger("reasonclip_jax.train")

# optax.apply_if_finite applies an update after this many non-finite ones in a row; the
# trainer stops the run itself (max_nonfinite_streak), so it must never do so.
_NEVER = 2**31 - 1

# The persistent compilation cache keeps programs that took at least this long to compile
# (the steps, the towers); quicker ones cost less to recompile than to read back.
_CACHE_MIN_COMPILE_TIME_S = 1.0
_CACHE_MIN_ENTRY_BYTES = 0  # no size floor: the compile time decides


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps."""


# --------------------------------------------------------------------------- the update


def train_step(params: Any, state: dict[str, Any], batch: dict[str, jax.Array], *,
               objective: stages.Objective, opt: optimizer.Optimizer,
               tx: optax.GradientTransformationExtraArgs,
               accum: ml_collections.ConfigDict, pin_micro_batch: Any,
               ) -> tuple[Any, dict[str, Any], dict[str, jax.Array]]:
    """One optimizer step on the global batch; a non-finite step leaves params and moments."""
    step = state["step"]
    loss_fn = functools.partial(objective.loss, batch=batch, step=step)
    if accum.micro_batches > 1 and accum.mode == "gradcache":
        (loss, m), grads = grad_accum.gradcache_value_and_grad(
            objective.embed, loss_fn, params, objective.inputs(batch), accum.micro_batches,
            pin_micro_batch)
    elif accum.micro_batches > 1:
        (loss, m), grads = grad_accum.plain_accumulation_value_and_grad(
            lambda p, mb: objective.loss(p, objective.embed(p, mb), mb, step),
            params, batch, accum.micro_batches, pin_micro_batch)
    else:
        (loss, m), grads = jax.value_and_grad(
            lambda p: loss_fn(p, objective.embed(p, objective.inputs(batch))), has_aux=True
        )(params)
    grad_norm = optax.global_norm(grads)
    # apply_if_finite looks at the gradient only: a non-finite loss makes it non-finite too.
    grads = jax.tree.map(lambda g: g + (0 * loss).astype(g.dtype), grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    m = dict(m, grad_norm=grad_norm, nonfinite_streak=opt_state.notfinite_count,
             nonfinite_total=opt_state.total_notfinite,
             **{f"lr_{k}": v for k, v in opt.learning_rates(step).items()})
    if opt.l2_init_beta:
        m["l2_init_penalty"] = opt.l2_init_penalty(params, opt_state.inner_state)
    return optax.apply_updates(params, updates), dict(opt_state=opt_state, step=step + 1), m


# --------------------------------------------------------------------------- the program


@dataclasses.dataclass(frozen=True)
class Program:
    """A config's model, objective and optimizer on a mesh, and the jitted update function
    with its shardings and donation: what the trainer runs and `plan` compiles."""

    model_config: ModelConfig
    model: CLIP
    objective: stages.Objective
    opt: optimizer.Optimizer
    init_state: Callable[[Any], dict[str, Any]]
    params_shape: Any  # unboxed jax.ShapeDtypeStructs
    state_shape: Any
    params_sharding: Any
    state_sharding: Any
    update: Any  # jit(train_step): (params, state, batch) -> (params, state, metrics)

    def abstract_params(self) -> Any:
        return sharding.abstract_arrays(self.params_shape, self.params_sharding)

    def abstract_state(self) -> Any:
        return sharding.abstract_arrays(self.state_shape, self.state_sharding)


def build_program(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Program:
    """The model, stage objective, optimizer, shardings and update function of `config`."""
    stage = stages.get_stage(config.stage)
    model_config = model_config_of(config)
    check_input_fits_model(config.input, model_config)
    model = CLIP(model_config, dtype=jnp.dtype(config.model.dtype),
                 remat_policy=config.model.remat_policy, num_category_heads=stage.category_heads,
                 attention_impl=config.model.attention_impl,
                 scan_unroll=config.model.get("scan_unroll", 1))
    objective = stages.Objective(stage, model, config.loss, mesh, sharding.BATCH_AXES,
                                 config.total_steps, config.input.text_fields)
    if config.grad_accum.mode not in ("gradcache", "plain"):
        raise UserError(f"grad_accum.mode '{config.grad_accum.mode}': use 'gradcache' "
                        "(every negative kept) or 'plain'")
    opt = optimizer.make_optimizer(config, config.total_steps)
    tx = optax.apply_if_finite(opt.tx, max_consecutive_errors=_NEVER)

    boxed = jax.eval_shape(functools.partial(init_params, model), jax.random.key(config.seed))
    params_sharding = sharding.logical_shardings(boxed, mesh)
    params_shape = nn.unbox(boxed)
    init_state = lambda p: dict(opt_state=tx.init(p), step=jnp.zeros((), jnp.int32))  # noqa: E731
    state_shape = jax.eval_shape(init_state, params_shape)
    state_sharding = sharding.shardings_like_params(state_shape, params_sharding, mesh)

    update = jax.jit(
        functools.partial(
            train_step, objective=objective, opt=opt, tx=tx, accum=config.grad_accum,
            pin_micro_batch=grad_accum.batch_sharding_constraint(mesh, sharding.BATCH_AXES)),
        in_shardings=(params_sharding, state_sharding, sharding.batch_sharding(mesh)),
        out_shardings=(params_sharding, state_sharding, sharding.replicated(mesh)),
        donate_argnums=(0, 1),
    )
    return Program(model_config, model, objective, opt, init_state, params_shape, state_shape,
                   params_sharding, state_sharding, update)


# --------------------------------------------------------------------------- helpers


def model_config_of(config: ml_collections.ConfigDict) -> ModelConfig:
    """The architecture: the named preset with `model.overrides`. With `init_from`, its
    weights must be of that architecture (an empty preset takes the checkpoint's)."""
    overrides = dict(config.model.overrides)
    if not config.init_from:
        return get_preset(config.model.preset, **overrides)
    saved = checkpoint.load_model_config(config.init_from)
    if not config.model.preset:
        return dataclasses.replace(saved, **overrides)
    wanted = get_preset(config.model.preset, **overrides)
    if architecture(saved) != architecture(wanted):
        raise UserError(
            f"init_from {config.init_from} is a different architecture ({describe(saved)}) "
            f"from model.preset '{config.model.preset}' ({describe(wanted)}); set "
            "model.preset (or '' to take the checkpoint's) and model.overrides to match")
    return saved


def architecture(c: ModelConfig) -> dict[str, Any]:
    """What decides the parameters and the function (not the initial logit scale)."""
    return {k: v for k, v in c.to_dict().items() if k != "logit_scale_init"}


def describe(c: ModelConfig) -> str:
    return (f"image {c.image_size}px /{c.patch_size} {c.vision_layers}x{c.vision_width}, "
            f"text {c.context_length} tokens {c.text_layers}x{c.text_width}, "
            f"embed {c.embed_dim}, {c.act}")


def check_input_fits_model(input_cfg: ml_collections.ConfigDict, model: ModelConfig) -> None:
    """Images and texts the pipeline makes must be the size the model takes."""
    if input_cfg.image_size != model.image_size:
        raise UserError(f"input.image_size {input_cfg.image_size} does not match the model's "
                        f"image_size {model.image_size}; set both alike")
    if input_cfg.context_length > model.context_length:
        raise UserError(f"input.context_length {input_cfg.context_length} exceeds the model's "
                        f"context_length {model.context_length}")
    if input_cfg.get("tokenizer", "clip") != model.tokenizer:
        raise UserError(f"input.tokenizer '{input_cfg.get('tokenizer', 'clip')}' is not the "
                        f"model's ('{model.tokenizer}'); set input.tokenizer to match")


def load_init_params(path: str, abstract: Any, shardings: Any, fresh: Any, new_regex: str
                     ) -> Any:
    """Pretrained params into the model's shardings; params matching `new_regex` (heads a
    stage adds) keep their fresh initialisation. Any other difference is an error."""
    loaded = traverse_util.flatten_dict(checkpoint.load_model(path)[0], sep="/")
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
    """SIGTERM, seen by every process at the same step.

    Several processes: orbax's `reached_preemption` (JAX's preemption sync point). One
    process: JAX's preemption service is not running, so a SIGTERM handler sets a flag.
    """

    def __init__(self, manager: Any) -> None:
        self.manager, self.requested = manager, False
        if jax.process_count() == 1:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        del signum, frame
        self.requested = True

    def reached(self, step: int) -> bool:
        if jax.process_count() > 1:
            return self.manager.reached_preemption(step)
        return self.requested


@contextlib.contextmanager
def persistent_compilation_cache(directory: str) -> Iterator[None]:
    """Compiled programs are written to `directory` (created, `~` expanded) and read back by
    later runs, so a restart, a resumed job or the next stage skips compiling its steps.
    Keep it on a local disk, not on the workdir's bucket. "": JAX's settings unchanged.
    JAX's previous settings come back on exit."""
    if not directory:
        yield
        return
    path = os.path.expanduser(directory)
    os.makedirs(path, exist_ok=True)
    settings = {
        "jax_compilation_cache_dir": path,
        "jax_persistent_cache_min_compile_time_secs": _CACHE_MIN_COMPILE_TIME_S,
        "jax_persistent_cache_min_entry_size_bytes": _CACHE_MIN_ENTRY_BYTES,
    }
    before = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()  # a cache opened earlier keeps its directory otherwise
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()


class ProfileWindow:
    """A JAX profiler trace of steps [start_step, start_step + num_steps), if enabled."""

    def __init__(self, cfg: ml_collections.ConfigDict, directory: str) -> None:
        self.start, self.stop, self.directory = (
            cfg.start_step, cfg.start_step + cfg.num_steps, directory)
        self.active = False

    def before_step(self, step: int) -> None:
        if self.start >= 0 and step == self.start:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after_step(self, step: int) -> None:
        if self.active and step == self.stop:
            self.close()

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def eval_line(step: int, scalars: dict[str, float]) -> str:
    """One line per evaluation for the console: the headline metrics of each evaluator."""
    shown = [f"{k}={v:.4f}" for k, v in scalars.items()
             if k.endswith(("/accuracy", "/loss", "_r1", "/top1"))]
    return f"step {step}: " + ("  ".join(shown) or f"{len(scalars)} metrics")


def mean_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """The mean of each step metric over the logging window (one host transfer)."""
    host = jax.device_get(history)
    out = {k: float(np.mean([h[k] for h in host])) for k in host[0]}
    out["nonfinite_streak"] = float(max(h["nonfinite_streak"] for h in host))
    return out


class RecordIndexLog:
    """Which records this process fed at each step (data provenance, multi-host checks):
    `WORKDIR/record_indices/process_I.jsonl`, written out when `flush`ed (with the metrics)."""

    def __init__(self, workdir: str) -> None:
        directory = paths.join(workdir, "record_indices")
        paths.makedirs(directory)
        self.file = paths.AppendFile(paths.join(directory,
                                                f"process_{jax.process_index()}.jsonl"))

    def write(self, step: int, indices: np.ndarray) -> None:
        line = json.dumps({"step": step, "record_index": indices.tolist()}) + "\n"
        self.file.write(line.encode())

    def flush(self) -> None:
        self.file.flush()


def sum_over_processes(value: int) -> float:
    if jax.process_count() == 1:
        return float(value)
    return float(np.sum(multihost_utils.process_allgather(np.asarray(value))))


# --------------------------------------------------------------------------- main


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Runs (or resumes) training; returns the last logged metrics."""
    with contextlib.ExitStack() as stack:
        # ------------------------------------------------------------ setup
        distributed.initialize(auto=config.distributed)
        jax.config.update("jax_threefry_partitionable", True)
        stack.enter_context(persistent_compilation_cache(config.compilation_cache_dir))
        workdir = paths.absolute(workdir)  # a local directory, or a bucket's gs://...
        paths.makedirs(workdir)
        is_chief = jax.process_index() == 0
        log.info("process %d/%d, %d devices", jax.process_index(), jax.process_count(),
                 jax.device_count())
        evaluators.check_configs(config.evals)  # a bad eval fails now, not after training
        if is_chief:  # provenance: what produced this workdir (exports record it)
            paths.write_text(paths.join(workdir, "config.json"),
                             config.to_json_best_effort(indent=1) + "\n")

        # ------------------------------------------------------------ mesh
        devices = jax.devices()
        if config.num_devices > 0:  # a subset, e.g. to compare against one device
            if config.num_devices > len(devices):
                raise UserError(f"num_devices={config.num_devices} but only {len(devices)} "
                                "exist")
            devices = devices[: config.num_devices]
        mesh = sharding.make_mesh(config.mesh, devices)
        sharding.batch_size_per_shard(mesh, config.input.batch_size)
        device_kind = mesh.devices.flat[0].device_kind
        peak_per_device = mfu.peak_flops_per_device(device_kind, config.peak_flops_per_device)
        if peak_per_device is None and mesh.devices.flat[0].platform != "cpu":
            log.info("no MFU: device kind '%s' is not in train/mfu.py's table; set "
                     "peak_flops_per_device to its peak FLOP/s", device_kind)
        total_steps = config.total_steps

        # ------------------------------------------------------------ model and update function
        # Model, stage objective, optimizer, shardings and the jitted update (what `plan`
        # compiles ahead of time for a target chip: `build_program`).
        program = build_program(config, mesh)
        model_config, model, objective, opt = (program.model_config, program.model,
                                               program.objective, program.opt)
        params_sharding, state_sharding = program.params_sharding, program.state_sharding
        rng = jax.random.key(config.seed)

        # ------------------------------------------------------------ checkpoints and input
        ckpt_dir = paths.join(workdir, "checkpoints")
        manager = stack.enter_context(checkpoint.train_manager(
            ckpt_dir, config.checkpoint.keep, config.checkpoint.async_save))
        resume_step = manager.latest_step()
        same_layout = resume_step is None or checkpoint.saved_process_count(
            paths.join(ckpt_dir, str(resume_step))) == jax.process_count()
        # A run saved by another process count resumes its input at the step's position.
        start = 0 if same_layout else resume_step * config.input.batch_size
        train_iter = pipeline.make_train_iterator(config.input, objective.view,
                                                  start_position=start)
        stack.callback(train_iter.close)

        # ------------------------------------------------------------ init or resume
        if resume_step is not None:
            saved = checkpoint.load_model_config(paths.join(ckpt_dir, str(resume_step)))
            if saved != model_config:
                raise UserError(f"{workdir} holds a run of a different model ({saved}); "
                                "use a new --workdir")
            params, state = checkpoint.restore_train(
                manager, resume_step, program.abstract_params(), program.abstract_state(),
                train_iter if same_layout else None)
            if not same_layout:
                log.warning("input iterator saved by another process count; resuming it at "
                            "example %d of the stream", start)
            log.info("resumed from step %d", resume_step)
        else:
            params = jax.jit(lambda r: nn.unbox(init_params(model, r)),
                             out_shardings=params_sharding)(rng)
            if config.init_from:
                params = load_init_params(config.init_from, program.params_shape,
                                          params_sharding, params, config.init_new_params)
            state = jax.jit(program.init_state, out_shardings=state_sharding)(params)
        step = int(jax.device_get(state["step"]))

        # ------------------------------------------------------------ evaluators
        # One encoder for the whole run: its towers compile once, params change per eval.
        encoder = Encoder(params, model_config, config.eval_batch_size, mesh=mesh,
                          tokenizer_dir=config.input.get("tokenizer_dir") or None)
        held_out = (validation.ValidationLoss(config, objective, opt, mesh, params_sharding,
                                              state_sharding)
                    if config.validation.batch_size else None)
        best = checkpoint.BestCheckpoint(paths.join(workdir, "best"),
                                         config.checkpoint.best_metric,
                                         config.checkpoint.best_mode)

        # ------------------------------------------------------------ loop
        # Steps and evaluators are traced in here: the model's activation constraints apply.
        stack.enter_context(sharding.activation_sharding(mesh))
        writer = metrics.MetricWriter(workdir)
        stack.callback(writer.close)
        progress = stack.enter_context(tqdm(total=total_steps, initial=step, desc="train",
                                            dynamic_ncols=True, disable=not is_chief))
        profile = ProfileWindow(config.profile, paths.join(workdir, "profile"))
        stack.callback(profile.close)
        preemption = Preemption(manager)
        record_indices = RecordIndexLog(workdir) if config.log_record_indices else None
        if record_indices:
            stack.callback(record_indices.flush)
        flops_per_step = config.input.batch_size * flops.train_flops_per_example(
            model_config, config.input.context_length, len(objective.text_keys))
        batch_keys = ("image", *objective.text_keys, *objective.view.label_zeros())
        history, last, stop_reason = [], {}, None
        tick, tick_step = time.perf_counter(), step
        while step < total_steps and stop_reason is None:
            profile.before_step(step)
            local = next(train_iter)
            params, state, step_metrics = program.update(params, state, pipeline.make_global_batch(
                {k: local[k] for k in batch_keys}, mesh, sharding.BATCH_AXES))
            step += 1
            history.append(step_metrics)
            progress.update(1)
            profile.after_step(step)
            if record_indices:
                record_indices.write(step, local["record_index"])

            if step % config.log_every == 0 or step == total_steps:
                # Steps are dispatched asynchronously: wait for the last one before timing.
                jax.block_until_ready(step_metrics)
                elapsed, steps_done = time.perf_counter() - tick, step - tick_step
                last = dict(mean_metrics(history), step_time_s=elapsed / steps_done,
                            samples_per_s=steps_done * config.input.batch_size / elapsed,
                            skipped_records=sum_over_processes(int(local["skipped_records"])))
                if peak_per_device:
                    last["mfu"] = mfu.model_flops_utilization(
                        flops_per_step, steps_done, elapsed, peak_per_device, mesh.devices.size)
                writer.write(step, last)
                if "loss" in last:  # the bar shows the current loss
                    progress.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
                if record_indices:
                    record_indices.flush()
                history, tick, tick_step = [], time.perf_counter(), step
                if last["nonfinite_streak"] >= config.max_nonfinite_streak:
                    stop_reason = (f"{int(last['nonfinite_streak'])} consecutive steps with a "
                                   f"non-finite loss or gradient at step {step}")
            if (config.evals or held_out) and (
                    (config.eval_every and step % config.eval_every == 0) or step == total_steps):
                encoder.params = params
                scalars = evaluators.run_evaluators(config.evals, encoder)
                if held_out:
                    scalars.update(held_out(params, state["opt_state"], step))
                writer.write(step, scalars)
                if is_chief:
                    progress.write(eval_line(step, scalars))
                last.update(scalars)
                best.update(step, scalars, params, model_config)
            if preemption.reached(step):
                stop_reason = stop_reason or f"preempted (SIGTERM) at step {step}"
            if stop_reason or step == total_steps or step % config.checkpoint.every_steps == 0:
                checkpoint.save_train(manager, step, params, state, model_config, train_iter,
                                      force=True)

        # ------------------------------------------------------------ finish
        manager.wait_until_finished()
    if stop_reason and not stop_reason.startswith("preempted"):
        raise NonFiniteError(f"stopped after saving: {stop_reason}")
    if stop_reason:
        log.warning("%s; checkpoint saved, exiting", stop_reason)
    return last
