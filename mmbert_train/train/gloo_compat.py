"""Let DTensor's ``Partial("avg")`` reductions run on gloo (FSDP2 on CPU).

Under FSDP2 the parameters and gradients are DTensors. StableAdamW's update clipping takes a per-tensor RMS
(``mean`` over a sharded tensor), which DTensor resolves as a ``Partial("avg")`` all-reduce. NCCL has an AVG
reduction; gloo does not ("Cannot use ReduceOp.AVG with Gloo"), so on CPU the first optimizer step fails.
The average over ``n`` ranks equals the SUM reduction divided by ``n``, which is what this patch does, and only
for process groups whose backend is gloo: NCCL keeps its native AVG, and nothing changes outside FSDP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

_PATCHED = False


def _is_gloo(mesh, mesh_dim: int) -> bool:
    return dist.get_backend(mesh.get_group(mesh_dim)) == "gloo"


def enable_avg_reductions_on_gloo() -> None:
    """Patch ``Partial`` so that ``avg`` becomes ``sum / group size`` on gloo groups (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from torch.distributed.tensor.placement_types import Partial

    reduce_value = Partial._reduce_value
    reduce_shard_value = Partial._reduce_shard_value

    def _reduce_value(self, tensor: torch.Tensor, mesh, mesh_dim: int) -> torch.Tensor:
        if self.reduce_op == "avg" and _is_gloo(mesh, mesh_dim):
            return reduce_value(Partial("sum"), tensor, mesh, mesh_dim) / mesh.size(mesh_dim)
        return reduce_value(self, tensor, mesh, mesh_dim)

    def _reduce_shard_value(self, tensor: torch.Tensor, mesh, mesh_dim: int, shard_spec) -> torch.Tensor:
        if self.reduce_op == "avg" and _is_gloo(mesh, mesh_dim):
            return reduce_shard_value(Partial("sum"), tensor, mesh, mesh_dim, shard_spec) / mesh.size(
                mesh_dim
            )
        return reduce_shard_value(self, tensor, mesh, mesh_dim, shard_spec)

    Partial._reduce_value = _reduce_value
    Partial._reduce_shard_value = _reduce_shard_value
    _PATCHED = True
