"""fusedopt inside the training frameworks it is a drop-in for: transformers' Trainer, accelerate,
Lightning, and timm's optimizers' checkpoints.

Tiny models built from configs (nothing is downloaded), a few steps each; every framework's own
checkpoint resume continues bit-identically. ``fused_amp=False`` (Note [fused AMP]) is checked
where the frameworks need it: accelerate's ``step_was_skipped`` (which the HF Trainer's lr
schedule follows) and Lightning's gradient clipping under mixed precision. There is no GPU here,
so the fp16 runs get the GradScaler a GPU run would (torch's, on the CPU).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import fusedopt
from optim_info import OPTIMS


def _needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None, reason=f"needs {module} (requirements-dev.txt)"
    )


@pytest.fixture(autouse=True)
def _quiet():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def _batches(n: int, bad: int | None = None, seed: int = 1) -> list[torch.Tensor]:
    """n input batches; batch ``bad`` has an inf, so its grads are inf/NaN."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(4, 8, generator=g) for _ in range(n)]
    if bad is not None:
        xs[bad][0, 0] = float("inf")
    return xs


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_close(a: list[torch.Tensor], b: list[torch.Tensor], exact: bool = False) -> None:
    for x, y in zip(a, b, strict=True):
        if exact:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


# -- GradScaler: fused_amp=False is torch.optim's path ---------------------------------------------
def test_fused_amp_false_takes_gradscalers_own_unscale_and_skip():
    makers = {
        "torch": lambda ps: torch.optim.AdamW(ps, lr=1e-2),
        "fusedopt": lambda ps: fusedopt.AdamW(ps, lr=1e-2, fused_amp=False),
    }
    out = {}
    for name, make in makers.items():
        model = _mlp()
        opt = make(model.parameters())
        assert not getattr(opt, "_step_supports_amp_scaling", False)
        calls = []
        step = opt.step
        opt.step = lambda *a, step=step, calls=calls, **k: (calls.append(1), step(*a, **k))[1]
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for x in _batches(4, bad=1):
            opt.zero_grad()
            scaler.scale(model(x).pow(2).mean()).backward()
            scaler.step(opt)
            scaler.update()
        out[name] = (_params(model), len(calls), scaler.get_scale())
    assert out["fusedopt"][1:] == out["torch"][1:] == (3, 2.0**9)  # the inf step: no step()
    _assert_close(out["fusedopt"][0], out["torch"][0])
    assert fusedopt.AdamW(_mlp().parameters())._step_supports_amp_scaling  # the default


@pytest.mark.parametrize("info", OPTIMS, ids=lambda i: i.cls.__name__)
def test_fused_amp_option_on_every_optimizer_survives_pickling(info):
    params = _mlp().parameters() if info.params is None else info.params(torch.float32)
    opt = info.cls(params, fused_amp=False)
    assert opt._step_supports_amp_scaling is False
    for other in (pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)):
        assert other.fused_amp is False and other._step_supports_amp_scaling is False


