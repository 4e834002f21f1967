"""`python -m fusedopt demo`: the blog post's digit classifier, trained with every optimizer.

The same MLP, the same initial weights and the same batches for every optimizer; fusedopt's
implementation on the best available backend and, for the optimizers torch.optim has, torch's
own, so the two curves can be seen to coincide. Data: the 8x8 handwritten digits that ship with
scikit-learn (no download), or MNIST from its IDX files with ``--data-dir``. Never downloads.
"""

from __future__ import annotations

import argparse
import gzip
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

import fusedopt

from .._dispatch import BACKEND_NAMES
from ._common import (
    PLOT_HINT,
    CLIError,
    Progress,
    check_backend,
    choose,
    have_matplotlib,
    optimizer_class,
    out_dir,
    positive_int,
    pyplot,
    run,
    table,
)

PROG = "python -m fusedopt demo"
EPOCHS = 5
# in -> 128 -> 64 -> 10 with ReLU: the usual two-hidden-layer MLP of the series' DigitClassifier
# (the post defines it in an earlier part, not reproduced in this one).
HIDDEN = (128, 64)
QUICK_MNIST = (10_000, 2_000)  # --quick trains on this many MNIST train / test images
EVALS_PER_EPOCH = 4
# One intra-op thread by default: this MLP is too small to gain from more. Measured on 2 cores
# (batch 64, 784-128-64-10, AdamW): 0.5 ms a step with 1 thread vs 0.7-0.9 ms with 2 (median);
# while other jobs keep the cores busy, 1.5 ms vs 18-36 ms (mean), as the two OpenMP threads
# wait on each other.
THREADS = 1
SEEDS = 3  # on digits, whose 360 test images put one image at 0.28 points of accuracy


@dataclass(frozen=True)
class Recipe:
    """One optimizer configuration of the demo."""

    key: str  # the name --optimizers takes
    label: str
    cls: str  # class name in fusedopt, and in torch.optim when ``torch_twin``
    kwargs: dict[str, Any]
    torch_twin: bool = False
    schedule: bool = False  # linear warmup, then cosine decay to 0, per step
    hessian_every: int = 0  # Sophia: a Gauss-Newton-Bartlett update_hessian() every k steps
    schedule_free: bool = False  # train() before steps, eval() (the averaged x) to evaluate
    post: float | None = None  # the blog post's test accuracy after 5 epochs on MNIST (%)


