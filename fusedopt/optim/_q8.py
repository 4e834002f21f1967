"""8-bit blockwise optimizer states: the option, the plans' per-param op, checkpoints, accounting.

Note [8-bit optimizer states]
``state_dtype="int8_blockwise"`` (AdamW, Adam, Lion, SGD with momentum) keeps each moment of a
param of ``min_8bit_size`` (default 4,096) elements or more, of dtype float32, bfloat16 or
float16, in 8 bits (Note [8-bit states] in fusedopt/reference/quant.py); smaller params keep
fp32 moments, as bitsandbytes does. The plans put the two kinds in separate buckets, each
updated by its own registry op (``adam8bit_`` / ``adam_``, ``lion8bit_`` / ``lion_``,
``sgd8bit_`` / ``sgd_``: ``Bucket.op``, ``_param_op``). AMSGrad has no 8-bit variant
(ValueError); SGD without momentum has no state to quantize.

State of an 8-bit param, in torch.optim's per-param layout: each moment (Adam's ``exp_avg`` and
``exp_avg_sq``, Lion's ``exp_avg``, SGD's ``momentum_buffer``) the uint8 codes (param-shaped,
contiguous), beside it ``<moment>_absmax``, one fp32 absmax per block of 256 elements, and in
``state_dict()`` also ``<moment>_qmap``, the 256-entry map decoding it (one shared tensor per
map): first moments through the signed map, Adam's second moment through the unsigned one.
Loading is exact both ways: an 8-bit checkpoint restores the same bits (a checkpoint with other
maps is decoded with them and encoded with ours); a checkpoint with fp32 moments (torch.optim's,
or fusedopt's without the option) is quantized, and an 8-bit one loaded where a param keeps fp32
moments is decoded. ``dequantize_state_dict`` makes a plain fp32 state dict that torch.optim's
AdamW, Adam and SGD (and fusedopt.Lion without the option) load.

DTensor params (FSDP2, Note [DTensor params]): the blocks lie within each rank's local shard
(its elements in row-major blocks of 256, the last one partial), as no block may span two
ranks; the codes are DTensors sharded like the param and the absmax a DTensor of one row per
shard (Note [per-shard state]), so torch.distributed.checkpoint saves and resumes them bit for
bit on the same mesh, and refuses a checkpoint from a mesh with another number of shards (a
size mismatch of the absmax: re-quantizing the old blocks into new ones would not be exact).
A sharded step therefore equals the unsharded one where every shard holds whole blocks (its
elements a multiple of 256, the last shard's aside), and differs from it elsewhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._opdefs import OPS
from ..reference import quant
from . import _dtensor, _mixed
from ._base import _OPTIONS

_PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: Per moment an 8-bit op keeps (the codes' key): (absmax key, map key in a state_dict, row of
#: quant.QMAPS).
_KEYS = {
    "exp_avg": ("exp_avg_absmax", "exp_avg_qmap", 0),
    "exp_avg_sq": ("exp_avg_sq_absmax", "exp_avg_sq_qmap", 1),
    "momentum_buffer": ("momentum_buffer_absmax", "momentum_buffer_qmap", 0),
}


def _moments(op: str) -> tuple[tuple[str, str, str, int], ...]:
    """(codes key, absmax key, map key, map row) of each moment of 8-bit registry op ``op``."""
    return tuple((a.key, *_KEYS[a.key]) for a in OPS[op].aux_state if a.key in _KEYS)


_QMAPS: dict[torch.device, Tensor] = {}


def qmaps(device: torch.device) -> Tensor:
    """The (2, 256) maps on ``device``, made once."""
    t = _QMAPS.get(device)
    if t is None:
        t = _QMAPS[device] = quant.QMAPS.to(device)
    return t


class States8bit:
    """The FusedOptimizer part of an optimizer with 8-bit states (Note [8-bit optimizer
    states]); first in the bases, before FusedOptimizer. ``_op_8bit``: the registry op of its
    8-bit params."""

    _op: str
    _op_8bit: str
    _options = tuple(_OPTIONS)
    #: An fp32 checkpoint has no absmax: loading quantizes its moments.
    _may_lack = ("exp_avg_absmax", "exp_avg_sq_absmax")
    #: A DTensor param's blocks lie within its local shard (Note [8-bit optimizer states]).
    _aux_per_shard = True
    state_dtype: Any
    min_8bit_size: int
    state: dict[Any, Any]
    param_groups: list[dict[str, Any]]

    def _quantized(self, p: Tensor) -> bool:
        return (
            self.state_dtype == _mixed.INT8
            and p.dtype in _PARAM_DTYPES
            and p.numel() >= self.min_8bit_size
        )

    def _has_moments(self, group: dict[str, Any]) -> bool:
        """Whether the group's params keep moments (SGD's: only with momentum)."""
        return True

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)  # type: ignore[misc]
        if self.state_dtype == _mixed.INT8 and self.param_groups[-1].get("amsgrad"):
            self.param_groups.pop()
            raise ValueError(
                f"fusedopt.{type(self).__name__}: amsgrad is not supported with "
                f"state_dtype={_mixed.INT8!r}"
            )

    def _param_op(self, group: dict[str, Any], p: Tensor) -> str:
        return self._op_8bit if self._quantized(p) and self._has_moments(group) else self._op

    def _aux_shape(self, key: str, p: Tensor) -> tuple[int, ...] | None:
        if key in _KEYS:
            return tuple(p.shape)
        return _absmax_shape(p)

    def _aux_zeros(self, key: str, p: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
        if not _is_dtensor(p):
            return torch.zeros(shape, dtype=dtype, device=p.device)
        if key in _KEYS:
            return torch.zeros_like(p, dtype=dtype, memory_format=torch.contiguous_format)
        return _dtensor.row_zeros(p, shape[1], dtype)

    def _aux_local(self, key: str, p: Tensor, t: Tensor, i: int) -> Tensor:
        if key in _KEYS:
            _dtensor.check_sharded_like(t, p, i, key, self._where())  # type: ignore[attr-defined]
            return _dtensor.local(t)
        if not _sharded_as(p, None, t):
            raise RuntimeError(
                f"{self._where()}: state {key!r} of DTensor parameter {i} is not a DTensor "  # type: ignore[attr-defined]
                "of one row per shard (Note [per-shard state]); load sharded optimizer state "
                "with torch.distributed.checkpoint"
            )
        return _dtensor.local(t).view(-1)[: quant.num_blocks(_dtensor.local(p).numel())]

    def _aux_dtype(self, group: dict[str, Any], p: Tensor, key: str) -> torch.dtype:
        return torch.uint8 if key in _KEYS else torch.float32

    def _call(self, op: str, b: Any, values: dict[str, Any], plan: bool = True) -> None:
        if op == self._op_8bit:
            names = OPS[op].names
            values = {k: v for k, v in values.items() if k in names}  # Adam's amsgrad
            values["qmaps"] = qmaps(b.device)
        super()._call(op, b, values, plan)  # type: ignore[misc]

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()  # type: ignore[misc]
        state = sd["state"]
        for i, pstate in list(state.items()):
            maps = {
                key: quant.QMAPS[row]
                for codes, _, key, row in _moments(self._op_8bit)
                if torch.is_tensor(pstate.get(codes)) and pstate[codes].dtype == torch.uint8
            }
            if maps:
                state[i] = {**pstate, **maps}  # torch's entries are self.state's own dicts
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also a bitsandbytes 8-bit optimizer's (Note [bitsandbytes checkpoints])."""
        converted = _from_bitsandbytes(state_dict, _moments(self._op_8bit))
        if converted is not state_dict:
            # bitsandbytes' groups name its own options (SGD8bit's momentum is betas[0], and it
            # keeps no dampening or nesterov): only groups that say all of ours load.
            fallbacks = self._group_fallbacks  # type: ignore[attr-defined]
            needed = [k for k in self.defaults if k != "params" and k not in fallbacks]  # type: ignore[attr-defined]
            missing = sorted(
                {k for g in state_dict.get("param_groups", []) for k in needed if k not in g}
            )
            if missing:
                raise ValueError(
                    f"fusedopt.{type(self).__name__}: the bitsandbytes checkpoint's param groups "
                    f"lack {', '.join(missing)}; nothing was loaded"
                )
        super().load_state_dict(converted)  # type: ignore[misc]

    def _check_loaded_state(self, state_dict: dict[str, Any]) -> None:
        """Also: 8-bit moments come with an absmax of one element per block."""
        super()._check_loaded_state(state_dict)  # type: ignore[misc]
        for pid, pstate in state_dict.get("state", {}).items():
            if not isinstance(pstate, dict):
                continue
            for codes_key, absmax_key, map_key, _ in _moments(self._op_8bit):
                codes = pstate.get(codes_key)
                if not torch.is_tensor(codes) or codes.dtype != torch.uint8:
                    continue
                absmax = pstate.get(absmax_key)
                if not torch.is_tensor(absmax):
                    raise KeyError(
                        f"fusedopt.{type(self).__name__}: loaded state for parameter {pid} has "
                        f"8-bit {codes_key!r} but no {absmax_key!r}; nothing was loaded"
                    )
                blocks = _absmax_shape(codes)
                qmap = pstate.get(map_key)
                if tuple(absmax.shape) != blocks or (
                    qmap is not None and tuple(qmap.shape) != (quant.BLOCK,)
                ):
                    raise ValueError(
                        f"loaded state for parameter {pid}: {absmax_key!r} has shape "
                        f"{tuple(absmax.shape)}, but 8-bit {codes_key!r} of {codes.numel()} "
                        f"elements needs {blocks} (and a map of 256 entries)"
                    )

    def _restore_state_dtypes(
        self, state_dict: dict[str, Any], saved: dict[Any, dict[str, Tensor]]
    ) -> None:
        """The moments as this optimizer keeps them, from the loaded ones (Note [8-bit
        optimizer states]); the rest as any optimizer restores it."""
        ids = (pid for sg in state_dict["param_groups"] for pid in sg["params"])
        params = ((g, p) for g in self.param_groups for p in g["params"])
        moments = _moments(self._op_8bit)
        rest = dict(saved)
        for pid, (group, p) in zip(ids, params):
            if pid not in saved or p not in self.state:
                continue
            pstate = self.state[p]
            loaded = saved[pid]
            quantized = self._param_op(group, p) == self._op_8bit
            # A DTensor param's moments are converted shard by shard (its blocks lie within
            # its shard), from the local parts of DTensors placed as its own state is.
            sharded = _is_dtensor(p)
            shape = _dtensor.local(p).shape if sharded else p.shape
            for codes_key, absmax_key, map_key, row in moments:
                pstate.pop(map_key, None)
                v = loaded.get(codes_key)
                if v is None or not (v.dtype == torch.uint8 or v.is_floating_point()):
                    continue
                absmax = loaded.get(absmax_key) if v.dtype == torch.uint8 else None
                if sharded:
                    if not _sharded_as(p, v, absmax):
                        pstate[codes_key] = v  # the step refuses it (Note [DTensor params])
                        continue
                    v = _dtensor.local(v)
                    if absmax is not None:
                        absmax = _dtensor.local(absmax).reshape(-1)[: quant.num_blocks(v.numel())]
                if absmax is not None:
                    qmap = loaded.get(map_key, quant.QMAPS[row]).to(torch.float32).cpu()
                    values = quant.dequantize(v.cpu(), absmax.float().cpu(), qmap)
                    same = torch.equal(qmap, quant.QMAPS[row])
                else:
                    values, same = v, False
                if quantized and same:
                    codes, absmax = v.contiguous(), absmax.float()  # type: ignore[union-attr]
                elif quantized:
                    codes, absmax = quant.quantize(values.float(), quant.QMAPS[row])
                else:
                    pstate.pop(absmax_key, None)
                    dtype = self._state_dtype(group, p)  # type: ignore[attr-defined]
                    t = values.to(device=p.device, dtype=dtype).view(shape)
                    pstate[codes_key] = _dtensor.like_param(t, p) if sharded else t
                    continue
                codes = codes.to(p.device, copy=True).view(shape)
                absmax = absmax.to(p.device, copy=True)
                if sharded:
                    rows = _dtensor.row_zeros(p, _absmax_shape(p)[1], torch.float32)
                    _dtensor.local(rows).view(-1)[: absmax.numel()].copy_(absmax)
                    codes, absmax = _dtensor.like_param(codes, p), rows
                pstate[codes_key] = codes
                pstate[absmax_key] = absmax
            rest[pid] = {k: t for k, t in loaded.items() if k not in _KEYS}
        super()._restore_state_dtypes(state_dict, rest)  # type: ignore[misc]


