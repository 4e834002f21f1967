"""`python -m fusedopt race`: optimizers racing to the minimum of a 2-D loss landscape.

Every racer is a fusedopt optimizer updating one 2-element parameter (x, y) from the same start,
with the gradient from autograd; the trajectories are drawn over the landscape's contours.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

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
    positive_float,
    positive_int,
    pyplot,
    run,
    table,
)

PROG = "python -m fusedopt race"
STEPS = 2000
QUICK_STEPS = 500
TOL = 1e-3
SOPHIA_HESSIAN_EVERY = 10


@dataclass(frozen=True)
class Landscape:
    """A 2-D test function with its minimum value 0, a start, a view and per-optimizer lrs."""

    key: str
    title: str
    f: Callable[[Tensor, Tensor], Tensor]
    start: tuple[float, float]
    minima: tuple[tuple[float, float], ...]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    # The learning rate of each racer, picked by hand on this landscape: about the best of a
    # 3x grid (1e-3, 3e-3, 1e-2, ...) that stays stable. SGD on Rosenbrock diverges from 2.5e-3
    # (the curvature is ~1000 at the minimum, ~2000 at the start); at 2e-3 its first steps fling
    # it across the landscape (f up to 500) and it lands near the minimum by chance.
    lrs: dict[str, float]
    legend: str = "upper left"  # where the legend hides no path
    # A zoom on (x0, x1, y0, y1), drawn at (left, bottom, width, height) in axes fractions,
    # where the paths differ most but overlap at full scale.
    zoom: tuple[float, float, float, float] | None = None
    zoom_at: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


LANDSCAPES = {
    "rosenbrock": Landscape(
        "rosenbrock",
        "Rosenbrock  (1-x)² + 100(y-x²)²: a curved narrow ravine",
        lambda x, y: (1 - x) ** 2 + 100 * (y - x * x) ** 2,
        (-1.5, 2.0),
        ((1.0, 1.0),),
        (-2.0, 2.0),
        (-1.0, 3.0),
        {
            "sgd": 1e-3,
            "momentum": 1e-3,
            "adam": 3e-2,
            "adamw": 3e-2,
            "lion": 3e-3,
            "lamb": 1e-2,
            "sophia": 1e-2,
            "sfadamw": 0.1,
            "adafactor": 0.1,
            "muon": 0.01,
        },
        zoom=(-1.62, -1.22, 1.55, 2.12),
        zoom_at=(0.36, 0.56, 0.38, 0.37),
    ),
    "ravine": Landscape(
        "ravine",
        "Ravine  0.05x² + 5y²: curvatures 100x apart",
        lambda x, y: 0.05 * x * x + 5 * y * y,
        (-4.0, 1.0),
        ((0.0, 0.0),),
        (-4.5, 1.0),
        (-1.5, 1.5),
        {
            "sgd": 0.19,
            "momentum": 0.03,
            "adam": 0.1,
            "adamw": 0.1,
            "lion": 0.01,
            "lamb": 0.03,
            "sophia": 0.01,
            "sfadamw": 0.1,
            "adafactor": 0.1,
            "muon": 0.03,
        },
        legend="lower right",
    ),
    "saddle": Landscape(
        "saddle",
        "Saddle  0.1(x²-1)² + 5y²: two minima, a flat saddle at (0, 0)",
        lambda x, y: 0.1 * (x * x - 1) ** 2 + 5 * y * y,
        (0.001, 1.5),
        ((1.0, 0.0), (-1.0, 0.0)),
        (-1.5, 1.5),
        (-1.0, 1.8),
        {
            "sgd": 0.1,
            "momentum": 0.03,
            "adam": 0.03,
            "adamw": 0.03,
            "lion": 0.01,
            "lamb": 0.01,
            "sophia": 0.01,
            "sfadamw": 0.1,
            "adafactor": 0.1,
            "muon": 0.03,
        },
        legend="upper right",
    ),
    "himmelblau": Landscape(
        "himmelblau",
        "Himmelblau  (x²+y-11)² + (x+y²-7)²: four minima",
        lambda x, y: (x * x + y - 11) ** 2 + (x + y * y - 7) ** 2,
        (0.0, -0.5),
        ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126)),
        (-5.0, 5.0),
        (-5.0, 5.0),
        {
            "sgd": 3e-3,
            "momentum": 1e-3,
            "adam": 3e-2,
            "adamw": 3e-2,
            "lion": 1e-2,
            "lamb": 1e-2,
            "sophia": 1e-2,
            "sfadamw": 0.1,
            "adafactor": 0.1,
            "muon": 0.01,
        },
    ),
}


@dataclass(frozen=True)
class Racer:
    key: str
    label: str
    cls: str  # class name in fusedopt
    kwargs: dict[str, Any]
    # the shape of the param holding the point (x, y): Muon orthogonalizes matrices only
    shape: tuple[int, ...] = (2,)


# Decay off except for AdamW (the post's 0.01): on a landscape it only moves the minimum.
RACERS = (
    Racer("sgd", "SGD", "SGD", {}),
    Racer("momentum", "Momentum", "SGD", {"momentum": 0.9}),
    Racer("adam", "Adam", "Adam", {}),
    Racer("adamw", "AdamW", "AdamW", {"weight_decay": 0.01}),
    Racer("lion", "Lion", "Lion", {"weight_decay": 0.0}),
    Racer("lamb", "LAMB", "LAMB", {"weight_decay": 0.0}),
    Racer("sophia", "Sophia", "Sophia", {"weight_decay": 0.0}),
    Racer("sfadamw", "SF-AdamW", "ScheduleFreeAdamW", {"weight_decay": 0.0}),
    Racer("adafactor", "Adafactor", "Adafactor", {}),
    Racer("muon", "Muon", "Muon", {"weight_decay": 0.0}, shape=(1, 2)),
)


@dataclass
class Trace:
    racer: Racer
    lr: float
    path: list[tuple[float, float]] = field(default_factory=list)  # positions, start included
    losses: list[float] = field(default_factory=list)
    reached: int | None = None  # first step after which f < tol
    diverged: bool = False

    def distance(self, minima: tuple[tuple[float, float], ...]) -> float:
        x, y = self.path[-1]
        return min(math.hypot(x - mx, y - my) for mx, my in minima)

    def length(self) -> float:
        """Length of the path to arrival (all of it if the racer never arrives)."""
        path = self.path if self.reached is None else self.path[: self.reached + 1]
        return sum(math.dist(a, b) for a, b in zip(path, path[1:]))


def race_one(
    racer: Racer, land: Landscape, lr: float, steps: int, tol: float, backend: str
) -> Trace:
    """Run ``racer`` for ``steps`` steps from the landscape's start."""
    p = torch.nn.Parameter(torch.tensor(land.start, dtype=torch.float32).reshape(racer.shape))
    xy = p.view(-1)
    opt = optimizer_class(racer.cls)(  # type: ignore[misc]
        [p], lr=lr, backend=backend, **racer.kwargs
    )
    if hasattr(opt, "train"):
        opt.train()  # schedule-free: the path is y, where the gradients are taken
    trace = Trace(racer, lr, path=[land.start])
    is_sophia = racer.cls == "Sophia"
    for step in range(steps + 1):
        loss = land.f(xy[0], xy[1])
        value = loss.item()
        trace.losses.append(value)
        if not math.isfinite(value) or max(abs(v) for v in trace.path[-1]) > 1e6:
            trace.diverged = True
            break
        if trace.reached is None and value < tol:
            trace.reached = step
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if is_sophia:
            # The Hessian estimate is refreshed from the gradient itself every k steps (there
            # are no labels to sample on a landscape), then the step sees batch size 1.
            if step % SOPHIA_HESSIAN_EVERY == 0:
                opt.update_hessian()
            opt.step(bs=1)
        else:
            opt.step()
        x, y = xy.detach().tolist()
        trace.path.append((x, y))
    return trace