# The post's settings for SGD, Adam and AdamW. Lion and Sophia move every weight by about lr per
# step, so their papers advise a smaller lr than AdamW's and a larger decay: 3e-4 (at their
# default 1e-4 they reach only 91-93% on digits in 5 epochs, 1e-3 is no better than 3e-4).
# LAMB's lr is relative to each layer's norm: 1e-2 was the best of 1e-3/3e-3/1e-2/3e-2 (3e-2
# diverges). Sophia's clip is active nearly always here, so rho (0.04, its default) hardly matters.
RECIPES = (
    Recipe("sgd", "SGD", "SGD", {"lr": 0.01}, torch_twin=True, post=93.6),
    Recipe("momentum", "SGD+momentum", "SGD", {"lr": 0.01, "momentum": 0.9}, torch_twin=True),
    Recipe("adam", "Adam", "Adam", {"lr": 1e-3}, torch_twin=True, post=97.4),
    Recipe(
        "adamw", "AdamW", "AdamW", {"lr": 1e-3, "weight_decay": 0.01}, torch_twin=True, post=97.6
    ),
    # 8-bit states (state_dtype="int8_blockwise"): the two hidden matrices' moments in 8 bits,
    # the output layer's and the biases' (under 4,096 elements each) in fp32.
    Recipe(
        "adamw-8bit",
        "AdamW 8-bit",
        "AdamW",
        {"lr": 1e-3, "weight_decay": 0.01, "state_dtype": "int8_blockwise"},
    ),
    Recipe(
        "adamw-cosine",
        "AdamW+cosine",
        "AdamW",
        {"lr": 1e-3, "weight_decay": 0.01},
        torch_twin=True,
        schedule=True,
        post=97.8,
    ),
    Recipe("lion", "Lion", "Lion", {"lr": 3e-4, "weight_decay": 0.1}),
    Recipe("lamb", "LAMB", "LAMB", {"lr": 1e-2, "weight_decay": 0.01}),
    # torch.optim.Adafactor's defaults: lr caps the relative step size (Adafactor's docstring)
    Recipe("adafactor", "Adafactor", "Adafactor", {"lr": 1e-2}, torch_twin=True),
    Recipe(
        "sophia",
        "Sophia",
        "Sophia",
        {"lr": 3e-4, "rho": 0.04, "weight_decay": 0.1},
        hessian_every=10,
    ),
    # Schedule-Free AdamW's recommended lr is several times AdamW's (its default: 2.5e-3), with
    # a short warmup instead of a schedule.
    Recipe(
        "sfadamw",
        "SF-AdamW",
        "ScheduleFreeAdamW",
        {"lr": 2.5e-3, "weight_decay": 0.01, "warmup_steps": 20},
        schedule_free=True,
    ),
    # Muon on the two hidden matrices, AdamW (the post's settings) on the output layer and the
    # biases; Muon's lr is the Muon repository's 0.02.
    Recipe(
        "muon",
        "Muon",
        "MuonWithAuxAdam",
        {"muon": {"lr": 0.02, "weight_decay": 0.01}, "adam": {"lr": 1e-3, "weight_decay": 0.01}},
    ),
)
WARMUP_FRACTION = 0.05  # AdamW+cosine: linear warmup over the first 5% of the steps


# -- data -------------------------------------------------------------------------------------
@dataclass
class Data:
    name: str  # "digits" or "MNIST"
    description: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_IDX_DTYPES = {
    0x08: torch.uint8,
    0x09: torch.int8,
    0x0B: torch.int16,
    0x0C: torch.int32,
    0x0D: torch.float32,
    0x0E: torch.float64,
}


def read_idx(path: Path) -> Tensor:
    """An IDX file (the MNIST format, optionally gzipped) as a tensor of its stored shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise CLIError(f"cannot read {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise CLIError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    count = math.prod(shape)
    itemsize = dtype.itemsize
    if len(raw) != header + count * itemsize:
        raise CLIError(
            f"{path}: header says shape {tuple(shape)} ({header + count * itemsize} "
            f"bytes), the file has {len(raw)} bytes"
        )
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    data = torch.frombuffer(bytearray(raw[header:]), dtype=dtype)
    if itemsize > 1:  # IDX is big-endian
        data = data.view(torch.uint8).view(-1, itemsize).flip(1).contiguous().view(dtype)
    return data.reshape(shape)


def _find_idx(data_dir: Path, name: str) -> Path:
    # Also the dotted names some mirrors use (train-images.idx3-ubyte).
    dotted = name.replace("-idx", ".idx")
    for cand in (name, name + ".gz", dotted, dotted + ".gz"):
        if (data_dir / cand).is_file():
            return data_dir / cand
    raise CLIError(
        f"--data-dir {data_dir}: missing {name} (or {name}.gz). MNIST needs the four "
        f"IDX files {', '.join(MNIST_FILES)}; fusedopt never downloads data."
    )


def load_mnist(data_dir: str, quick: bool) -> Data:
    """MNIST from the four standard IDX files in ``data_dir``."""
    d = Path(data_dir)
    if not d.is_dir():
        raise CLIError(f"--data-dir {data_dir}: no such directory")
    paths = [_find_idx(d, name) for name in MNIST_FILES]  # all checked before any is read
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    for x, y, px, py in (
        (x_train, y_train, paths[0], paths[1]),
        (x_test, y_test, paths[2], paths[3]),
    ):
        if x.dim() != 3 or y.dim() != 1 or len(x) != len(y):
            raise CLIError(
                f"{px.name} and {py.name} do not match: images {tuple(x.shape)}, "
                f"labels {tuple(y.shape)}"
            )
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) <= 9:
            raise CLIError(
                f"{py.name}: labels must be digits 0-9, found {int(y.min())}..{int(y.max())}"
            )
    if quick:
        x_train, y_train = x_train[: QUICK_MNIST[0]], y_train[: QUICK_MNIST[0]]
        x_test, y_test = x_test[: QUICK_MNIST[1]], y_test[: QUICK_MNIST[1]]
    h, w = x_train.shape[1:]
    return _normalized(
        "MNIST",
        f"MNIST {h}x{w} ({d}): {len(x_train):,} train / {len(x_test):,} test images",
        x_train.flatten(1),
        y_train,
        x_test.flatten(1),
        y_test,
    )


def load_digits() -> Data:
    """scikit-learn's 8x8 digits (1,797 images): a fixed 80/20 split, the same for every seed."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise CLIError(
            "the default data set ships with scikit-learn: pip install scikit-learn "
            "(or pass --data-dir DIR with the MNIST IDX files)"
        ) from None
    digits = sk_load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_test = math.ceil(len(x) / 5)
    test, train = perm[:n_test], perm[n_test:]
    return _normalized(
        "digits",
        f"scikit-learn digits 8x8: {len(train):,} train / {len(test):,} test images",
        x[train],
        y[train],
        x[test],
        y[test],
    )


