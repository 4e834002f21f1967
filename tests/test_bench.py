"""`python -m fusedopt bench`: the harness (table, CSV, plot, arguments) and the bytes models.

Timings are not checked (they depend on the machine); what is checked is that every row is
computed from its own numbers consistently and that the bytes models match their definitions.
"""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedopt
from fusedopt.benchmarks import bench, optimizers, workloads
from fusedopt.schedules import warmup_cosine

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- bytes models -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model, dtype, expected",
    [
        pytest.param(optimizers.adamw_bytes, torch.float32, 28, id="adamw-fp32"),
        pytest.param(optimizers.adamw_bytes, torch.bfloat16, 14, id="adamw-bf16"),
        pytest.param(optimizers.sgd_momentum_bytes, torch.float32, 20, id="sgd-fp32"),
        pytest.param(optimizers.sgd_momentum_bytes, torch.bfloat16, 10, id="sgd-bf16"),
        pytest.param(optimizers.lion_bytes, torch.float32, 20, id="lion-fp32"),
        pytest.param(optimizers.momentum_8bit_bytes, torch.float32, 14 + 8 / 256, id="q8-fp32"),
        pytest.param(optimizers.sophia_bytes, torch.float32, 24, id="sophia-fp32"),
        pytest.param(optimizers.lamb_bytes, torch.float32, 40, id="lamb-fp32"),
        pytest.param(optimizers.adafactor_bytes, torch.float32, 12, id="adafactor-fp32"),
        # unscale + clip + AdamW (Note [train loop]): needed, then what each row moves
        pytest.param(optimizers.train_loop_bytes, torch.float32, 32, id="train-loop-fp32"),
        # bf16 params with fp32 master weights and moments, and torch's copy recipe
        pytest.param(optimizers.master_weights_bytes, torch.bfloat16, 28, id="master-bf16"),
        pytest.param(
            optimizers.master_weights_torch_moved, torch.bfloat16, 40, id="master-torch-bf16"
        ),
        pytest.param(optimizers.train_loop_bytes, torch.bfloat16, 16, id="train-loop-bf16"),
        pytest.param(optimizers.muon_bytes, torch.float32, 32, id="muon"),
        pytest.param(optimizers.muon_bytes, torch.bfloat16, 14, id="muon-bf16"),
        pytest.param(optimizers.train_loop_fusedopt_moved, torch.float32, 32, id="loop-fusedopt"),
        pytest.param(optimizers.train_loop_torch_fused_moved, torch.float32, 48, id="loop-fused"),
        pytest.param(
            optimizers.train_loop_torch_foreach_moved, torch.float32, 100, id="loop-foreach"
        ),
    ],
)
def test_bytes_model(model, dtype, expected):
    assert model(dtype) == expected


def test_optimizer_table():
    specs = {s.name: s for s in optimizers.OPTIMIZERS}
    assert specs["AdamW"].bytes_model is optimizers.adamw_bytes
    assert specs["SGD"].kwargs["momentum"] > 0  # the 20 B/param model assumes a momentum buffer
    assert not any(s.estimate for s in optimizers.OPTIMIZERS)  # every model is exact today
    names = [s.name for s in optimizers.available()]
    assert {"AdamW", "SGD", "train-loop"} <= set(names)
    assert all(hasattr(fusedopt, n) for n in names if specs[n].rows is None)
    with_rows = {n for n in names if specs[n].rows}
    assert {"train-loop", "AdamW-master", "AdamW-8bit", "Lion-8bit", "SGD-8bit"} <= with_rows
    impls = optimizers.implementations(specs["AdamW"])
    assert list(impls)[1:] == ["torch-forloop", "torch-foreach", "torch-fused"]
    loop = specs["train-loop"]
    assert loop.bytes_model is optimizers.train_loop_bytes and loop.workloads == ("gpt",)
    assert list(optimizers.implementations(loop))[1:] == ["torch-fused", "torch-foreach"]
    assert set(loop.moved) == {"fusedopt", "torch-fused", "torch-foreach"}


