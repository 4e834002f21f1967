"""DTensor params (FSDP2, tensor parallelism): the fused kernels step their local shards.

Note [DTensor params]
Under FSDP2 (``fully_shard``) and tensor parallelism, params are DTensors. A group's params
must be all DTensors on one device mesh, or all plain tensors: the plan then holds the local
shards (``_local_tensor``) of params, grads and state, and the fused kernels update those; state
tensors are created with ``zeros_like(param)``, so they are DTensors sharded like their params
and ``state_dict()`` / torch.distributed.checkpoint see DTensors, as with torch.optim (the
absmax of 8-bit states, not param-shaped: one row per shard, Note [per-shard state]). Anything
needing a norm over all params (``max_grad_norm``, LAMB's trust ratios) all-reduces its sums of
squares over the mesh dims the params are sharded on.

Note [per-shard state]
State that is per local shard but not shaped like it (the absmax of 8-bit states: one per block
of the shard's elements) is a DTensor of one row per shard: global shape (shards, width), the
shards counted over the mesh dims the param is sharded on (``Shard(0)`` on each of them,
``Replicate`` on the others, so replicas share a row as they share a shard), and ``width`` the
value for the largest shard (the first one: torch shards a dim in chunks of the ceiling of its
size over the mesh dim's size); a smaller shard uses the front of its row. DCP saves and reshards
it as any DTensor, and a checkpoint from a mesh with another number of shards, or another
largest shard, fails DCP's load with a size mismatch naming the state key.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import Tensor

#: (mesh, the mesh dims a bucket's params are sharded over); None for plain tensors.
MeshDims = tuple[Any, tuple[int, ...]]


def dtensor_type() -> type | None:
    """DTensor, if torch.distributed.tensor was imported (else no param can be one)."""
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None) if mod is not None else None


def local(t: Tensor) -> Tensor:
    return t._local_tensor  # type: ignore[attr-defined]


def group_mesh(params: list[Tensor], where: str) -> Any:
    """The group's device mesh, or None for plain tensors; raises ValueError for a mixed group,
    before anything changes (Note [DTensor params])."""
    dtensor = dtensor_type()
    if dtensor is None:
        return None
    meshes = [p.device_mesh if isinstance(p, dtensor) else None for p in params]
    if all(m is None for m in meshes):
        return None
    if any(m is None for m in meshes):
        i = meshes.index(None)
        j = next(k for k, m in enumerate(meshes) if m is not None)
        raise ValueError(
            f"{where}: a param group mixes DTensor params (e.g. param {j}) with plain tensors "
            f"(e.g. param {i}); put the DTensors (FSDP2/tensor-parallel params) and the plain "
            "tensors in separate optimizers, or make all of them DTensors"
        )
    first = meshes[0]
    for k, m in enumerate(meshes):
        if m != first:
            raise ValueError(
                f"{where}: param group has DTensor params on different device meshes "
                f"(param 0 on {first}, param {k} on {m}); use one param group per mesh"
            )
    return first


def shard_dims(p: Tensor, g: Tensor, i: int, where: str) -> tuple[int, ...]:
    """The mesh dims DTensor param ``i`` is sharded over; its grad must be placed like it."""
    if getattr(g, "placements", None) != p.placements:
        raise RuntimeError(
            f"{where}: the grad of DTensor param {i} has "
            f"placements {getattr(g, 'placements', 'none (a plain tensor)')}, but "
            f"the param has {p.placements}; fusedopt steps local shards and needs "
            "them to match (FSDP2 reduce-scatters grads to the params' placements)"
        )
    return tuple(d for d, pl in enumerate(p.placements) if not pl.is_replicate())


def check_sharded_like(t: Tensor, p: Tensor, i: int, k: str, where: str) -> None:
    if getattr(t, "placements", None) != p.placements:
        raise RuntimeError(
            f"{where}: state {k!r} of DTensor parameter {i} "
            f"is not a DTensor sharded like it (placements {p.placements}); load "
            "sharded optimizer state with torch.distributed.checkpoint or "
            "torch.distributed.checkpoint.state_dict.set_optimizer_state_dict"
        )


def largest_shard_numel(p: Tensor) -> int:
    """The elements of DTensor p's largest (first) local shard (Note [per-shard state])."""
    shape = list(p.shape)
    for m, pl in enumerate(p.placements):
        if pl.is_shard():
            shape[pl.dim] = -(-shape[pl.dim] // p.device_mesh.size(m))
    return math.prod(shape)


def row_layout(p: Tensor, width: int) -> tuple[tuple[int, int], tuple[Any, ...]]:
    """(global shape, placements) of a per-shard state of DTensor p, ``width`` values a row
    (Note [per-shard state])."""
    from torch.distributed.tensor import Replicate, Shard

    placements = tuple(Shard(0) if pl.is_shard() else Replicate() for pl in p.placements)
    shards = math.prod(p.device_mesh.size(m) for m, pl in enumerate(p.placements) if pl.is_shard())
    return (shards, width), placements


def row_zeros(p: Tensor, width: int, dtype: torch.dtype) -> Tensor:
    """A zero per-shard state of DTensor p (Note [per-shard state])."""
    from torch.distributed.tensor import DTensor

    row = torch.zeros((1, width), dtype=dtype, device=local(p).device)
    return DTensor.from_local(row, p.device_mesh, row_layout(p, width)[1], run_check=False)


def like_param(t: Tensor, p: Tensor) -> Tensor:
    """Local shard ``t`` of a state shaped like DTensor p, as a DTensor sharded like it."""
    from torch.distributed.tensor import DTensor

    t = t.view(local(p).shape)
    return DTensor.from_local(
        t, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
    )


def all_reduce(t: Tensor, mesh_dims: MeshDims) -> None:
    """Sums a shard's ``t`` over the ranks holding the other shards."""
    mesh, dims = mesh_dims
    for d in dims:
        torch.distributed.all_reduce(t, group=mesh.get_group(d))


def broadcast(t: Tensor, mesh: Any) -> None:
    """Every rank of the mesh takes the first rank's ``t`` (shards and replicas alike)."""
    for d in range(mesh.ndim):
        group = mesh.get_group(d)
        torch.distributed.broadcast(t, src=torch.distributed.get_global_rank(group, 0), group=group)