def _grid(land: Landscape, n: int = 300) -> tuple[Any, Any, Any]:
    xs = torch.linspace(*land.xlim, n, dtype=torch.float64)
    ys = torch.linspace(*land.ylim, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return gx.numpy(), gy.numpy(), land.f(gx, gy).numpy()


def _draw_paths(ax: Any, traces: list[Trace], colors: Any, every: int) -> None:
    for i, t in enumerate(traces):
        xs, ys = zip(*t.path)
        c = colors[i % len(colors)]
        ax.plot(xs, ys, color=c, lw=1.6, zorder=3)
        # a dot every `every` steps: how far each racer gets in the same number of steps
        ax.plot(
            xs[every::every], ys[every::every], ls="none", marker="o", ms=3.5, color=c, zorder=3
        )
        ax.plot(xs[-1], ys[-1], marker="o", ms=7, color=c, markeredgecolor="black", zorder=4)


def _draw_landscape(ax: Any, land: Landscape) -> None:
    from matplotlib.colors import LogNorm

    gx, gy, z = _grid(land)
    floor = max(float(z.min()), 1e-3)
    levels = torch.logspace(math.log10(floor), math.log10(float(z.max())), 25).numpy()
    z = z.clip(min=floor)
    ax.contourf(gx, gy, z, levels=levels, norm=LogNorm(), cmap="Greys_r", alpha=0.55)
    ax.contour(gx, gy, z, levels=levels, norm=LogNorm(), colors="0.35", linewidths=0.5, alpha=0.6)
    points = {
        "minimum": (zip(*land.minima), "*", 16, "gold"),
        "start": (land.start, "o", 9, "white"),
    }
    for label, (xy, marker, size, color) in points.items():
        style = {"marker": marker, "ms": size, "color": color, "markeredgecolor": "black"}
        ax.plot(*xy, ls="none", zorder=5, label=label, **style)
    ax.set_xlim(*land.xlim)
    ax.set_ylim(*land.ylim)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_aspect("equal" if _aspect_ok(land) else "auto")


def _aspect_ok(land: Landscape) -> bool:
    w, h = land.xlim[1] - land.xlim[0], land.ylim[1] - land.ylim[0]
    return 0.4 <= w / h <= 2.5


def _legend_label(t: Trace, tol: float) -> str:
    if t.diverged:
        return f"{t.racer.label}, lr {t.lr:g}: diverged"
    if t.reached is not None:
        return f"{t.racer.label}, lr {t.lr:g}: f<{tol:g} at step {t.reached}"
    return f"{t.racer.label}, lr {t.lr:g}: f={t.losses[-1]:.2g} at the end"


def plot(traces: list[Trace], land: Landscape, steps: int, tol: float, path: Path) -> None:
    plt = pyplot()
    colors = plt.get_cmap("tab10").colors
    fig, (ax, ax_loss) = plt.subplots(
        1, 2, figsize=(14, 6.4), dpi=110, gridspec_kw={"width_ratios": [1, 1]}
    )
    _draw_landscape(ax, land)
    every = max(1, steps // 20)
    _draw_paths(ax, traces, colors, every)
    if land.zoom is not None:
        inset = ax.inset_axes(land.zoom_at)
        _draw_landscape(inset, land)
        _draw_paths(inset, traces, colors, every)
        inset.set_xlim(*land.zoom[:2])
        inset.set_ylim(*land.zoom[2:])
        inset.set_aspect("auto")
        inset.set_xlabel("")
        inset.set_ylabel("")
        inset.tick_params(labelsize=7)
        inset.set_title("the first steps, zoomed", fontsize=9)
        ax.indicate_inset_zoom(inset, edgecolor="0.2")
    for i, t in enumerate(traces):
        c = colors[i % len(colors)]
        ax_loss.plot(
            range(len(t.losses)),
            [max(v, 1e-12) for v in t.losses],
            color=c,
            lw=1.8,
            label=_legend_label(t, tol),
        )
    ax.set_title(land.title, fontsize=12)
    ax.plot([], [], ls="none", marker="o", ms=3.5, color="0.2", label=f"every {every} steps")
    ax.legend(loc=land.legend, fontsize=9.5, framealpha=0.85)
    ax_loss.axhline(tol, color="0.3", ls="--", lw=1, label=f"tolerance {tol:g}")
    ax_loss.set_yscale("log")
    ax_loss.set_xscale("symlog", linthresh=10)
    ax_loss.set_xlim(0, steps)
    ax_loss.set_xlabel("step (linear to 10, then log)")
    ax_loss.set_ylabel("f(x, y)  (minimum 0)")
    ax_loss.set_title("Loss along the way", fontsize=12)
    ax_loss.grid(True, which="major", alpha=0.35)
    ax_loss.legend(fontsize=9, loc="lower left", framealpha=0.9)
    fig.suptitle(
        f"{len(traces)} fusedopt optimizers from the same start {land.start}, {steps} steps",
        fontsize=13,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def animate(
    traces: list[Trace], land: Landscape, steps: int, tol: float, path: Path, frames: int
) -> None:
    plt = pyplot()
    from matplotlib.animation import FuncAnimation, PillowWriter

    colors = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(8.4, 5.6), dpi=80)
    _draw_landscape(ax, land)
    lines, heads = [], []
    for i, t in enumerate(traces):
        c = colors[i % len(colors)]
        (line,) = ax.plot([], [], color=c, lw=1.8, label=t.racer.label)
        (head,) = ax.plot([], [], marker="o", ms=6, color=c, markeredgecolor="black")
        lines.append(line)
        heads.append(head)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=10, frameon=False)
    title = ax.set_title("")
    fig.tight_layout()
    # Steps grow geometrically across frames: the first steps are where the paths differ most.
    marks = sorted({round(steps ** (k / (frames - 1))) for k in range(frames)} | {0})

    def draw(k: int) -> list[Any]:
        for t, line, head in zip(traces, lines, heads):
            upto = t.path[: k + 1]
            xs, ys = zip(*upto)
            line.set_data(xs, ys)
            head.set_data([xs[-1]], [ys[-1]])
        title.set_text(f"{land.title.split()[0]}: step {k}")
        return [*lines, *heads, title]

    anim = FuncAnimation(fig, draw, frames=marks, blit=False)
    anim.save(path, writer=PillowWriter(fps=12))
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Race fusedopt's optimizers from the same start to the minimum of a 2-D "
        "loss landscape; print the steps each needs to get f below a tolerance and write a "
        "contour plot of their paths.",
    )
    parser.add_argument(
        "--function",
        default="rosenbrock",
        choices=list(LANDSCAPES),
        help="the landscape (default: rosenbrock)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=".",
        help="where to write race.png (and race.gif) (default: current directory)",
    )
    parser.add_argument("--gif", action="store_true", help="also write an animated race.gif")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_STEPS} steps instead of {STEPS}, and a shorter GIF",
    )
    parser.add_argument(
        "--steps",
        metavar="N",
        type=positive_int,
        help=f"steps per optimizer (default: {STEPS}; --quick: {QUICK_STEPS})",
    )
    parser.add_argument(
        "--tol",
        metavar="TOL",
        type=positive_float,
        default=TOL,
        help=f"a racer arrives when f(x, y) < TOL (default: {TOL:g})",
    )
    parser.add_argument(
        "--optimizers",
        metavar="LIST",
        help=f"comma-separated subset of {','.join(r.key for r in RACERS)} (default: all)",
    )
    parser.add_argument(
        "--backend", default="auto", choices=BACKEND_NAMES, help="fusedopt backend (default: auto)"
    )
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.keys = choose(parser, args.optimizers, [r.key for r in RACERS], "optimizer")
    args.resolved = check_backend(parser, args.backend)
    return run(PROG, _main, args)