def _is_dtensor(t: Tensor) -> bool:
    dtensor = _dtensor.dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def _absmax_shape(t: Tensor) -> tuple[int, ...]:
    """The absmax shape of a param (or of codes shaped like it): one value per block of 256 of
    its elements, or of a DTensor's local shard, one row per shard (Note [per-shard state])."""
    if not _is_dtensor(t):
        return (quant.num_blocks(t.numel()),)
    width = quant.num_blocks(_dtensor.largest_shard_numel(t))
    if quant.num_blocks(_dtensor.local(t).numel()) > width:
        raise NotImplementedError(
            f"8-bit states of a DTensor of shape {tuple(t.shape)} placed {t.placements}: its "
            f"local shard of {_dtensor.local(t).numel()} elements is larger than the first "
            "shard; only shards in torch's chunks (Shard placements, as FSDP2's) are supported"
        )
    return _dtensor.row_layout(t, width)[0]


def _sharded_as(p: Tensor, codes: Tensor | None, absmax: Tensor | None) -> bool:
    """Whether ``codes`` (unless None) are DTensors sharded like DTensor param p and ``absmax``
    (unless None) is one of its per-shard states (Note [per-shard state])."""
    mesh = p.device_mesh  # type: ignore[attr-defined]
    if codes is not None and not (
        _is_dtensor(codes) and codes.device_mesh == mesh and codes.placements == p.placements  # type: ignore[attr-defined]
    ):
        return False
    return absmax is None or (
        _is_dtensor(absmax)
        and absmax.device_mesh == mesh  # type: ignore[attr-defined]
        and absmax.placements == _dtensor.row_layout(p, 1)[1]  # type: ignore[attr-defined]
    )