def _normalized(
    name: str, description: str, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor
) -> Data:
    x_train, x_test = x_train.float(), x_test.float()
    mean, std = x_train.mean(), x_train.std()
    return Data(
        name,
        description,
        (x_train - mean) / std,
        y_train.long(),
        (x_test - mean) / std,
        y_test.long(),
    )


# -- training ---------------------------------------------------------------------------------
def make_model(in_features: int, seed: int) -> nn.Module:
    """The post's DigitClassifier (in -> 128 -> 64 -> 10, ReLU), initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(in_features, HIDDEN[0]),
            nn.ReLU(),
            nn.Linear(HIDDEN[0], HIDDEN[1]),
            nn.ReLU(),
            nn.Linear(HIDDEN[1], 10),
        )


def muon_groups(model: nn.Module, muon: dict[str, Any], adam: dict[str, Any]) -> list[dict]:
    """MuonWithAuxAdam's groups for make_model's network: the hidden layers' weights to Muon,
    the output layer and the biases to AdamW."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    hidden = [m.weight for m in linears[:-1]]
    rest = [p for p in model.parameters() if all(p is not h for h in hidden)]
    return [
        {"params": hidden, "use_muon": True, **muon},
        {"params": rest, "use_muon": False, **adam},
    ]


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class Result:
    """One training run: an optimizer recipe, an implementation, a seed."""

    recipe: Recipe
    impl: str  # "fusedopt (cpu)" or "torch.optim"
    seed: int
    losses: list[float] = field(default_factory=list)  # training loss of every step
    evals: list[tuple[float, float]] = field(default_factory=list)  # (epoch, test accuracy %)
    train_seconds: float = 0.0
    steps: int = 0
    params: Tensor | None = None  # the final weights, flattened