def _main(args: argparse.Namespace) -> int:
    if args.gif and not have_matplotlib():
        raise CLIError(f"--gif needs matplotlib: {PLOT_HINT}")  # asked for: refuse before the run
    out = out_dir(args.out)
    land = LANDSCAPES[args.function]
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    chosen = [r for r in RACERS if r.key in args.keys]
    racers = [r for r in chosen if optimizer_class(r.cls) is not None]
    skipped = [r.label for r in chosen if optimizer_class(r.cls) is None]
    if not racers:
        raise CLIError(f"nothing to run: {', '.join(skipped)} not in this version of fusedopt")
    progress = Progress()
    traces = []
    for i, r in enumerate(racers, 1):
        progress.update(f"[{i}/{len(racers)}] {r.label} ...")
        traces.append(race_one(r, land, land.lrs[r.key], steps, args.tol, args.backend))
    progress.done(f"race: {len(racers)} optimizers, {steps} steps on {args.function}")
    rows = []
    for t in traces:
        final = "diverged" if t.diverged else f"{t.losses[-1]:.2e}"
        rows.append(
            [
                t.racer.label,
                f"{t.lr:g}",
                "-" if t.reached is None else str(t.reached),
                final,
                "" if t.diverged else f"{t.distance(land.minima):.4f}",
                "" if t.diverged else f"{t.length():.2f}",
            ]
        )
    print(
        f"{land.title}; start {land.start}, {steps} steps, fusedopt on the {args.resolved} "
        "backend\n"
    )
    print(
        table(
            [
                "optimizer",
                "lr",
                f"steps to f<{args.tol:g}",
                "final f",
                "distance to min",
                "path length",
            ],
            rows,
            right=(1, 2, 3, 4, 5),
        )
    )
    print(
        "\nsteps to f<tol: the first step at which f is below the tolerance (- : never); "
        "distance: from the final point to the nearest minimum;\npath length: "
        "up to the arrival (all of it for those that never arrive)."
    )
    if skipped:
        print(f"skipped: {', '.join(skipped)} (not in this version of fusedopt)")
    png = out / "race.png"
    if not have_matplotlib():
        print(f"\nplot skipped (no matplotlib): {PLOT_HINT}")
        return 0
    plot(traces, land, steps, args.tol, png)
    print(f"\nwrote {png}")
    if args.gif:
        gif = out / "race.gif"
        progress.update("rendering race.gif ...")
        animate(traces, land, steps, args.tol, gif, frames=25 if args.quick else 60)
        progress.clear()
        print(f"wrote {gif}")
    return 0
