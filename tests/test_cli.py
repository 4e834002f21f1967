"""`python -m fusedopt demo | race | env`: quick runs, their outputs, and clear errors.

The runs are cut down (1 epoch at batch 64, a few hundred race steps) to keep this file under a
minute on two busy cores; what they check is that each command runs end to end and says what it
should, not the accuracy of a full run.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import fusedopt
from fusedopt.__main__ import main as fusedopt_main
from fusedopt.cli import demo, env, race


def _needs(*modules: str) -> pytest.MarkDecorator:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


plots = _needs("matplotlib")
digits = _needs("matplotlib", "sklearn")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# skipped, with a note, by fusedopt versions without them
NEW_OPTIMIZERS = ("Lion", "LAMB", "Sophia", "Muon")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # These models are tiny: on two cores that other jobs keep busy, two OpenMP threads spend
    # more time waiting for each other than computing (10-40 ms per backward instead of 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000


# -- env --------------------------------------------------------------------------------------
def test_env_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert env.main([]) == 0
    out = capsys.readouterr().out
    assert f"fusedopt     {fusedopt.__version__}" in out
    assert f"torch        {torch.__version__}" in out
    for line in ("triton ", "CUDA archs ", "GPU ", "backends:"):
        assert line in out
    for name, info in fusedopt.backends().items():
        assert f"  {name:<9}  {'yes' if info.available else 'no '}  {info.reason}" in out


def test_env_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert env.main(["--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fusedopt"]["version"] == fusedopt.__version__
    assert info["torch"]["version"] == torch.__version__
    assert info["backends"] == {
        n: {"available": b.available, "reason": b.reason} for n, b in fusedopt.backends().items()
    }
    assert info["auto"]["cpu"] in ("cpu", "reference")
    assert len(info["gpus"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if fusedopt._ext._C is not None:
        assert info["simd"]["chosen"] == fusedopt._ext._C.cpu_capability()


# -- demo -------------------------------------------------------------------------------------
SMALL = ["--epochs", "1", "--batch-size", "64"]


@digits
def test_demo_quick_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--quick", *SMALL, "--out", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    assert _is_png(tmp_path / "demo.png")
    out = cap.out
    assert "scikit-learn digits 8x8" in out and "post (MNIST*)" in out
    for label in ("SGD", "SGD+momentum", "Adam", "AdamW", "AdamW+cosine"):
        assert f"\n{label} " in out
    assert out.count("torch.optim") >= 5
    for figure in ("93.6%", "97.4%", "97.6%", "97.8%"):
        assert figure in out
    assert "fusedopt vs torch.optim" in out
    missing = [n for n in NEW_OPTIMIZERS if not hasattr(fusedopt, n)]
    assert ("skipped: " + ", ".join(missing) in out) if missing else "skipped" not in out
    for n in NEW_OPTIMIZERS:
        if hasattr(fusedopt, n):
            assert f"\n{n} " in out
    assert "epoch 1/1" in cap.err  # progress goes to stderr


@_needs("sklearn")
@pytest.mark.parametrize("key", ["momentum", "adamw-cosine"])
def test_demo_fusedopt_matches_torch(key: str) -> None:
    """The two implementations see the same weights and batches: their curves coincide."""
    data = demo.load_digits()
    cfg = argparse.Namespace(
        batch_size=64,
        epochs=1,
        backend="auto",
        resolved=fusedopt._dispatch.resolve("auto", torch.device("cpu")),
    )
    recipe = next(r for r in demo.RECIPES if r.key == key)
    ours = demo.train(recipe, False, data, cfg, 0, lambda *a: None)
    theirs = demo.train(recipe, True, data, cfg, 0, lambda *a: None)
    assert ours.steps == theirs.steps == 23
    torch.testing.assert_close(ours.params, theirs.params, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        torch.tensor(ours.losses), torch.tensor(theirs.losses), rtol=0, atol=1e-5
    )


def _write_idx(path: Path, data: torch.Tensor) -> None:
    header = bytes([0, 0, 0x08, data.dim()]) + b"".join(n.to_bytes(4, "big") for n in data.shape)
    raw = header + data.to(torch.uint8).numpy().tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _fake_mnist(d: Path, n_train: int = 256, n_test: int = 64, skip: str = "") -> None:
    """Learnable stand-ins for the MNIST files: a bright 7x7 block whose row is the label."""
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=g)
        images = torch.randint(0, 60, (n, 28, 28), generator=g)
        for i, y in enumerate(labels.tolist()):
            r = 2 * y + 2
            images[i, r : r + 7, 10:17] = 255
        gz = ".gz" if prefix == "train" else ""  # plain and gzipped files both work
        for name, t in (
            (f"{prefix}-images-idx3-ubyte", images),
            (f"{prefix}-labels-idx1-ubyte", labels),
        ):
            if name != skip:
                _write_idx(d / (name + gz), t)


@plots
def test_demo_mnist_idx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_mnist(tmp_path)
    out_dir = tmp_path / "out" / "nested"
    rc = demo.main(
        [
            "--data-dir",
            str(tmp_path),
            "--optimizers",
            "sgd,adam",
            "--no-torch",
            *SMALL,
            "--out",
            str(out_dir),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "MNIST 28x28" in out and "256 train / 64 test" in out
    assert "post (MNIST)" in out and "MLP 784-128-64-10" in out
    assert "torch.optim" not in out.split("post: ")[0]
    assert _is_png(out_dir / "demo.png")


def test_read_idx_big_endian(tmp_path: Path) -> None:
    values = torch.tensor([[1, -2, 300], [70000, 0, -1]], dtype=torch.int32)
    header = bytes([0, 0, 0x0C, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    (tmp_path / "x").write_bytes(header + values.numpy().astype(">i4").tobytes())
    assert torch.equal(demo.read_idx(tmp_path / "x"), values)


@pytest.mark.parametrize("missing", ["t10k-labels-idx1-ubyte", "train-images-idx3-ubyte"])
def test_demo_missing_idx_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    _fake_mnist(tmp_path, skip=missing)
    assert demo.main(["--data-dir", str(tmp_path), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"missing {missing}" in err and "never downloads" in err
    assert not (tmp_path / "demo.png").exists()


def test_demo_bad_idx_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x40abc")
    assert demo.main(["--data-dir", str(tmp_path), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte" in err and "bytes" in err


def test_demo_no_such_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    assert "no such directory" in capsys.readouterr().err


def test_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_text("")
    assert race.main(["--steps", "5", "--out", str(tmp_path / "f")]) == 1
    assert "not a directory" in capsys.readouterr().err


@_needs("sklearn")
def test_demo_without_matplotlib(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # not importable
    argv = ["--quick", *SMALL, "--optimizers", "sgd", "--no-torch", "--out", str(tmp_path)]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "\nSGD " in out  # the table
    assert "plot skipped (no matplotlib): pip install matplotlib" in out
    assert not (tmp_path / "demo.png").exists()


# -- race -------------------------------------------------------------------------------------
@plots
def test_race_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert race.main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert _is_png(tmp_path / "race.png")
    assert not (tmp_path / "race.gif").exists()
    assert "Rosenbrock" in out and "500 steps" in out and "steps to f<0.001" in out
    for r in race.RACERS:
        assert (f"\n{r.label} " in out) == hasattr(fusedopt, r.cls)


def test_race_without_matplotlib(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    argv = ["--quick", "--optimizers", "adam", "--out", str(tmp_path)]
    assert race.main(argv) == 0
    out = capsys.readouterr().out
    assert "\nAdam " in out and "plot skipped (no matplotlib): pip install matplotlib" in out
    assert not (tmp_path / "race.png").exists()
    assert race.main([*argv, "--gif"]) == 1  # asked for explicitly: refused before the run
    assert "--gif needs matplotlib" in capsys.readouterr().err


@plots
def test_race_gif(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = race.main(
        [
            "--quick",
            "--steps",
            "100",
            "--function",
            "saddle",
            "--gif",
            "--optimizers",
            "sgd,adam",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    assert (tmp_path / "race.gif").read_bytes()[:6] in (b"GIF89a", b"GIF87a")
    assert "race.gif" in capsys.readouterr().out


@pytest.mark.parametrize(
    "racer", [r for r in race.RACERS if hasattr(fusedopt, r.cls)], ids=lambda r: r.key
)
def test_race_arrives_on_the_ravine(racer: race.Racer) -> None:
    land = race.LANDSCAPES["ravine"]
    t = race.race_one(racer, land, land.lrs[racer.key], 1000, 1e-3, "auto")
    assert not t.diverged and t.reached is not None and t.reached < 1000
    assert t.path[0] == land.start and len(t.path) == 1001


# -- bad arguments ----------------------------------------------------------------------------
BAD_ARGS = [
    pytest.param(demo, ["--epochs", "0"], "expected a positive integer", id="demo-epochs"),
    pytest.param(
        demo, ["--optimizers", "adam,bogus"], "unknown optimizer 'bogus'", id="demo-optimizer"
    ),
    pytest.param(demo, ["--backend", "tpu"], "invalid choice: 'tpu'", id="demo-backend"),
    pytest.param(demo, ["--bogus"], "unrecognized arguments: --bogus", id="demo-flag"),
    pytest.param(race, ["--function", "sphere"], "invalid choice: 'sphere'", id="race-function"),
    pytest.param(race, ["--steps", "-3"], "expected a positive integer", id="race-steps"),
    pytest.param(race, ["--tol", "0"], "expected a positive number", id="race-tol"),
    pytest.param(race, ["--optimizers", ""], "unknown optimizer", id="race-optimizers"),
    pytest.param(env, ["--jsn"], "unrecognized arguments: --jsn", id="env-flag"),
]


@pytest.mark.parametrize(("module", "argv", "message"), BAD_ARGS)
def test_bad_arguments(
    module: object, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        module.main(argv)  # type: ignore[attr-defined]
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "usage: python -m fusedopt" in err


def test_unavailable_backend(capsys: pytest.CaptureFixture[str]) -> None:
    gone = [n for n, b in fusedopt.backends().items() if not b.available]
    if not gone:
        pytest.skip("every backend is available here")
    with pytest.raises(SystemExit) as exc:
        demo.main(["--backend", gone[0]])
    assert exc.value.code == 2
    assert f"backend {gone[0]!r} is not available here" in capsys.readouterr().err


def test_dispatcher(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        fusedopt_main(["race", "--function", "nope"])
    assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        fusedopt_main(["demo", "--help"])
    assert exc.value.code == 0
    assert "--data-dir DIR" in capsys.readouterr().out


def test_python_dash_m(tmp_path: Path) -> None:
    """The real entry point, in a fresh interpreter."""
    run = subprocess.run(
        [sys.executable, "-m", "fusedopt", "env", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=os.environ.copy(),
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["fusedopt"]["version"] == fusedopt.__version__