@dataclass
class Group:
    """The runs of one recipe and implementation over the seeds."""

    recipe: Recipe
    impl: str
    runs: list[Result] = field(default_factory=list)

    @property
    def is_torch(self) -> bool:
        return self.impl == "torch.optim"

    def mean_losses(self) -> Tensor:
        return torch.tensor([r.losses for r in self.runs]).mean(0)

    def mean_evals(self) -> tuple[list[float], list[float]]:
        acc = torch.tensor([[a for _, a in r.evals] for r in self.runs]).mean(0)
        return [e for e, _ in self.runs[0].evals], acc.tolist()

    def final_accuracy(self) -> tuple[float, float]:
        """Mean and sample standard deviation over the seeds of the final test accuracy."""
        acc = torch.tensor([r.evals[-1][1] for r in self.runs], dtype=torch.float64)
        return acc.mean().item(), (acc.std().item() if len(acc) > 1 else 0.0)

    def last_epoch_loss(self, steps_per_epoch: int) -> float:
        return self.mean_losses()[-steps_per_epoch:].mean().item()

    def seconds(self) -> float:
        return sum(r.train_seconds for r in self.runs)

    def steps_per_second(self) -> float:
        return sum(r.steps for r in self.runs) / self.seconds()


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def train(
    recipe: Recipe,
    use_torch: bool,
    data: Data,
    cfg: argparse.Namespace,
    seed: int,
    tick: Callable[[Result, int], None],
) -> Result:
    """Train a fresh model with ``recipe``; ``tick(result, epoch)`` reports progress.

    ``seed`` fixes the initial weights, the batches and Sophia's sampled labels, so runs with
    the same seed differ only in their optimizer.
    """
    model = make_model(data.x_train.shape[1], seed)
    params = list(model.parameters())
    if recipe.cls == "MuonWithAuxAdam":
        opt = fusedopt.MuonWithAuxAdam(muon_groups(model, **recipe.kwargs), backend=cfg.backend)
        impl = f"fusedopt ({cfg.resolved})"
    elif use_torch:
        opt = getattr(torch.optim, recipe.cls)(params, **recipe.kwargs)
        impl = "torch.optim"
    else:
        opt = getattr(fusedopt, recipe.cls)(params, backend=cfg.backend, **recipe.kwargs)
        impl = f"fusedopt ({cfg.resolved})"
    n, bs = len(data.x_train), cfg.batch_size
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * cfg.epochs
    sched = None
    if recipe.schedule:
        warmup = max(1, round(WARMUP_FRACTION * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, warmup))
    order = torch.Generator().manual_seed(1_000 + seed)  # the batches
    sampler = torch.Generator().manual_seed(2_000 + seed)  # Sophia's sampled labels
    eval_every = max(1, steps_per_epoch // EVALS_PER_EPOCH)
    res = Result(recipe, impl, seed)

    def evaluate() -> float:
        if not recipe.schedule_free:
            return accuracy(model, data.x_test, data.y_test)
        opt.eval()  # the averaged point x, what schedule-free training yields
        acc = accuracy(model, data.x_test, data.y_test)
        opt.train()
        return acc

    if recipe.schedule_free:
        opt.train()
    res.evals.append((0.0, evaluate()))
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=order)
        for start in range(0, n, bs):
            t0 = time.perf_counter()
            idx = perm[start : start + bs]
            xb, yb = data.x_train[idx], data.y_train[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.hessian_every:
                opt.step(bs=len(idx))
            else:
                opt.step()
            if sched is not None:
                sched.step()
            res.steps += 1
            if recipe.hessian_every and res.steps % recipe.hessian_every == 0:
                # Gauss-Newton-Bartlett: the gradient of the loss on labels sampled from the model.
                logits = model(xb)
                sampled = torch.multinomial(logits.detach().softmax(1), 1, generator=sampler)
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(logits, sampled.squeeze(1)).backward()
                opt.update_hessian()
            res.train_seconds += time.perf_counter() - t0
            res.losses.append(loss.item())
            if res.steps % eval_every == 0 or start + bs >= n:
                res.evals.append((res.steps / steps_per_epoch, evaluate()))
        tick(res, epoch + 1)
    if recipe.schedule_free:
        opt.eval()
    res.params = torch.cat([p.detach().flatten() for p in params])
    return res


# -- report -----------------------------------------------------------------------------------
def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _title(data: Data, cfg: argparse.Namespace) -> str:
    seeds = (
        f"seed {cfg.seed}"
        if cfg.seeds == 1
        else (f"mean of {cfg.seeds} seeds ({cfg.seed}-{cfg.seed + cfg.seeds - 1})")
    )
    return (
        f"MLP {data.x_train.shape[1]}-{HIDDEN[0]}-{HIDDEN[1]}-10, {_n(cfg.epochs, 'epoch')}, "
        f"batch {cfg.batch_size}, {seeds}"
    )


def plot(groups: list[Group], data: Data, cfg: argparse.Namespace, path: Path) -> None:
    plt = pyplot()
    from matplotlib.lines import Line2D

    steps_per_epoch = math.ceil(len(data.x_train) / cfg.batch_size)
    window = max(1, steps_per_epoch // 3)
    colors = plt.get_cmap("tab10").colors
    keys = list(dict.fromkeys(g.recipe.key for g in groups))
    color = {k: colors[i % len(colors)] for i, k in enumerate(keys)}
    # Later lines a little thinner, so a curve another one covers (Adam under AdamW: a decay of
    # lr * 0.01 per step changes little in 5 epochs) still shows at its edges.
    width = {k: 3.4 - 1.6 * i / max(1, len(keys) - 1) for i, k in enumerate(keys)}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(13, 5.6), dpi=110)
    low = 100.0
    # fusedopt: wide colored lines; torch.optim: thin black dashes on top, so where the two
    # coincide the dashes run along the middle of the colored line.
    for g in sorted(groups, key=lambda g: g.is_torch):
        if g.is_torch:
            style = {"color": "black", "ls": (0, (2, 2)), "lw": 0.9}
        else:
            style = {"color": color[g.recipe.key], "lw": width[g.recipe.key], "alpha": 0.9}
        losses = g.mean_losses()
        k = min(window, len(losses))
        smooth = losses.unfold(0, k, 1).mean(1)
        x = torch.arange(k, len(losses) + 1) / steps_per_epoch
        ax_loss.plot(x.tolist(), smooth.tolist(), **style)
        ex, ey = g.mean_evals()
        ax_acc.plot(ex, ey, **style)
        low = min(low, *[a for e, a in zip(ex, ey) if e >= min(1.0, cfg.epochs / 2)])
    handles = [
        Line2D(
            [],
            [],
            color=color[k],
            lw=2.6,
            alpha=0.9,
            label=next(g.recipe.label for g in groups if g.recipe.key == k),
        )
        for k in keys
    ]
    if any(g.is_torch for g in groups):
        handles.append(
            Line2D(
                [], [], color="black", ls=(0, (2, 2)), lw=0.9, label="torch.optim (same settings)"
            )
        )
    if data.name == "MNIST":
        for g in groups:
            if g.recipe.post is not None and not g.is_torch:
                ax_acc.plot(
                    [EPOCHS],
                    [g.recipe.post],
                    marker="*",
                    ms=13,
                    ls="none",
                    color=color[g.recipe.key],
                    markeredgecolor="black",
                    clip_on=False,
                    zorder=5,
                )
                low = min(low, g.recipe.post)
        handles.append(
            Line2D(
                [],
                [],
                marker="*",
                ms=13,
                ls="none",
                color="0.6",
                markeredgecolor="black",
                label="blog post, 5 epochs",
            )
        )
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel(f"training loss (cross-entropy, mean of {window} steps)")
    ax_loss.set_title("Training loss")
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title("Test accuracy")
    ax_acc.set_ylim(max(0.0, math.floor(low) - 3), 100.5)
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel("epoch")
        ax.grid(True, which="major", alpha=0.35)
        ax.set_xlim(0, max(cfg.epochs, EPOCHS if data.name == "MNIST" else 0))
        ax.tick_params(labelsize=10)
    fig.suptitle(
        f"Digit classifier on {data.description.split(' (')[0].split(':')[0]}: "
        f"{_title(data, cfg)}; "
        f"fusedopt on the {cfg.resolved} backend",
        fontsize=12,
    )
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 5), fontsize=10, frameon=False
    )
    fig.tight_layout(rect=(0, 0.1 if len(handles) > 5 else 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def report(groups: list[Group], data: Data, cfg: argparse.Namespace, skipped: list[str]) -> str:
    steps_per_epoch = math.ceil(len(data.x_train) / cfg.batch_size)
    mnist = data.name == "MNIST"
    rows = []
    for g in groups:
        post = f"{g.recipe.post:.1f}%" if g.recipe.post is not None and not g.is_torch else ""
        acc, std = g.final_accuracy()
        rows.append(
            [
                g.recipe.label if not g.is_torch else "",
                g.impl,
                f"{g.last_epoch_loss(steps_per_epoch):.4f}",
                f"{acc:.1f}%",
                f"{std:.1f}" if cfg.seeds > 1 else "",
                post,
                f"{g.seconds():.2f} s",
                f"{g.steps_per_second():,.0f}",
            ]
        )
    header = [
        "optimizer",
        "implementation",
        "train loss",
        "test acc",
        "± (std)",
        "post (MNIST)" if mnist else "post (MNIST*)",
        "time",
        "steps/s",
    ]
    if cfg.seeds == 1:
        header.pop(4)
        for r in rows:
            r.pop(4)
    n_test = len(data.x_test)
    out = [
        f"Digit classifier: {_title(data, cfg)}, {_n(cfg.threads, 'thread')}",
        f"data: {data.description}",
        "",
        table(header, rows, right=tuple(range(2, len(header)))),
        "",
        "train loss: mean over the last epoch. test acc: after the last epoch"
        + (f", mean and standard deviation over {cfg.seeds} seeds" if cfg.seeds > 1 else "")
        + f" (one test image is {100 / n_test:.2g} points).",
        "time: training steps only, all seeds (evaluation excluded); Sophia's includes its "
        "Hessian pass every 10 steps.",
    ]
    if mnist:
        out.append("post: the blog post's test accuracy after 5 epochs on MNIST.")
    else:
        out.append(
            "* post: the blog post's test accuracy after 5 epochs on MNIST (60,000 28x28 "
            "images), for reference only:\n  this run uses the 8x8 digits set (--data-dir "
            "DIR with the MNIST IDX files to compare like with like)."
        )
    if any(g.recipe.schedule for g in groups):
        out.append(
            "AdamW+cosine: linear warmup over the first 5% of steps, then cosine decay to "
            "0 (the post: cosine, no warmup)."
        )
    twins = [
        (a, b)
        for a in groups
        for b in groups
        if not a.is_torch and b.is_torch and a.recipe.key == b.recipe.key
    ]
    if twins:
        rows = []
        for a, b in twins:
            pairs = list(zip(a.runs, b.runs))
            dp = max((x.params - y.params).abs().max().item() for x, y in pairs)  # type: ignore[operator]
            dl = max(abs(u - v) for x, y in pairs for u, v in zip(x.losses, y.losses))
            da = max(abs(u[1] - v[1]) for x, y in pairs for u, v in zip(x.evals, y.evals))
            rows.append(
                [
                    a.recipe.label,
                    f"{dp:.2e}",
                    f"{dl:.2e}",
                    f"{da:.2f}",
                    f"{a.steps_per_second() / b.steps_per_second():.2f}x",
                ]
            )
        out += [
            "",
            "fusedopt vs torch.optim, same initial weights and batches (max over steps and seeds):",
            table(
                [
                    "optimizer",
                    "max |d param|",
                    "max |d loss|",
                    "max |d acc| (pts)",
                    "steps/s ratio",
                ],
                rows,
                right=(1, 2, 3, 4),
            ),
        ]
    if skipped:
        out += [
            "",
            f"skipped: {', '.join(skipped)} (not in this version of fusedopt, "
            f"{fusedopt.__version__})",
        ]
    return "\n".join(out)


# -- command ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train the blog post's digit classifier for 5 epochs with every optimizer "
        "(fusedopt's, and torch.optim's where it has one), print a table and write a PNG of the "
        "loss and accuracy curves. Never downloads anything.",
    )
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="read MNIST from the IDX files in DIR (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
        "optionally .gz); default: scikit-learn's 8x8 digits",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=".",
        help="where to write demo.png (default: the current directory)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a run of under a minute: one seed, and MNIST cut to "
        f"{QUICK_MNIST[0]:,} train / {QUICK_MNIST[1]:,} test images",
    )
    parser.add_argument(
        "--optimizers",
        metavar="LIST",
        help=f"comma-separated subset of {','.join(r.key for r in RECIPES)} (default: all)",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        choices=BACKEND_NAMES,
        help="fusedopt backend (default: auto, the best available)",
    )
    parser.add_argument("--no-torch", action="store_true", help="skip the torch.optim runs")
    parser.add_argument(
        "--epochs",
        metavar="N",
        type=positive_int,
        default=EPOCHS,
        help=f"epochs (default: {EPOCHS}, as in the post)",
    )
    parser.add_argument(
        "--batch-size",
        metavar="N",
        type=positive_int,
        help="batch size (default: 16 on digits, about 90 steps an epoch; "
        "64 on MNIST, as is usual)",
    )
    parser.add_argument(
        "--seed",
        metavar="N",
        type=int,
        default=0,
        help="first seed of the initial weights and batches (default: 0)",
    )
    parser.add_argument(
        "--seeds",
        metavar="N",
        type=positive_int,
        help=f"number of seeds to average (default: {SEEDS} on digits, whose "
        "360 test images make one seed's accuracy noisy; 1 on MNIST and with "
        "--quick)",
    )
    parser.add_argument(
        "--threads",
        metavar="N",
        type=positive_int,
        default=THREADS,
        help=f"torch intra-op threads while training (default: {THREADS}; the "
        "model is too small to gain from more)",
    )
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    keys = choose(parser, args.optimizers, [r.key for r in RECIPES], "optimizer")
    args.resolved = check_backend(parser, args.backend)
    return run(PROG, lambda a: _main(a, keys), args)