def test_available_checks_requirements():
    spec = optimizers.OptimizerSpec("x", optimizers.adamw_bytes, ("gpt",))
    assert spec.requires == ("x",)
    for requires, ok in [
        (("AdamW", "schedules.WarmupCosine"), True),
        (("AdamW", "schedules.Nope"), False),
        (("nope.WarmupCosine",), False),
    ]:
        spec = optimizers.OptimizerSpec("x", optimizers.adamw_bytes, ("gpt",), requires=requires)
        assert optimizers.available((spec,)) == ([spec] if ok else [])


@pytest.fixture
def one_thread():
    """One torch thread (as the quick run): a parallel region stalls when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_train_loop_rows_do_the_same_work(one_thread):
    """Every train-loop row runs a real AMP iteration on the same scaled grads: no step skipped,
    clipping active, the same lr schedule and the same params after a few steps."""
    spec = next(s for s in optimizers.OPTIMIZERS if s.name == "train-loop")
    params, grads = workloads.workloads(quick=True)["gpt"].make(seed=0)
    loops = {}
    for name, factory in optimizers.implementations(spec).items():
        ps = [p.clone() for p in params]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        loops[name] = loop = factory(ps)
        assert isinstance(loop, optimizers.TrainLoop)
        scale = loop.scaler.get_scale()
        assert scale == 2.0**16
        for _ in range(optimizers.SCHEDULE_WARMUP_STEPS + 2):  # through warmup into the cosine
            loop.prepare()
            assert all(
                torch.equal(p.grad, g * scale) for p, g in zip(ps, grads)
            )  # scaled grads, as backward leaves them
            loop.step()
        assert loop.scaler.get_scale() == scale  # no inf found, no step skipped
    ours = loops[next(iter(loops))]
    assert not bool(ours.opt.step_skipped)
    assert float(ours.opt.last_grad_norm) > 2 * optimizers.CLIP_NORM  # clipping is active
    lr = warmup_cosine(
        optimizers.SCHEDULE_WARMUP_STEPS + 2,
        optimizers.TRAIN_LOOP_LR,
        optimizers.SCHEDULE_WARMUP_STEPS,
        optimizers.SCHEDULE_TOTAL_STEPS,
    )
    assert float(ours.opt.param_groups[0]["lr"]) == pytest.approx(lr, rel=1e-6)
    # fusedopt leaves the scaled grads as they were (GradScaler's check pass writes them back
    # unchanged); torch's unscale_ and clip_grad_norm_ rewrite them
    assert all(torch.equal(p.grad, g) for p, g in zip(ours.params, ours.scaled_grads))
    for name in ("torch-fused", "torch-foreach"):
        theirs = loops[name]
        assert theirs.opt.param_groups[0]["lr"] == pytest.approx(lr, rel=1e-6)
        assert not torch.equal(theirs.params[0].grad, theirs.scaled_grads[0])
        for a, b in zip(ours.params, theirs.params):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- workloads --------------------------------------------------------------------------------
def test_gpt_shapes_default():
    shapes = workloads.gpt_shapes()
    n = sum(math.prod(s) for s in shapes)
    assert 140 <= len(shapes) <= 160
    assert 24e6 <= n <= 26e6
    assert shapes == workloads.gpt_shapes()  # deterministic
    assert {len(s) for s in shapes} == {1, 2}  # vectors and matrices


def test_workloads():
    full, quick = workloads.workloads(), workloads.workloads(quick=True)
    assert list(full) == list(quick) == ["flat", "gpt", "tiny", "tiny-flat", "gpt-bf16", "gpt-2d"]
    assert full["flat"].tensors == 1 and full["flat"].params == 64 * 2**20
    assert full["tiny"].shapes == full["tiny-flat"].shapes == ((1024,),) * 2000
    # tiny-flat: the same values as tiny, each list the views of one buffer, end to end
    for ts, again in zip(quick["tiny-flat"].make(seed=0), quick["tiny"].make(seed=0)):
        assert all(torch.equal(a, b) for a, b in zip(ts, again))
        assert all(a.data_ptr() + 4 * a.numel() == b.data_ptr() for a, b in zip(ts, ts[1:]))
        assert ts[0]._base is not None and ts[0]._base is ts[-1]._base
    assert (
        full["gpt-bf16"].dtype == torch.bfloat16 and full["gpt-bf16"].shapes == full["gpt"].shapes
    )
    assert full["gpt-2d"].shapes == tuple(s for s in full["gpt"].shapes if len(s) == 2)
    assert all(quick[k].params < full[k].params for k in full)
    params, grads = quick["gpt"].make(seed=0)
    again, _ = quick["gpt"].make(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(params, again))
    assert all(bool((g != 0).all()) for g in grads)  # no kernel sees a zero grad


# -- timing helpers ---------------------------------------------------------------------------
def test_percentile_matches_numpy_default():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    np = pytest.importorskip("numpy")
    for q in (0, 10, 50, 90, 100):
        assert bench.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))


def test_round_robin_rotates_the_order():
    calls: list[str] = []
    fns = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    samples = bench.time_round_robin(fns, 3, bench.Progress(9, stream=io.StringIO()), "t")
    assert calls == list("abcbcacab")
    assert all(len(v) == 3 for v in samples.values())


def test_round_robin_prepare_is_untimed(monkeypatch):
    """prepare[name] runs right before each call of fns[name], outside the timed span."""
    clock = [0]
    monkeypatch.setattr(bench.time, "perf_counter_ns", lambda: clock[0])
    calls: list[str] = []

    def tick(n: str, ns: int):
        def f():
            calls.append(n)
            clock[0] += ns

        return f

    fns = {"a": tick("a", 5), "b": tick("b", 7)}
    prepare = {"a": tick("prep-a", 10**9)}
    progress = bench.Progress(4, stream=io.StringIO())
    samples = bench.time_round_robin(fns, 2, progress, "t", prepare)
    assert calls == ["prep-a", "a", "b", "b", "prep-a", "a"]
    assert samples == {"a": [5e-9, 5e-9], "b": [7e-9, 7e-9]}


# -- the command ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One real `python -m fusedopt bench --quick` run, its CSV and PNG."""
    d = tmp_path_factory.mktemp("bench")
    csv_path, png = d / "bench.csv", d / "bench.png"
    # One thread: the timings don't matter here, and a single thread isn't stalled at every
    # parallel region when the test machine is busy.
    cmd = [sys.executable, "-m", "fusedopt", "bench", "--quick", "--repeats", "2", "--threads", "1"]
    cmd += ["--csv", str(csv_path), "--plot", str(png)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=d)
    assert proc.returncode == 0, proc.stderr
    return proc, csv_path, png


