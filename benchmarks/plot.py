"""``--plot``: achieved GB/s per implementation, one group of bars per workload and optimizer, with
the memory bandwidth measured alongside each group drawn across it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# Fixed colours so a row keeps its colour across plots; fusedopt stands out, torch in greys/blue,
# the peers (Note [peers] in optimizers.py) in green and purple.
IMPL_COLORS = {
    "fusedopt": "#d62728",
    "fusedopt-reference": "#ff9896",
    "torch-forloop": "#c7c7c7",
    "torch-foreach": "#8c8c8c",
    "torch-fused": "#1f77b4",
    "torch-compiled": "#aec7e8",
    "deepspeed-cpuadam": "#2ca02c",
    "deepspeed-cpulion": "#2ca02c",
    "lion-pytorch": "#9467bd",
}
_EXTRA_COLORS = ["#ff7f0e", "#17becf", "#bcbd22", "#e377c2", "#8c564b", "#98df8a"]
GROUPS_PER_PANEL = 4  # beyond this the group labels crowd each other at a readable size


def _group_label(r: dict[str, Any], busy_share: float) -> str:
    est = " (est.)" if r.get("bytes_is_estimate") else ""
    tensors = f"{r['tensors']} tensor" + ("s" if r["tensors"] != 1 else "")
    label = (
        f"{r['optimizer']} on {r['workload']} ({r['dtype']})\n"
        f"{r['params'] / 1e6:.1f}M params, {tensors}\n"
        f"{r['bytes_per_param']:g} B/param{est}, bw {r['bandwidth_gb_per_s']:.0f} GB/s"
    )
    share = r.get("other_cpu_share")
    if share is not None and share > busy_share:
        label += f"\n(!) busy: others took {100 * share:.0f}% CPU"
    return label


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the bar chart of ``rows`` (one run's CSV rows) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .bench import BUSY_SHARE

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["optimizer"], r["workload"]), []).append(r)
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    extra = iter(_EXTRA_COLORS * 4)
    colors = {i: IMPL_COLORS.get(i) or next(extra) for i in impls}

    # Rows of at most GROUPS_PER_PANEL groups, balanced, sharing one GB/s scale.
    n_panels = math.ceil(len(groups) / GROUPS_PER_PANEL)
    per_panel = math.ceil(len(groups) / n_panels)
    items = list(groups.values())
    panels = [items[i : i + per_panel] for i in range(0, len(items), per_panel)]
    top = max(max(r["gb_per_s"], r["bandwidth_gb_per_s"]) for r in rows)
    width = 0.8 / max(len(g) for g in items)

    fig, axes = plt.subplots(
        n_panels, 1, figsize=(2.9 * per_panel + 1.5, 4.4 * n_panels + 0.9), squeeze=False,
        layout="constrained",
    )  # fmt: skip
    for ax, panel in zip(axes[:, 0], panels):
        for x, grp in enumerate(panel):
            n = len(grp)
            for j, r in enumerate(grp):
                pos = x + (j - (n - 1) / 2) * width
                impl = r["impl"]
                ax.bar(
                    pos, r["gb_per_s"], width * 0.92, color=colors[impl], edgecolor="black",
                    linewidth=0.4,
                )  # fmt: skip
                ratio = r.get("ratio_to_torch_fused")
                text = f"{r['gb_per_s']:.1f}"
                if ratio is not None and impl.startswith("fusedopt"):
                    text += f"\n{ratio:.2f}x"
                ax.text(
                    pos, r["gb_per_s"] + top * 0.012, text, ha="center", va="bottom", fontsize=8,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.6, "alpha": 0.85},
                )  # fmt: skip
            ax.hlines(
                grp[0]["bandwidth_gb_per_s"], x - 0.45, x + 0.45, colors="black",
                linestyles="--", linewidth=1.3,
            )  # fmt: skip
        ax.set_xticks(range(len(panel)), [_group_label(g[0], BUSY_SHARE) for g in panel])
        ax.tick_params(axis="x", labelsize=8.5)
        ax.set_xlim(-0.55, per_panel - 0.45)
        ax.set_ylim(0, top * 1.2)
        ax.set_ylabel("achieved GB/s")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)

    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i], ec="black", lw=0.4) for i in impls]
    handles.append(plt.Line2D([0], [0], color="black", linestyle="--", linewidth=1.3))
    env = rows[0]
    fig.suptitle(
        "Optimizer step throughput: bytes model / median step time, against the memory bandwidth "
        "measured alongside\n"
        f"{env['machine']}, {env['threads']} threads, torch {env['torch_version']}, fusedopt "
        f"{env['fusedopt_version']} ({env['git_commit']}), run {env['run_id']}",
        fontsize=10,
    )
    fig.legend(
        handles, [*impls, "measured bandwidth"], loc="outside lower center", ncols=len(handles),
        fontsize=8.5, frameon=False,
        title="numbers on the bars: GB/s and, for fusedopt, speed vs torch-fused",
        title_fontsize=8.5,
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