#: Where bitsandbytes' Optimizer8bit.state_dict() puts each param's quantization state.
_BNB_WRAPPED = "__bnb_optimizer_quant_state__"


def _from_bitsandbytes(
    state_dict: dict[str, Any], moments: tuple[tuple[str, str, str, int], ...]
) -> dict[str, Any]:
    """Note [bitsandbytes checkpoints]
    bitsandbytes' 8-bit optimizers (AdamW8bit, Adam8bit, Lion8bit, SGD8bit, blockwise, as by
    default) keep per param ``state1`` (and Adam's ``state2``) with ``qmap1``/``absmax1``
    (``qmap2``/``absmax2``), wrapped in ``__bnb_optimizer_quant_state__`` in a state_dict since
    0.45, beside an int ``step``: uint8 codes in row-major blocks of 256 elements, decoded by
    ``qmap[code] * absmax``, Note [8-bit states]'s layout and maps, so they load bit for bit
    (fp32 ``state1`` of a small param loads as any fp32 moment). ``state1`` is the optimizer's
    first moment key (``exp_avg``, SGD's ``momentum_buffer``), ``state2`` its second. Other
    layouts raise ValueError before anything is loaded: blocks of another size (older
    bitsandbytes' 2048) and ``block_wise=False`` (one ``max1`` per tensor); so do param groups
    without this optimizer's options (SGD8bit's). A state dict without ``state1`` is returned
    as it is."""
    states = state_dict.get("state", {})
    if not any(
        isinstance(s, dict) and ("state1" in s or _BNB_WRAPPED in s) for s in states.values()
    ):
        return state_dict
    out = {**state_dict, "state": {}}
    for pid, pstate in states.items():
        if not isinstance(pstate, dict):
            out["state"][pid] = pstate
            continue
        pstate = {**pstate, **pstate.get(_BNB_WRAPPED, {})}
        pstate.pop(_BNB_WRAPPED, None)
        if "max1" in pstate or "new_max1" in pstate:
            raise ValueError(
                f"loaded bitsandbytes state for parameter {pid} is not blockwise (block_wise="
                "False: one absmax per tensor); fusedopt loads blockwise 8-bit states only; "
                "nothing was loaded"
            )
        step = pstate.get("step")
        if step is not None and not torch.is_tensor(step):
            pstate["step"] = torch.tensor(float(step), dtype=torch.float32)
        for j, (codes_key, absmax_key, map_key, _) in enumerate(moments):
            codes = pstate.pop(f"state{j + 1}", None)
            absmax = pstate.pop(f"absmax{j + 1}", None)
            qmap = pstate.pop(f"qmap{j + 1}", None)
            if codes is None:
                continue
            pstate[codes_key] = codes
            if codes.dtype != torch.uint8:
                continue
            blocks = quant.num_blocks(codes.numel())
            if absmax is None or absmax.numel() != blocks:
                got = "none" if absmax is None else absmax.numel()
                raise ValueError(
                    f"loaded bitsandbytes state for parameter {pid}: {got} absmax{j + 1} "
                    f"values for {codes.numel()} elements, fusedopt's blocks of "
                    f"{quant.BLOCK} need {blocks} (a checkpoint of another block size); "
                    "nothing was loaded"
                )
            pstate[absmax_key] = absmax.reshape(-1)
            if qmap is not None:
                pstate[map_key] = qmap
        out["state"][pid] = pstate
    return out