def test_quick_run_table_and_progress(quick_run):
    proc, _, _ = quick_run
    out = proc.stdout
    for col in ("workload", "impl", "ms/step", "p10", "p90", "Mparam/s", "B/param", "GB/s", "%bw"):
        assert col in out
    for impl in ("fusedopt", "torch-forloop", "torch-foreach", "torch-fused"):
        assert impl in out
    assert "bench: [1/" in proc.stderr and "bench: done" in proc.stderr
    # the end-to-end rows are in the default run, with what they move and the ratio to torch
    loop = [ln for ln in out.splitlines() if ln.startswith("gpt ") and " train-loop " in ln]
    assert len(loop) == 3
    assert "train-loop on gpt: B/param is what the work needs (32)" in out
    assert "fusedopt 32, torch-fused 48, torch-foreach 100" in out
    assert "fusedopt vs torch's fastest row" in out
    assert any(ln.lstrip().startswith("train-loop gpt") for ln in out.splitlines())


def test_quick_run_csv(quick_run):
    _, csv_path, _ = quick_run
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == bench.COLUMNS
        rows = list(reader)
    specs = [s for s in optimizers.available()]
    wl = workloads.workloads(quick=True)
    expected = sum(
        len(optimizers.implementations(s)) + len(optimizers.peer_rows(s, w, peers=False))
        for s in specs
        for w in s.workloads
        if w in wl
    )
    assert len(rows) == expected
    assert len({r["run_id"] for r in rows}) == 1
    assert {r["workload"] for r in rows} == set(wl)
    for r in rows:
        w = wl[r["workload"]]
        spec = next(s for s in specs if s.name == r["optimizer"])
        params, med = int(r["params"]), float(r["ms_median"]) / 1e3
        assert params == w.params and int(r["tensors"]) == w.tensors
        assert r["dtype"] == w.dtype_name
        assert float(r["bytes_per_param"]) == spec.bytes_model(w.dtype)
        assert float(r["ms_p10"]) <= float(r["ms_median"]) <= float(r["ms_p90"])
        assert float(r["params_per_s"]) == pytest.approx(params / med, rel=1e-6)
        gbps = params * spec.bytes_model(w.dtype) / med / 1e9
        assert float(r["gb_per_s"]) == pytest.approx(gbps, rel=1e-6)
        bw = float(r["bandwidth_gb_per_s"])
        assert bw > 0 and float(r["frac_bandwidth"]) == pytest.approx(gbps / bw, rel=1e-6)
        assert int(r["threads"]) == 1 and r["torch_version"] == torch.__version__
        assert r["fusedopt_version"] == fusedopt.__version__ and r["git_commit"]
        assert r["other_cpu_share"] == "" or float(r["other_cpu_share"]) >= 0
    adamw_fp32 = [r for r in rows if r["optimizer"] == "AdamW" and r["dtype"] == "fp32"]
    assert {float(r["bytes_per_param"]) for r in adamw_fp32} == {28.0}
    loop = [r for r in rows if r["optimizer"] == "train-loop"]
    assert {r["impl"] for r in loop} == {"fusedopt", "torch-fused", "torch-foreach"}
    assert {(r["workload"], float(r["bytes_per_param"])) for r in loop} == {("gpt", 32.0)}
    bf16 = {(r["optimizer"], float(r["bytes_per_param"])) for r in rows if r["dtype"] == "bf16"}
    assert bf16 == {("AdamW", 14.0), ("AdamW-master", 28.0)}
    fused = [r for r in rows if r["impl"] == "torch-fused"]
    assert fused and all(float(r["ratio_to_torch_fused"]) == pytest.approx(1.0) for r in fused)