def _main(args: argparse.Namespace, keys: list[str]) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, keys)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, keys: list[str]) -> int:
    out = out_dir(args.out)
    data = load_mnist(args.data_dir, args.quick) if args.data_dir else load_digits()
    if args.batch_size is None:
        args.batch_size = 64 if data.name == "MNIST" else 16
    if args.seeds is None:
        args.seeds = 1 if args.quick or data.name == "MNIST" else SEEDS
    recipes = [r for r in RECIPES if r.key in keys]
    skipped = [r.label for r in recipes if optimizer_class(r.cls) is None]
    groups = [
        Group(r, "torch.optim" if t else f"fusedopt ({args.resolved})")
        for r in recipes
        if optimizer_class(r.cls) is not None
        for t in ((False, True) if r.torch_twin and not args.no_torch else (False,))
    ]
    if not groups:
        raise CLIError(f"nothing to run: {', '.join(skipped)} not in this version of fusedopt")
    progress = Progress()
    total = len(groups) * args.seeds
    progress.done(
        f"demo: {total} runs on {data.description}, {_n(args.epochs, 'epoch')}, "
        f"batch {args.batch_size}, {_n(args.seeds, 'seed')}"
    )
    done = 0
    for g in groups:
        for seed in range(args.seed, args.seed + args.seeds):
            done += 1
            who = (
                f"[{done:>{len(str(total))}}/{total}] {g.recipe.label:<13} "
                f"{'torch.optim' if g.is_torch else 'fusedopt':<12} seed {seed}"
            )

            def tick(res: Result, epoch: int, who: str = who) -> None:
                line = (
                    f"{who}  epoch {epoch}/{args.epochs}  loss {res.losses[-1]:.4f}  "
                    f"test {res.evals[-1][1]:.1f}%  {res.train_seconds:.1f} s"
                )
                (progress.done if epoch == args.epochs else progress.update)(line)

            g.runs.append(train(g.recipe, g.is_torch, data, args, seed, tick))
    png = out / "demo.png"
    drawn = have_matplotlib()
    if drawn:
        plot(groups, data, args, png)
    print(report(groups, data, args, skipped))
    print(f"\nwrote {png}" if drawn else f"\nplot skipped (no matplotlib): {PLOT_HINT}")
    return 0