# -- accelerate --------------------------------------------------------------------------------------
def _accelerate_run(make_opt, steps: list[torch.Tensor], ckpt: Path | None = None, load=False):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # what fp16 on a GPU sets up
    model = _mlp()
    opt = make_opt(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    model, opt, sched = acc.prepare(model, opt, sched)
    if load:
        acc.load_state(str(ckpt))
    skipped, lrs = [], []
    for i, x in enumerate(steps):
        opt.zero_grad()
        acc.backward(model(x).pow(2).mean())
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        skipped.append(opt.step_was_skipped)
        lrs.append(opt.param_groups[0]["lr"])
        if ckpt is not None and not load and i == 1:
            acc.save_state(str(ckpt))
    return _params(model), skipped, lrs


@_needs("accelerate")
def test_accelerate_step_was_skipped_and_schedule_follow_torch(tmp_path: Path):
    xs = _batches(4, bad=2)
    ours = _accelerate_run(lambda ps: fusedopt.AdamW(ps, lr=1e-2, fused_amp=False), xs)
    torchs = _accelerate_run(lambda ps: torch.optim.AdamW(ps, lr=1e-2), xs)
    assert ours[1] == torchs[1] == [False, False, True, False]
    assert ours[2] == torchs[2]  # the schedule did not advance on the skipped step
    _assert_close(ours[0], torchs[0])
    # The default (the step unscales): GradScaler calls step() even on an inf step, so
    # accelerate cannot see the skip; the params are still the same.
    fast = _accelerate_run(lambda ps: fusedopt.AdamW(ps, lr=1e-2), xs)
    assert fast[1] == [False] * 4
    assert fast[2] != torchs[2]


@_needs("accelerate")
def test_accelerate_save_state_load_state_resumes_bit_identically(tmp_path: Path):
    xs = _batches(4)
    make = lambda ps: fusedopt.AdamW(ps, lr=1e-2, weight_decay=0.1, fused_amp=False)  # noqa: E731
    full = _accelerate_run(make, xs, tmp_path / "ckpt")
    resumed = _accelerate_run(make, xs[2:], tmp_path / "ckpt", load=True)
    _assert_close(resumed[0], full[0], exact=True)


# -- transformers' Trainer ---------------------------------------------------------------------------
def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    return GPT2LMHeadModel(cfg)


def _tokens(n: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 64, (n, 16), generator=g)
    return [{"input_ids": t, "labels": t} for t in ids]


def _trainer(out: Path, optimizer_cls_and_kwargs, max_steps: int = 4, model=None, data=None):
    from transformers import Trainer, TrainingArguments

    logging.getLogger("transformers").setLevel(logging.ERROR)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=0.1,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        save_strategy="steps",
        save_steps=2,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    return Trainer(
        model=model if model is not None else _gpt2(),
        args=args,
        train_dataset=data if data is not None else _tokens(),
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
    )


@_needs("transformers")
def test_hf_trainer_matches_torch_and_resumes_bit_identically(tmp_path: Path):
    ours = (fusedopt.AdamW, {"lr": 1e-3})
    full = _trainer(tmp_path / "full", ours)
    full.train()
    theirs = _trainer(tmp_path / "torch", (torch.optim.AdamW, {"lr": 1e-3}))
    theirs.train()
    _assert_close(_params(full.model), _params(theirs.model))
    resumed = _trainer(tmp_path / "full", ours)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    _assert_close(_params(resumed.model), _params(full.model), exact=True)


class _Regressor(nn.Module):
    """A model the HF Trainer accepts: forward(x, labels) -> {"loss"}."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": (self.net(x).squeeze(-1) - labels).pow(2).mean()}


@_needs("transformers")
def test_hf_trainer_does_not_advance_the_schedule_on_a_skipped_fp16_step(tmp_path: Path):
    xs = _batches(4, bad=1)
    data = [{"x": x[i], "labels": x[i].sum()} for x in xs for i in range(4)]
    lrs = {}
    for name, cls_kwargs in {
        "torch": (torch.optim.AdamW, {"lr": 1e-2}),
        "fusedopt": (fusedopt.AdamW, {"lr": 1e-2, "fused_amp": False}),
    }.items():
        trainer = _trainer(tmp_path / name, cls_kwargs, model=_Regressor(), data=data)
        trainer.args.save_strategy = "no"
        trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        trainer.train()
        lrs[name] = (trainer.lr_scheduler.last_epoch, _params(trainer.model))
    assert lrs["fusedopt"][0] == lrs["torch"][0] == 3  # 4 steps, one skipped
    _assert_close(lrs["fusedopt"][1], lrs["torch"][1])


# -- Lightning ---------------------------------------------------------------------------------------
def _lightning_module(make_opt):
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def training_step(self, batch, batch_idx):
            (x,) = batch
            return self.net(x).float().pow(2).mean()

        def configure_optimizers(self):
            return make_opt(self.parameters())

    return Module()


def _fit(make_opt, root: Path, max_steps: int, precision: str, ckpt: str | None = None):
    import lightning as L

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    # One batch an epoch: a checkpoint saved after fit() stopped at max_steps resumes at an
    # epoch boundary whatever Lightning's loop counters say, so each step sees the same data.
    data = torch.utils.data.TensorDataset(torch.cat(_batches(1)))
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=False)
    module = _lightning_module(make_opt)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        precision=precision,
        gradient_clip_val=1.0,
        default_root_dir=str(root),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, loader, ckpt_path=ckpt)
    return trainer, module


@_needs("lightning")
def test_lightning_bf16_mixed_with_clipping_needs_fused_amp_false(tmp_path: Path):
    ours = _fit(lambda ps: fusedopt.AdamW(ps, lr=1e-2, fused_amp=False), tmp_path, 4, "bf16-mixed")
    theirs = _fit(lambda ps: torch.optim.AdamW(ps, lr=1e-2), tmp_path, 4, "bf16-mixed")
    _assert_close(_params(ours[1]), _params(theirs[1]))
    # The default keeps the flag that Lightning refuses to clip with (its check, not ours).
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        _fit(lambda ps: fusedopt.AdamW(ps, lr=1e-2), tmp_path, 4, "bf16-mixed")


@_needs("lightning")
def test_lightning_checkpoint_resumes_bit_identically(tmp_path: Path):
    make = lambda ps: fusedopt.AdamW(ps, lr=1e-2, weight_decay=0.1)  # noqa: E731
    full = _fit(make, tmp_path, 4, "32-true")[1]
    half, _ = _fit(make, tmp_path, 2, "32-true")
    half.save_checkpoint(tmp_path / "half.ckpt")
    resumed = _fit(make, tmp_path, 4, "32-true", ckpt=str(tmp_path / "half.ckpt"))[1]
    _assert_close(_params(resumed), _params(full), exact=True)


# -- timm's optimizers' checkpoints -----------------------------------------------------------------
@_needs("timm")
@pytest.mark.parametrize("name", ["lamb", "lion"])
def test_timm_checkpoint_continues_in_fusedopt(name: str):
    from timm.optim import Lamb, Lion

    if name == "lamb":  # equal settings: no clipping, the trust ratio on every tensor
        theirs_cls, kwargs = Lamb, {"lr": 1e-2, "weight_decay": 0.01}
        extra, ours_cls = {"max_grad_norm": None, "always_adapt": True}, fusedopt.LAMB
    else:
        theirs_cls, kwargs, extra, ours_cls = (
            Lion,
            {"lr": 1e-3, "weight_decay": 0.1},
            {},
            fusedopt.Lion,
        )
    model = _mlp()
    theirs = theirs_cls(model.parameters(), **kwargs, **extra)
    xs = _batches(8)
    for x in xs[:5]:
        theirs.zero_grad()
        model(x).pow(2).mean().backward()
        theirs.step()
    twin = _mlp()
    twin.load_state_dict(model.state_dict())
    ours = ours_cls(twin.parameters(), **kwargs)
    # A copy, as from a file: load_state_dict keeps the tensors it is given.
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for x in xs[5:]:
        for m, opt in ((model, theirs), (twin, ours)):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    _assert_close(_params(twin), _params(model))