def test_quick_run_plot(quick_run):
    _, _, png = quick_run
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_plot_only_replots_last_run(quick_run, tmp_path, capsys):
    _, csv_path, _ = quick_run
    png = tmp_path / "again.png"
    assert bench.main(["--plot-only", "--csv", str(csv_path), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "torch-fused" in capsys.readouterr().out


def test_no_csv_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    default = bench.default_csv(quick=True)
    before = default.stat().st_mtime_ns if default.exists() else None
    argv = ["--quick", "--no-csv", "--repeats", "1", "--workloads", "tiny", "--optimizers", "AdamW"]
    threads = torch.get_num_threads()
    try:
        assert bench.main([*argv, "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert list(tmp_path.iterdir()) == []
    assert (default.stat().st_mtime_ns if default.exists() else None) == before
    out = capsys.readouterr().out
    assert "tiny" in out and "gpt" not in out


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["--repeats", "0"], "--repeats must be at least 1", id="repeats"),
        pytest.param(["--threads", "0"], "--threads must be between", id="threads"),
        pytest.param(["--workloads", "flat,nope"], "unknown workload 'nope'", id="workload"),
        pytest.param(["--optimizers", "Adamax"], "unknown optimizer 'Adamax'", id="optimizer"),
        pytest.param(["--plot", "x.jpg"], "--plot writes a PNG", id="plot-suffix"),
        pytest.param(["--no-csv", "--plot-only"], "--no-csv cannot be combined", id="no-csv"),
        pytest.param(["--repeats", "two"], "invalid int value", id="not-int"),
        pytest.param(["--frobnicate"], "unrecognized arguments", id="unknown-flag"),
    ],
)
def test_bad_arguments(argv, message, capsys):
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "usage:" in err


def test_select_train_loop(capsys):
    argv = ["--quick", "--no-csv", "--repeats", "1", "--workloads", "gpt,tiny"]
    threads = torch.get_num_threads()
    try:
        assert bench.main([*argv, "--optimizers", "train-loop", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("gpt ", "tiny "))]
    assert [(r[0], r[4], r[5]) for r in rows] == [
        ("gpt", "train-loop", "fusedopt"),
        ("gpt", "train-loop", "torch-fused"),
        ("gpt", "train-loop", "torch-foreach"),
    ]


def test_no_matching_rows(capsys):
    assert bench.main(["--quick", "--no-csv", "--workloads", "tiny", "--optimizers", "SGD"]) == 2
    assert "no chosen optimizer runs on the chosen workloads" in capsys.readouterr().err


def test_plot_only_without_csv(tmp_path, capsys):
    missing = tmp_path / "none.csv"
    assert bench.main(["--plot-only", "--csv", str(missing)]) == 2
    assert "no CSV at" in capsys.readouterr().err


def test_refuses_csv_with_other_columns(tmp_path, capsys):
    path = tmp_path / "old.csv"
    path.write_text("a,b,c\n1,2,3\n")
    assert bench.main(["--quick", "--csv", str(path), "--workloads", "tiny"]) == 2
    assert "other columns" in capsys.readouterr().err
    assert path.read_text() == "a,b,c\n1,2,3\n"


def test_help_exits_zero(capsys):
    assert bench.main(["--help"]) == 0
    assert "--plot-only" in capsys.readouterr().out


def test_table_marks_estimates_and_missing_ratios():
    env = {k: "x" for k in ("run_id", "git_commit", "machine", "torch_version", "fusedopt_version")}
    row = {
        **env, "threads": 2, "workload": "gpt", "dtype": "fp32", "optimizer": "New", "impl": "fusedopt",
        "params": 10**6, "tensors": 3, "ms_median": 1.0, "ms_p10": 0.9, "ms_p90": 1.2,
        "params_per_s": 1e9, "bytes_per_param": 40.0, "gb_per_s": 40.0, "bandwidth_gb_per_s": 50.0,
        "frac_bandwidth": 0.8, "ratio_to_torch_fused": None, "bytes_is_estimate": 1,
        "other_cpu_share": 0.0,
    }  # fmt: skip
    table = bench.format_table([row])
    line = next(ln for ln in table.splitlines() if ln.startswith("gpt "))
    assert "~40" in line and "80%" in line and "x " not in line
    assert "busy" not in table
    busy = bench.format_table([{**row, "other_cpu_share": 0.5}])
    assert "other processes took 50% of the CPUs" in busy


def test_table_notes_bytes_moved_and_torch_best():
    env = {k: "x" for k in ("run_id", "git_commit", "machine", "torch_version", "fusedopt_version")}
    base = {
        **env, "threads": 2, "workload": "gpt", "dtype": "fp32", "optimizer": "train-loop",
        "params": 10**6, "tensors": 3, "ms_p10": 0.9, "ms_p90": 1.2, "params_per_s": 1e9,
        "bytes_per_param": 32.0, "gb_per_s": 40.0, "bandwidth_gb_per_s": 50.0,
        "frac_bandwidth": 0.8, "ratio_to_torch_fused": 1.0, "bytes_is_estimate": 0,
        "other_cpu_share": 0.0,
    }  # fmt: skip
    rows = [
        {**base, "impl": impl, "ms_median": ms}
        for impl, ms in (("fusedopt", 10.0), ("torch-fused", 20.0), ("torch-foreach", 15.0))
    ]
    table = bench.format_table(rows)
    assert "train-loop on gpt: B/param is what the work needs (32)" in table
    assert "fusedopt 32, torch-fused 48, torch-foreach 100" in table
    line = next(ln for ln in table.splitlines() if ln.lstrip().startswith("train-loop gpt"))
    assert "1.50x" in line and "torch-foreach 15.00 ms" in line
    # a block without torch rows (or a model without a moved count) adds no note
    lion = [{**r, "optimizer": "Lion", "bytes_per_param": 20.0} for r in rows[:1]]
    assert "torch's fastest" not in bench.format_table(lion)
    assert "move more" not in bench.format_table(lion)


def test_default_csv_location():
    path = bench.default_csv(quick=False)
    root = Path(bench.__file__).resolve().parent.parent
    if (root / ".git").exists():
        assert path == root / "benchmarks" / "results" / "bench.csv"
    else:
        assert path == Path.cwd() / "bench.csv"


# -- peers (Note [peers] in optimizers.py): which rows exist, without timing or building them ----
@pytest.mark.parametrize("installed", [True, False])
def test_peer_rows_follow_installed_packages(installed, monkeypatch):
    real = optimizers.importlib.util.find_spec
    peer_modules = {p.module for p in optimizers.PEERS} - {"torch"}
    monkeypatch.setattr(
        optimizers.importlib.util,
        "find_spec",
        lambda name, *a: real(name, *a) if installed or name not in peer_modules else None,
    )
    if installed:
        for peer in optimizers.PEERS:
            if peer.module != "torch" and real(peer.module) is None:
                pytest.skip(f"{peer.pip} is not installed here")
    specs = {s.name: s for s in optimizers.OPTIMIZERS}
    rows = {
        (name, w, peers): sorted(optimizers.peer_rows(specs[name], w, peers))
        for name in ("AdamW", "Lion", "SGD", "LAMB", "AdamW-8bit", "Lion-8bit", "SGD-8bit")
        for w in ("gpt", "tiny")
        for peers in (False, True)
    }
    ds = ["deepspeed-cpuadam"] if installed else []
    assert rows["AdamW", "gpt", True] == sorted(ds + ["torch-compiled"])
    assert rows["AdamW", "tiny", True] == ds  # no torch.compile over 2,000 tensors
    assert rows["AdamW", "gpt", False] == []  # the slow peers need --peers
    assert rows["Lion", "gpt", False] == (["lion-pytorch"] if installed else [])
    assert rows["Lion", "gpt", True] == (["deepspeed-cpulion", "lion-pytorch"] if installed else [])
    assert rows["SGD", "gpt", True] == ["torch-compiled"]
    assert rows["LAMB", "gpt", True] == []
    for name in ("AdamW-8bit", "Lion-8bit", "SGD-8bit"):
        assert rows[name, "gpt", False] == (["bitsandbytes"] if installed else [])
    status = optimizers.peer_status(peers=False)
    if installed:
        assert status == [
            "deepspeed: installed, not run (slow setup: pass --peers)",
            "torch.compile: installed, not run (slow setup: pass --peers)",
        ]
        assert optimizers.peer_status(peers=True) == []
    else:
        assert status[:3] == [
            "deepspeed: not installed (pip install deepspeed)",
            "lion-pytorch: not installed (pip install lion-pytorch)",
            "bitsandbytes: not installed (pip install bitsandbytes)",
        ]
        assert optimizers.peer_status(peers=True)[:3] == status[:3]


def test_peer_setup_runs_once_before_timing():
    calls = []

    class Opt:
        def step(self):
            calls.append("step")

    timed = optimizers._Timed(lambda: calls.append("build") or Opt())
    assert calls == ["build", "step"] and timed.setup_seconds >= 0
    timed.step()
    assert calls == ["build", "step", "step"]


def test_table_notes_peer_setup_and_missing_peers():
    env = {k: "x" for k in ("run_id", "git_commit", "machine", "torch_version", "fusedopt_version")}
    row = {
        **env, "threads": 2, "workload": "gpt", "dtype": "fp32", "optimizer": "AdamW",
        "params": 10**6, "tensors": 3, "ms_median": 1.0, "ms_p10": 0.9, "ms_p90": 1.2,
        "params_per_s": 1e9, "bytes_per_param": 28.0, "gb_per_s": 28.0, "bandwidth_gb_per_s": 50.0,
        "frac_bandwidth": 0.56, "ratio_to_torch_fused": 1.0, "bytes_is_estimate": 0,
        "other_cpu_share": 0.0,
    }  # fmt: skip
    rows = [
        {**row, "impl": "fusedopt"},
        {**row, "impl": "deepspeed-cpuadam", "setup_s": 61.25},
    ]
    table = bench.format_table(rows, ["lion-pytorch: not installed (pip install lion-pytorch)"])
    assert "deepspeed-cpuadam on gpt 61.2 s" in table
    assert "Peers without rows: lion-pytorch: not installed (pip install lion-pytorch)." in table
    plain = bench.format_table(rows[:1])
    assert "Setup before the warm-up" not in plain and "Peers without rows" not in plain


def test_peers_flag_in_help(capsys):
    assert bench.main(["--help"]) == 0
    assert "--peers" in capsys.readouterr().out
