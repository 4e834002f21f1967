from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import ParamsT

from .. import _dispatch
from .._opdefs import OPS
from . import _dtensor
from ._base import FusedOptimizer
from ._validate import check_args

# schedulefree.AdamWScheduleFree's message, for a step outside train mode.
_NOT_TRAINING = (
    "Optimizer was not in train mode when step is called. "
    "Please insert .train() and .eval() calls on the "
    "optimizer. See documentation for details."
)
_NOT_COMPILED = (
    "{}: torch.compile of the step is not supported: its step counter is the param group's "
    "Python int 'k', as in schedulefree, which a compiled step recompiles for at every step "
    "(compile the model, and step eagerly: the step is one fused kernel per bucket)"
)
# The group keys a step advances (schedulefree keeps them as Python numbers in the group).
_COUNTERS = ("k", "scheduled_lr", "lr_max", "weight_sum")


class ScheduleFreeAdamW(FusedOptimizer):
    r"""Schedule-Free AdamW (Defazio et al., 2024, "The Road Less Scheduled"), fused: one kernel
    per (device, dtype) group and step, moving 28 bytes per fp32 parameter (read y, grad, z,
    exp_avg_sq; write y, z, exp_avg_sq).

    A drop-in for ``schedulefree.AdamWScheduleFree``: same arguments, defaults, param-group keys
    (``k``, ``train_mode``, ``weight_sum``, ``lr_max``, ``scheduled_lr``, ...) and state
    (``z``, ``exp_avg_sq``), so its checkpoints load here and back. No learning-rate schedule is
    needed: the params in training are :math:`y`, an interpolation between the averaged point
    :math:`x` (what to evaluate) and the SGD-like sequence :math:`z`. Call
    ``optimizer.train()`` before training steps and ``optimizer.eval()`` before evaluating or
    saving a checkpoint; a step in eval mode raises, as schedulefree's does.

    .. math::
        \begin{aligned}
        &\gamma_k \leftarrow \gamma \min(1, (k+1)/\text{warmup\_steps}), \quad
            \gamma^{max}_k \leftarrow \max(\gamma^{max}_{k-1}, \gamma_k) \\
        &w_k \leftarrow (k+1)^r (\gamma^{max}_k)^{p}, \quad
            c_{k+1} \leftarrow w_k / \textstyle\sum_{i \le k} w_i \\
        &v \leftarrow \beta_2 v + (1-\beta_2) g^2, \quad
            u \leftarrow g / (\sqrt{v / (1-\beta_2^{k+1})} + \epsilon) + \lambda y \\
        &y \leftarrow (1-c_{k+1}) y + c_{k+1} z + \gamma_k(\beta_1(1-c_{k+1}) - 1)\, u \\
        &z \leftarrow z - \gamma_k u
        \end{aligned}

    ``eval()`` sets the params to :math:`x = \mathrm{lerp}(y, z, 1 - 1/\beta_1)`, ``train()``
    back to :math:`y = \mathrm{lerp}(x, z, 1 - \beta_1)`, each one fused pass per (device, dtype)
    list, torch.lerp's arithmetic as in schedulefree (with master_weights: on the fp32 masters,
    rounded to nearest into the params; with stochastic_rounding: on the bf16 params, rounded
    stochastically as a step rounds them). Unlike schedulefree, the step leaves ``p.grad`` as
    it is (schedulefree divides it in place).

    Args:
        params (iterable): parameters or dicts defining parameter groups.
        lr (float, Tensor, optional): learning rate :math:`\gamma` (default: 0.0025). A Tensor
            lr is read on the host every step: the averaging weights are per-group Python
            numbers, as schedulefree keeps them.
        betas (Tuple[float, float], optional): :math:`\beta_1` the interpolation, :math:`\beta_2`
            the second-moment average (default: (0.9, 0.999)).
        eps (float, optional): added to the denominator (default: 1e-8).
        weight_decay (float, optional): :math:`\lambda`, applied at y (default: 0).
        warmup_steps (int, optional): linear warmup of the lr over this many steps (default: 0).
        r (float, optional): polynomial weighting power of the average (default: 0).
        weight_lr_power (float, optional): :math:`p`, the weights of the average are the
            largest lr so far to this power (default: 2.0).
        foreach (bool, optional): accepted for compatibility; fusedopt is always fused.
        backend, max_grad_norm, master_weights, stochastic_rounding, state_dtype, fused_amp:
            as in :class:`fusedopt.Adam`. Under GradScaler with fused_amp, the step reads
            found_inf on the host (one sync) so that a skipped step does not advance the
            group's counters, as GradScaler's own skip would not.
    """

    _op = "schedule_free_adamw_"
    _sparse_error = "ScheduleFreeAdamW does not support sparse gradients"
    _may_lack = ("z",)

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 0.0025,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        warmup_steps: int = 0,
        r: float = 0.0,
        weight_lr_power: float = 2.0,
        foreach: bool | None = True,
        **options: Any,
    ) -> None:
        betas = check_args(lr, betas, eps, weight_decay)
        if not warmup_steps >= 0:
            raise ValueError(f"Invalid warmup_steps value: {warmup_steps}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "r": r,
            "k": 0,
            "warmup_steps": warmup_steps,
            "train_mode": False,
            "weight_sum": 0.0,
            "lr_max": -1.0,
            "scheduled_lr": 0.0,
            "weight_lr_power": weight_lr_power,
            "weight_decay": weight_decay,
            "foreach": foreach,
        }
        super().__init__(params, defaults, options)

    def _init_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        # z starts at the point itself (schedulefree clones p), the second moment at zero; as in
        # schedulefree, a state without z (a checkpoint may lack it) starts over, both of them.
        theta = state.get("master_param", p)
        dtype = self._state_dtype(group, p)
        if state.get("z") is None:
            state["z"] = torch.clone(theta, memory_format=torch.preserve_format).to(dtype)
            state["exp_avg_sq"] = None
        if state.get("exp_avg_sq") is None:
            state["exp_avg_sq"] = torch.zeros_like(
                p, dtype=dtype, memory_format=torch.preserve_format
            )

    @torch.no_grad()
    def eval(self) -> None:
        """Sets the params to x, the averaged point (what to evaluate and to checkpoint)."""
        for group in self.param_groups:
            if group["train_mode"]:
                self._swap(group, 1 - 1 / group["betas"][0])
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Sets the params to y, the point where the grads are taken."""
        for group in self.param_groups:
            if not group["train_mode"]:
                self._swap(group, 1 - group["betas"][0])
                group["train_mode"] = True

    def _swap(self, group: dict[str, Any], weight: float) -> None:
        """theta = lerp(theta, z, weight) for every param with state, theta the fp32 master if
        there is one (then rounded into the param): one fused pass (schedule_free_swap_) per
        (device, dtype, mode) list. An fp32 z with a master is lerped in fp32 as it is: the op
        runs on the masters as its params (z in their dtype), then they are rounded into the
        params."""
        calls: dict[tuple[Any, ...], dict[str, list[Tensor]]] = {}
        for p in group["params"]:
            state = self.state[p]
            if "z" not in state:
                continue
            p = _local(p)
            master, seed = state.get("master_param"), state.get("sr_seed")
            z = _local(state["z"]).to(p.device)
            if master is not None and z.dtype != p.dtype:
                theta, mode, master, z = _local(master), "masters", None, z.to(master.dtype)
            else:
                theta, mode, z = p, "master" if master is not None else "", z.to(p.dtype)
            mode += "sr" if seed is not None else ""
            lists = calls.setdefault((theta.device, theta.dtype, mode), {})
            for key, t in (("params", theta), ("grads", z), ("rounded", p)):
                lists.setdefault(key, []).append(t)
            if master is not None:
                lists.setdefault("master_params", []).append(_local(master))
            if seed is not None:
                lists.setdefault("sr_seeds", []).append(seed)
        for (device, _, mode), lists in calls.items():
            rounded = lists.pop("rounded")
            backend = _dispatch.resolve(self.backend, device)
            _dispatch.kernel(backend, "schedule_free_swap_")(
                *OPS["schedule_free_swap_"].bind(weight=weight, **lists)
            )
            if mode == "masters":
                torch._foreach_copy_(rounded, lists["params"])

    def _scalars(self, group: dict[str, Any]) -> dict[str, Any]:
        # From the group's counters, which step() has already advanced to k + 1 (k = 0: a
        # skipped first step, which the kernels skip too; lr_max is still -1 then).
        k = group["k"]
        warmup = group["warmup_steps"]
        weight_sum = group["weight_sum"]
        ckp1 = 0.0
        if k > 0 and weight_sum != 0:
            ckp1 = (k ** group["r"]) * (group["lr_max"] ** group["weight_lr_power"]) / weight_sum
        return {
            **super()._scalars(group),
            "sched": k / warmup if 0 < k <= warmup else 1.0,
            "ckp1": ckp1,
            "bias_correction2": 1 - group["betas"][1] ** k,
        }

    @torch.no_grad()
    def step(self, closure: Any = None) -> float | None:  # type: ignore[override]
        """Perform a single optimization step (in train mode).

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        if not self.param_groups[0]["train_mode"]:
            raise Exception(_NOT_TRAINING)
        if torch.compiler.is_compiling():
            # dynamo specializes on the Python int k of every group, so a compiled step would
            # recompile at every step (and a Tensor lr is read on the host).
            raise RuntimeError(_NOT_COMPILED.format(self._where()))
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            # A replay would repeat this step's warmup factor and averaging weight.
            raise RuntimeError(
                f"{self._where()}: a step cannot be captured in a CUDA graph (its per-step "
                "scalars are the param groups' Python numbers, as in schedulefree)"
            )
        found_inf = getattr(self, "found_inf", None)
        skipped = found_inf is not None and bool(found_inf.item() != 0)
        before = [{c: group[c] for c in _COUNTERS} for group in self.param_groups]
        if not skipped:
            for group in self.param_groups:
                _advance(group)
        try:
            return super().step(closure)
        except BaseException:
            for group, counters in zip(self.param_groups, before):
                group.update(counters)
            raise


def _local(t: Tensor) -> Tensor:
    """A DTensor's shard (the swap is elementwise), else the tensor."""
    dtensor = _dtensor.dtensor_type()
    return _dtensor.local(t) if dtensor is not None and isinstance(t, dtensor) else t


def _advance(group: dict[str, Any]) -> None:
    """schedulefree's per-group bookkeeping of a step, in its order and float arithmetic."""
    k = group["k"]
    sched = (k + 1) / group["warmup_steps"] if k < group["warmup_steps"] else 1.0
    lr = float(group["lr"]) * sched
    group["scheduled_lr"] = lr
    lr_max = group["lr_max"] = max(lr, group["lr_max"])
    weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
    group["weight_sum"] = group["weight_sum"] + weight
    group["k"] = k + 1