def dequantize_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """A copy of an optimizer ``state_dict`` with 8-bit moments decoded to fp32 and their
    absmax and map keys dropped: what torch.optim's AdamW, Adam and SGD load (and
    fusedopt.Lion with fp32 states)."""
    out = {**state_dict, "state": {}}
    for pid, pstate in state_dict.get("state", {}).items():
        pstate = dict(pstate)
        for codes_key, (absmax_key, map_key, row) in _KEYS.items():
            codes = pstate.get(codes_key)
            qmap = pstate.pop(map_key, quant.QMAPS[row])
            absmax = pstate.pop(absmax_key, None)
            if torch.is_tensor(codes) and codes.dtype == torch.uint8:
                pstate[codes_key] = _decode(codes, absmax.float(), qmap.float())
        out["state"][pid] = pstate
    return out


def _decode(codes: Tensor, absmax: Tensor, qmap: Tensor) -> Tensor:
    """The fp32 values of 8-bit moments: of a DTensor's, shard by shard (Note [8-bit optimizer
    states])."""
    if not _is_dtensor(codes):
        return quant.dequantize(codes, absmax, qmap)
    local = _dtensor.local(codes)
    blocks = _dtensor.local(absmax).reshape(-1)[: quant.num_blocks(local.numel())]
    return _dtensor.like_param(quant.dequantize(local, blocks, qmap), codes)


def state_bytes(opt: torch.optim.Optimizer) -> float:
    """Bytes of optimizer state per parameter element, over the params that have state: every
    tensor of ``opt.state`` (moments, codes and absmax, steps, masters, seeds) counted."""
    total = elements = 0
    for p, pstate in opt.state.items():
        elements += p.numel()
        total += sum(t.numel() * t.element_size() for t in pstate.values() if torch.is_tensor(t))
    return total / elements if elements else 0.0
