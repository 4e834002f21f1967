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
# The group keys a step advances: schedulefree keeps them as Python numbers in the group, we keep
# them as one-element tensors on the params' device (k int64, the others fp64), so that a
# compiled step reads them as inputs instead of recompiling for each new value; state_dict()
# gives them as schedulefree's Python numbers. Shape (1,), not 0-d: dynamo gives a 0-d CPU
# int64/fp64 input a symbolic value, and torch.compile then analyses the step twice.
_COUNTERS = {"k": torch.int64, "scheduled_lr": torch.float64, "lr_max": torch.float64,
             "weight_sum": torch.float64}  # fmt: skip


class ScheduleFreeAdamW(FusedOptimizer):
    r"""Schedule-Free AdamW (Defazio et al., 2024, "The Road Less Scheduled"), fused: one kernel
    per (device, dtype) group and step, moving 28 bytes per fp32 parameter (read y, grad, z,
    exp_avg_sq; write y, z, exp_avg_sq).

    A drop-in for ``schedulefree.AdamWScheduleFree``: same arguments, defaults, param-group keys
    (``k``, ``train_mode``, ``weight_sum``, ``lr_max``, ``scheduled_lr``, ...) and state
    (``z``, ``exp_avg_sq``), so its checkpoints load here and back. The group counters ``k``,
    ``weight_sum``, ``lr_max`` and ``scheduled_lr`` are one-element tensors on the params' device
    (advanced there with schedulefree's float64 arithmetic, no host sync; ``state_dict()``
    gives them as its Python numbers), so that ``torch.compile(opt.step, fullgraph=True)``
    compiles once for the steady state. No learning-rate schedule is
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
        lr (float, Tensor, optional): learning rate :math:`\gamma` (default: 0.0025).
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
            as in :class:`fusedopt.Adam`. Under GradScaler with fused_amp, a skipped step does
            not advance the group's counters either, as GradScaler's own skip would not.
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

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _counters_to_tensors(self.param_groups[-1])

    def _setstate_groups(self) -> None:
        # A loaded checkpoint (schedulefree's or ours) or an old pickle has Python numbers.
        for group in self.param_groups:
            _counters_to_tensors(group)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout, the group counters as schedulefree's Python numbers (one host
        read each on a GPU)."""
        sd = super().state_dict()
        for group in sd["param_groups"]:
            for c in _COUNTERS:
                if isinstance(group.get(c), Tensor):
                    group[c] = int(group[c]) if c == "k" else float(group[c])
        return sd

    def _scalars(self, group: dict[str, Any]) -> dict[str, Any]:
        new = _advanced(group)
        return {
            **super()._scalars(group),
            "ckp1": new["ckp1"],
            "bias_correction2": new["bias_correction2"],
            "warmed_lr": new["scheduled_lr"],
        }

    def _launch(self, b: Any, values: dict[str, Any]) -> None:
        # The op's lr is the warmed-up one; its tensor scalars where the bucket's kernel reads
        # them (a group may span devices).
        values = dict(values)
        values["lr"] = values.pop("warmed_lr")
        for name in ("lr", "ckp1", "bias_correction2"):
            t = values[name]
            if t.device != b.device and not (t.device.type == "cpu" and b.device.type != "cpu"):
                values[name] = t.to(b.device)
        super()._launch(b, values)

    @torch.no_grad()
    def step(self, closure: Any = None) -> float | None:  # type: ignore[override]
        """Perform a single optimization step (in train mode).

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        if not self.param_groups[0]["train_mode"]:
            raise Exception(_NOT_TRAINING)
        if (
            not torch.compiler.is_compiling()
            and torch.cuda.is_available()
            and torch.cuda.is_current_stream_capturing()
        ):
            raise RuntimeError(
                f"{self._where()}: a step cannot be captured in a CUDA graph (not supported: "
                "the Triton backend reads its averaging weight on the host)"
            )
        found_inf = getattr(self, "found_inf", None)
        loss = super().step(closure)
        # The counters advance after the kernels ran (a step that raises advances nothing),
        # except where GradScaler skipped it (found_inf set), as its own skip would.
        for group in self.param_groups:
            new = _advanced(group)
            skip = None if found_inf is None else found_inf.to(group["k"].device) != 0
            for c in _COUNTERS:
                group[c].copy_(new[c] if skip is None else torch.where(skip, group[c], new[c]))
        return loss


def _counters_to_tensors(group: dict[str, Any]) -> None:
    """The group's counters as one-element tensors on its params' device (new ones: a loaded value is
    never shared)."""
    device = next((p.device for p in group["params"]), torch.device("cpu"))
    for c, dtype in _COUNTERS.items():
        group[c] = torch.tensor(
            [group[c].item() if isinstance(group[c], Tensor) else group[c]],
            dtype=dtype,
            device=device,
        )


def _advanced(group: dict[str, Any]) -> dict[str, Tensor]:
    """schedulefree's per-group bookkeeping of a step, in its order and float64 arithmetic,
    on the counters' device: the counters after the step and the op's ckp1 (the weight of the
    new point in the average) and bias_correction2 from them. The powers take tensor
    exponents: torch's pow by a Python float has shortcuts (x*x for 2, sqrt for 0.5) where
    schedulefree's ``**`` is libm's pow."""
    k = group["k"]
    k1 = (k + 1).to(torch.float64)
    warmup = group["warmup_steps"]
    # k < warmup: (k+1)/warmup (<= 1), else 1.0
    sched = (k1 / warmup).clamp(max=1.0) if warmup > 0 else torch.ones_like(k1)
    lr = group["lr"]
    if isinstance(lr, Tensor):
        lr = lr.to(device=k1.device, dtype=torch.float64)
    scheduled_lr = lr * sched
    lr_max = torch.maximum(scheduled_lr, group["lr_max"])
    weight = torch.pow(k1, torch.full_like(k1, group["r"])) * torch.pow(
        lr_max, torch.full_like(k1, group["weight_lr_power"])
    )
    weight_sum = group["weight_sum"] + weight
    return {
        "k": k + 1,
        "scheduled_lr": scheduled_lr,
        "lr_max": lr_max,
        "weight_sum": weight_sum,
        "ckp1": torch.where(weight_sum != 0, weight / weight_sum, 0.0),
        "bias_correction2": 1 - torch.pow(torch.full_like(k1, group["betas"][1]), k1),
    }


def _local(t: Tensor) -> Tensor:
    """A DTensor's shard (the swap is elementwise), else the tensor."""
    dtensor = _dtensor.dtensor_type()
    return _dtensor.local(t) if dtensor is not None and isinstance(t, dtensor) else t
