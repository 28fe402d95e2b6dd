"""The memory planner's command line: compiled and analytic memory of the update step.

    python -m reasonclip_jax.plan --config configs/stage1.py:backbone=L-14-336 \
        --topology v5p:4x4x4 --batch-sizes 16384,32768,65536
    python -m reasonclip_jax.plan --config configs/stage1.py:backbone=L-14-336 \
        --topology v5e:16x16 --slices 2 --batch-sizes 65536     (two slices over DCN)
    python -m reasonclip_jax.plan --config configs/sweeps/tiny.py:/tmp/scenes --sweep
    python -m reasonclip_jax.plan --config configs/stage1.py:backbone=B-32 \
        --device-memory 80GiB --devices 64                 (GPUs: the analytic model only)
    reasonclip-plan ...    (the same, once the package is installed)

Target: `--topology` (a TPU slice, compiled through libtpu without TPU hardware; its HBM
from a table, or `--device-memory`; `--slices N`: N such slices joined by DCN, the data
axis split over them as `mesh.dcn.data` says, or over all of them where the config leaves
it at 1), else this machine's devices (8 simulated CPU devices with
XLA_FLAGS=--xla_force_host_platform_device_count=8) with `--device-memory`, or, with
`--devices N`, N devices nothing is compiled for. For each global batch it prints the fewest
GradCache micro-batches that fit, XLA's peak bytes per device (arguments + outputs -
aliased + temporaries; on TPUs the compiler's own peak) and the analytic breakdown; then
the largest global batch that fits without micro-batches. `--sweep` takes a sweep config and
plans its batch sizes on its base; `--nocompile` keeps to the analytic model (a pod's
topology takes minutes per compile here).
"""

from __future__ import annotations

from typing import Any

from absl import flags
from ml_collections import config_flags

from reasonclip_jax.errors import UserError, exit_on_user_error
from reasonclip_jax.scaling import compiled_memory, plan
from reasonclip_jax.tools import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Trainer (or, --sweep, sweep) config.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:4x4, v5p:2x2x2.")
_MEMORY = flags.DEFINE_string("device-memory", None, "Memory per device, e.g. 16GiB, 80GB.")
_DEVICES = flags.DEFINE_integer("devices", None, "Devices of a target nothing is compiled for.")
_SLICES = flags.DEFINE_integer("slices", 1, "--topology: this many slices joined by DCN "
                               "(multi-slice: the data axis spans them, mesh.dcn.data).",
                               lower_bound=1)
_BATCHES = flags.DEFINE_string("batch-sizes", None, "Global batches, e.g. 4096,8192.")
_SWEEP = flags.DEFINE_bool("sweep", False, "--config is a sweep config: plan its batch sizes.")
_LARGEST = flags.DEFINE_bool("largest", True, "Search the largest batch without micro-batches.")
_COMPILE = flags.DEFINE_bool("compile", True, "Compile for the target (--nocompile: the "
                             "analytic model only, seconds instead of minutes per batch).")

GiB = 2**30


def make_target() -> compiled_memory.Target:
    target = _devices_and_memory()
    if not _COMPILE.value:
        return compiled_memory.Target(target.name, (), target.device_memory, target.platform,
                                      target.num_devices, target.num_slices)
    return target


def _devices_and_memory() -> compiled_memory.Target:
    memory = plan.parse_bytes(_MEMORY.value) if _MEMORY.value else None
    if _TOPOLOGY.value:
        if _DEVICES.value:
            raise UserError("--topology sets the devices; drop --devices")
        target = compiled_memory.tpu_target(_TOPOLOGY.value, _SLICES.value)
        return target if memory is None else compiled_memory.Target(
            target.name, target.devices, memory, target.platform, target.num_devices,
            target.num_slices)
    if _SLICES.value != 1:
        raise UserError("--slices N describes TPU slices: give --topology too")
    if _DEVICES.value:
        if memory is None:
            raise UserError("--devices N needs --device-memory (e.g. 80GiB)")
        return compiled_memory.analytic_target(_DEVICES.value, memory)
    return compiled_memory.local_target(memory)


def _gib(x: float | None) -> str:
    return "" if x is None else f"{x / GiB:.2f}"


def table(plans: list[plan.Plan]) -> str:
    """Markdown: one line per global batch."""
    header = ("| global batch | micro-batches | fits | compiled peak GiB | analytic GiB | "
              "analytic / compiled | params + opt state | inputs | gradients | activations | "
              "recompute | loss | update |")
    lines = [header, "|" + "|".join(["---:"] * (header.count("|") - 1)) + "|"]
    for p in plans:
        e = p.estimate
        compiled = p.compiled.peak_bytes if p.compiled else None
        ratio = f"{e.peak / compiled:.3f}" if compiled else ""
        shown = _gib(compiled)
        if p.compiled and p.compiled.out_of_memory:  # refused by XLA: its temporaries alone
            shown, ratio = f"> {shown} (out of HBM)", ""
        fits = "" if p.fits is None else ("yes" if p.fits else "no")
        lines.append(
            f"| {p.batch_size:,} | {p.micro_batches} | {fits} | {shown} | "
            f"{_gib(e.peak)} | {ratio} | {_gib(e.params + e.optimizer_state)} | "
            f"{_gib(e.inputs)} | {_gib(e.gradients)} | {_gib(e.activations)} | "
            f"{_gib(e.recomputation)} | {_gib(e.loss)} | {_gib(e.update)} |")
    return "\n".join(lines)


@exit_on_user_error
def main(argv: Any) -> None:
    del argv
    if _CONFIG.value is None:
        raise UserError("give --config configs/FILE.py (a trainer config, or a sweep config "
                        "with --sweep)")
    config, batches = _CONFIG.value, None
    if _SWEEP.value:
        batches = sorted(set(config.batch_sizes))
        config = config.base
    if _BATCHES.value:
        try:
            batches = [int(b) for b in _BATCHES.value.split(",")]
        except ValueError:
            raise UserError(f"--batch-sizes {_BATCHES.value}: give integers, e.g. "
                            "4096,8192") from None
    batches = batches or [config.input.batch_size]
    target = make_target()
    if target.num_slices > 1 and int(config.mesh.dcn.data) == 1:
        config.mesh.dcn.data = -1  # the data axis spans the slices (the multi-slice mesh)
    memory = "unknown memory" if target.device_memory is None else \
        f"{target.device_memory / GiB:.1f} GiB each"
    print(f"target: {target.name} ({target.num_devices} devices, {memory}); "
          f"model {config.model.preset}, {config.stage}, loss {config.loss.kind}/"
          f"{config.loss.impl}, remat {config.model.remat_policy}, mesh {config.mesh.to_dict()}")
    plans = [plan.fewest_micro_batches(config, target, b)[1] for b in batches]
    print(table(plans))
    if _LARGEST.value and target.device_memory is not None:
        largest = plan.largest_batch(config, target)
        print("largest global batch without micro-batches: "
              + (f"{largest.batch_size:,}" if largest else "none (one example per device "
                                                          "does not fit)"))


def run() -> None:
    """`python -m reasonclip_jax.plan ...`, and the `reasonclip-plan` command."""
    cli.run_absl_main(main)


if __name__ == "__main__":
    run()
