"""Checkpoints: loading a state_dict, checked before anything changes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class Checkpoints:
    """The FusedOptimizer part that loads state dicts."""

    state: dict[Any, Any]
    param_groups: list[dict[str, Any]]
    defaults: dict[str, Any]
    _has_step: bool
    #: State keys a loaded param state may lack (the step fills them in).
    _may_lack: tuple[str, ...] = ()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load torch.optim's state_dict layout (from fusedopt or torch.optim).

        Before anything changes, the state is checked (Note [damaged checkpoints]).
        """
        self._check_loaded_state(state_dict)
        # torch casts every floating-point state tensor to its param's dtype (and an int64
        # seed too, for a floating-point param): keep the originals to restore their dtypes.
        saved = {
            pid: {k: v for k, v in pstate.items() if torch.is_tensor(v) and k != "step"}
            for pid, pstate in state_dict.get("state", {}).items()
            if isinstance(pstate, dict)
        }
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self.invalidate_plans()  # type: ignore[attr-defined]
        self._restore_state_dtypes(state_dict, saved)
        # torch keeps a non-fused 'step' on the CPU; our kernels want it where _zero_step puts it
        # (a checkpoint loaded with map_location="cpu" must still work on the GPU).
        for p, pstate in self.state.items():
            step = pstate.get("step") if isinstance(pstate, dict) else None
            if torch.is_tensor(step):
                want = self._zero_step(p)  # type: ignore[attr-defined]
                if step.device != want.device or step.dtype != want.dtype:
                    pstate["step"] = step.to(device=want.device, dtype=want.dtype)

    def _restore_state_dtypes(
        self, state_dict: dict[str, Any], saved: dict[Any, dict[str, Tensor]]
    ) -> None:
        """Note [state dtypes in checkpoints]
        After torch's load_state_dict: the fp32 master copy stays fp32, a seed stays int64,
        and moments take this optimizer's state dtype for the param (a bf16-param checkpoint
        from torch.optim loads into master_weights=True with fp32 moments, and a fusedopt
        checkpoint with fp32 moments loads into torch.optim as bf16 ones).
        """
        ids = (pid for sg in state_dict["param_groups"] for pid in sg["params"])
        for pid, (p, group) in zip(ids, ((p, g) for g in self.param_groups for p in g["params"])):
            if pid not in saved or p not in self.state:
                continue
            pstate = self.state[p]
            op = self._param_op(group, p)  # type: ignore[attr-defined]
            keys, aux = self._op_keys(group, op)  # type: ignore[attr-defined]
            for k, v in saved[pid].items():
                if k in aux and v.is_floating_point():
                    want = self._aux_dtype(group, p, k)  # type: ignore[attr-defined]
                elif k == "master_param":
                    want = torch.float32
                elif k == "sr_seed":
                    want = torch.int64
                elif k in keys and v.is_floating_point() and p.is_floating_point():
                    want = self._state_dtype(group, p)  # type: ignore[attr-defined]
                else:
                    continue
                cur = pstate.get(k)
                if torch.is_tensor(cur) and cur.dtype != want:
                    pstate[k] = v.to(device=p.device, dtype=want, copy=True)

    def _check_loaded_state(self, state_dict: dict[str, Any]) -> None:
        """Note [damaged checkpoints]
        Before anything changes, each param's loaded state must have every key this optimizer
        needs (KeyError, as torch.optim raises at its next step, where a fused step would
        silently start the missing moment from zeros; ``_may_lack`` names the keys a state may
        lack), a ``step`` that is a finite count >= 0 (ValueError: a negative one makes the
        bias corrections divide by zero), and state tensors shaped like the param (ValueError:
        the kernels would read out of bounds). Keys fusedopt does not use (another
        optimizer's) are not checked: they are kept as they are, as torch.optim keeps them.
        """
        saved_groups = state_dict.get("param_groups", [])
        groups = self.param_groups
        if len(saved_groups) != len(groups):
            return  # torch's own check raises its ValueError
        owner: dict[Any, tuple[Tensor, dict[str, Any]]] = {}
        for g, sg in zip(groups, saved_groups):
            if len(g["params"]) != len(sg["params"]):
                return
            merged = {**self.defaults, **sg}
            owner.update((pid, (p, merged)) for pid, p in zip(sg["params"], g["params"]))
        where = f"fusedopt.{type(self).__name__}: loaded state for parameter"
        for pid, pstate in state_dict.get("state", {}).items():
            if pid not in owner or not isinstance(pstate, dict):
                continue
            p, group = owner[pid]
            shapes = self._kept_shapes(group, p)  # type: ignore[attr-defined]
            keys = tuple(shapes)
            has_step = self._group_has_step(group)  # type: ignore[attr-defined]
            required = (*keys, "step") if has_step else keys
            for key in required if pstate else ():
                if key not in self._may_lack and pstate.get(key) is None:
                    raise KeyError(
                        f"{where} {pid} has no {key!r} (it has "
                        f"{', '.join(map(repr, pstate))}): the checkpoint is damaged or "
                        "from another optimizer; nothing was loaded"
                    )
            shapes["master_param"] = tuple(p.shape)
            for key, value in pstate.items():
                if key == "step":
                    _check_loaded_step(where, pid, value)
                if not torch.is_tensor(value):
                    continue
                if key in ("step", "sr_seed"):
                    if value.numel() != 1:
                        raise ValueError(
                            f"loaded state for parameter {pid}: {key!r} must have "
                            f"one element, got shape {tuple(value.shape)}"
                        )
                elif key in shapes and tuple(value.shape) != shapes[key]:
                    what = (
                        f"the parameter has shape {tuple(p.shape)}"
                        if shapes[key] == tuple(p.shape)
                        else f"for a parameter of shape {tuple(p.shape)} it must be {shapes[key]}"
                    )
                    raise ValueError(
                        f"loaded state for parameter {pid}: {key!r} has shape "
                        f"{tuple(value.shape)}, but {what}"
                    )


def _check_loaded_step(where: str, pid: Any, step: Any) -> None:
    if torch.is_tensor(step):
        if step.numel() != 1 or step.device.type == "meta":
            return  # the shape check says so; a meta tensor has no value yet
        step = step.item()
    if not isinstance(step, (int, float)) or not 0 <= step < float("inf"):
        raise ValueError(
            f"{where} {pid}: 'step' is {step!r}, but a step count must be a finite number "
            ">= 0; nothing was loaded"
        )
