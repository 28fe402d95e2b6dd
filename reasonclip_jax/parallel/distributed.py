"""Joining a multi-process JAX job (TPU pod, GPU cluster, or local processes).

`initialize()` is called first thing by every entry point that computes:
- `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` set (our local launcher,
  or any plain per-node launch): an explicit `jax.distributed.initialize(...)`;
  on CPU the collectives go through gloo.
- `REASONCLIP_DISTRIBUTED=auto` (or `--config.distributed=True` in the trainer): JAX's own
  cluster detection (TPU pod slices, SLURM, Open MPI, ...).
- otherwise: a single process, nothing to do.

    python -m reasonclip_jax.launch --processes 2 --devices-per-process 4 -- \
        python -m reasonclip_jax.train --config configs/demo.py --workdir /tmp/w
"""

from __future__ import annotations

import os

import jax


def initialize(auto: bool = False) -> None:
    if jax.distributed.is_initialized():
        return
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif auto or os.environ.get("REASONCLIP_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
