"""fusedopt inside PyTorch's distributed engine: DDP, ZeroRedundancyOptimizer, FSDP2
(``fully_shard``, DTensor params: Note [DTensor params] in fusedopt/optim/_dtensor.py) and
torch.distributed.checkpoint. Each test spawns 2 CPU processes talking over gloo, with a file
store in tmp_path; a failure in a worker fails the test with the worker's traceback.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fusedopt
from helpers import TOL_VS_TORCH, assert_close_ulp

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)

WORLD = 2
STEPS = 4
TOL = TOL_VS_TORCH[torch.float32]


def _worker(rank: int, tmp: str, fn: Callable[[int, str], None]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
    try:
        fn(rank, tmp)
        # Both ranks leave together: a rank that tears down its process group while the other
        # still talks to it (rank 0 consolidating ZeRO's state) can abort in gloo's threads.
        dist.barrier()
        gc.collect()  # DDP reducers go before the process group they use
    finally:
        dist.destroy_process_group()


def _spawn(fn: Callable[[int, str], None], tmp_path) -> None:  # noqa: ANN001
    mp.spawn(_worker, args=(str(tmp_path), fn), nprocs=WORLD, join=True)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same init on every rank
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5), torch.nn.Linear(5, 3)
    )


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(6, 8, generator=g), torch.randn(6, 3, generator=g)


def _train(model, opt, rank: int, steps: range, clip: float | None = None) -> list[list]:  # noqa: ANN001
    """Run `steps`; the full params after each step (gathered from DTensor shards)."""
    out = []
    for step in steps:
        x, y = _batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        out.append([_full(p) for p in model.parameters()])
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t.clone()


def _assert_runs_close(ours: list[list], theirs: list[list], what: str) -> None:
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close_ulp(x, y, TOL, f"{what}: step {step + 1} param[{i}]")


# -- DDP ------------------------------------------------------------------------------------


def _ddp(rank: int, tmp: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    runs = {}
    for name in ("fusedopt", "torch"):
        model = DDP(_model())
        if name == "fusedopt":
            opt = fusedopt.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1, foreach=False)
        runs[name] = _train(model, opt, rank, range(STEPS))
    _assert_runs_close(runs["fusedopt"], runs["torch"], f"DDP rank {rank}")


def test_ddp_matches_torch_adamw(tmp_path) -> None:  # noqa: ANN001
    _spawn(_ddp, tmp_path)


def _ddp_muon(rank: int, tmp: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    runs = {}
    for name in ("fusedopt", "torch"):
        model = DDP(_model())
        matrices = [p for p in model.parameters() if p.ndim == 2]
        if name == "fusedopt":
            opt = fusedopt.Muon(matrices, lr=0.02)
        else:
            opt = torch.optim.Muon(matrices, lr=0.02)
        runs[name] = _train(model, opt, rank, range(STEPS))
    # Muon's bf16 Newton-Schulz: within a few lr x 2^-8 (tests/test_muon.py), not fp32 ulps
    for step, (a, b) in enumerate(zip(runs["fusedopt"], runs["torch"])):
        for i, (x, y) in enumerate(zip(a, b)):
            bound = 2.0 * (step + 1) * 0.02 * 2 * 2**-8
            assert (x - y).abs().max().item() <= bound, f"DDP Muon rank {rank} step {step} [{i}]"


def test_ddp_matches_torch_muon(tmp_path) -> None:  # noqa: ANN001
    _spawn(_ddp_muon, tmp_path)


# -- ZeroRedundancyOptimizer ------------------------------------------------------------------


def _zero(rank: int, tmp: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(_model())
    zero = ZeroRedundancyOptimizer(
        model.parameters(), optimizer_class=fusedopt.AdamW, lr=0.01, weight_decay=0.1
    )
    # ZeRO shards whole params between the ranks: each rank's fusedopt.AdamW steps only its own.
    assert 0 < len(zero.optim.param_groups[0]["params"]) < len(list(model.parameters()))
    ours = _train(model, zero, rank, range(STEPS))

    ref_model = DDP(_model())
    ref = fusedopt.AdamW(ref_model.parameters(), lr=0.01, weight_decay=0.1)
    theirs = _train(ref_model, ref, rank, range(STEPS))
    _assert_runs_close(ours, theirs, f"ZeRO rank {rank}")

    zero.consolidate_state_dict(to=0)
    if rank == 0:
        sd = zero.state_dict()
        params = [p.detach().clone().requires_grad_() for p in ref_model.parameters()]
        loaded = fusedopt.AdamW(params, lr=0.5)
        loaded.load_state_dict(sd)
        assert loaded.param_groups[0]["lr"] == 0.01
        for i, (p, q) in enumerate(zip(params, ref_model.parameters())):
            for k, v in ref.state[q].items():
                assert torch.equal(loaded.state[p][k], v), f"consolidated state[{i}][{k}]"
        # ... and the loaded optimizer continues exactly as the unsharded one.
        for p, q in zip(params, ref_model.parameters()):
            g = torch.randn_like(p)
            p.grad, q.grad = g, g.clone()
        loaded.step()
        ref.step()
        for p, q in zip(params, ref_model.parameters()):
            assert torch.equal(p, q.detach())


def test_zero_redundancy_optimizer(tmp_path) -> None:  # noqa: ANN001
    _spawn(_zero, tmp_path)


# -- FSDP2 ------------------------------------------------------------------------------------


def _sharded_model(dtype: torch.dtype = torch.float32):  # noqa: ANN202
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    model = _model().to(dtype)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, mesh


def _fsdp_parity(rank: int, tmp: str) -> None:
    from torch.distributed.tensor import DTensor

    for clip in (None, 0.05):
        runs = {}
        for name in ("fusedopt", "torch"):
            model, _ = _sharded_model()
            params = list(model.parameters())
            assert all(isinstance(p, DTensor) for p in params)
            if name == "fusedopt":
                opt = fusedopt.AdamW(params, lr=0.01, weight_decay=0.1, max_grad_norm=clip)
                runs[name] = _train(model, opt, rank, range(STEPS))
                for p in params:
                    for k in ("exp_avg", "exp_avg_sq"):
                        s = opt.state[p][k]
                        assert isinstance(s, DTensor) and s.placements == p.placements, k
                        assert s.to_local().shape == p.to_local().shape
                if clip is not None:
                    norm = opt.last_grad_norm
            else:
                opt = torch.optim.AdamW(params, lr=0.01, weight_decay=0.1, foreach=False)
                runs[name] = _train(model, opt, rank, range(STEPS - 1), clip=clip)
                # The last step: the grad norm torch's clip_grad_norm_ sees on DTensors.
                x, y = _batch(rank, STEPS - 1)
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                if clip is not None:
                    ref_norm = torch.nn.utils.clip_grad_norm_(params, clip).full_tensor()
                opt.step()
                runs[name].append([_full(p) for p in params])
        _assert_runs_close(runs["fusedopt"], runs["torch"], f"FSDP2 clip={clip} rank {rank}")
        if clip is not None:
            assert ref_norm > clip  # the clip is active
            torch.testing.assert_close(norm, ref_norm.float(), rtol=1e-5, atol=0)


def test_fsdp2_matches_torch_adamw_with_and_without_clipping(tmp_path) -> None:  # noqa: ANN001
    _spawn(_fsdp_parity, tmp_path)


def _fsdp_errors(rank: int, tmp: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    model, mesh = _sharded_model()
    params = list(model.parameters())
    plain = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="mixes DTensor params"):
        fusedopt.AdamW([params[0], plain])
    opt = fusedopt.AdamW(params[:1])
    with pytest.raises(ValueError, match="mixes DTensor params"):
        opt.add_param_group({"params": [plain, params[1]]})
    assert len(opt.param_groups) == 1
    other = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("other",))
    assert other != mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    foreign = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 2), other, [Shard(0)]))
    with pytest.raises(ValueError, match="different device meshes"):
        fusedopt.SGD([params[0], foreign], lr=0.1)
    # A group edited by hand after construction: caught by the step, before any change.
    opt = fusedopt.AdamW(params[:2])
    opt.param_groups[0]["params"].append(plain)
    torch.nn.functional.mse_loss(model(torch.randn(2, 8)), torch.zeros(2, 3)).backward()
    plain.grad = torch.ones(3)
    before = [_full(p) for p in params[:2]]
    with pytest.raises(ValueError, match="mixes DTensor params"):
        opt.step()
    assert not opt.state
    for p, b in zip(params[:2], before):
        assert torch.equal(_full(p), b)


def test_fsdp2_bad_groups_raise_before_any_change(tmp_path) -> None:  # noqa: ANN001
    _spawn(_fsdp_errors, tmp_path)


def _fsdp_muon(rank: int, tmp: str) -> None:
    model, _ = _sharded_model()
    matrices = [p for p in model.parameters() if p.ndim == 2]
    opt = fusedopt.Muon(matrices, lr=0.02)
    torch.nn.functional.mse_loss(model(torch.randn(2, 8)), torch.zeros(2, 3)).backward()
    before = [_full(p) for p in matrices]
    with pytest.raises(NotImplementedError, match="sharded"):
        opt.step()
    for p, b in zip(matrices, before):
        assert torch.equal(_full(p), b)


def test_fsdp2_muon_raises_not_implemented(tmp_path) -> None:  # noqa: ANN001
    _spawn(_fsdp_muon, tmp_path)


def _fsdp_other_optimizers(rank: int, tmp: str) -> None:
    """SGD (momentum), Lion, Sophia, Adam and LAMB under FSDP2 == the same optimizer on an
    unsharded replica trained on the whole (both ranks') batch: elementwise updates on shards,
    and LAMB's trust ratios from norms all-reduced over the shards (Note [sharded LAMB])."""
    cases = [
        (fusedopt.SGD, {"lr": 0.05, "momentum": 0.9}),
        (fusedopt.Lion, {"lr": 0.01, "weight_decay": 0.1}),
        (fusedopt.Sophia, {"lr": 0.01}),
        (fusedopt.Adam, {"lr": 0.01, "amsgrad": True}),
        (fusedopt.LAMB, {"lr": 0.01, "weight_decay": 0.1}),
        (fusedopt.LAMB, {"lr": 0.02, "trust_clip": 1.0, "max_grad_norm": 0.05}),
        (fusedopt.AdamW, {"lr": 0.01, "state_dtype": torch.bfloat16}),
    ]
    for cls, kw in cases:
        model, _ = _sharded_model()
        opt = cls(model.parameters(), **kw)
        ours = _train(model, opt, rank, range(STEPS))
        if cls is fusedopt.LAMB:
            # Whole params are split across the ranks, so every trust ratio needs the
            # all-reduce (test_fsdp2_lamb_norms_are_reduced shows the result depends on it).
            p = next(iter(model.parameters()))
            assert p.to_local().numel() < p.numel()
        ref_model = _model()
        ref = cls(ref_model.parameters(), **kw)
        theirs = []
        for step in range(STEPS):
            ref.zero_grad()
            # FSDP2 averages the ranks' grads: the mean of the per-rank mean losses.
            loss = sum(
                torch.nn.functional.mse_loss(ref_model(x), y)
                for x, y in (_batch(r, step) for r in range(WORLD))
            )
            (loss / WORLD).backward()
            ref.step()
            theirs.append([p.detach().clone() for p in ref_model.parameters()])
        for step, (a, b) in enumerate(zip(ours, theirs)):
            for i, (x, y) in enumerate(zip(a, b)):
                # Different reduction orders of the grads: a looser fp32 tolerance.
                torch.testing.assert_close(
                    x,
                    y,
                    rtol=1e-5,
                    atol=1e-5,
                    msg=lambda m, w=f"{cls.__name__} step {step + 1} param[{i}]": f"{w}: {m}",
                )
    _fsdp_8bit_blocks(rank)  # in this worker: a process group of its own would cost seconds


def _fsdp_8bit_blocks(rank: int) -> None:
    """8-bit states under FSDP2 are quantized in blocks within each local shard (Note [8-bit
    optimizer states]): each rank's codes, absmax and param equal an unsharded 8-bit optimizer's
    stepping that shard alone, bit for bit. So a param whose shards hold whole blocks (w: 512
    elements a rank) steps as the unsharded one does; one whose shard boundary cuts a block (v:
    288 + 192 elements, so a rank with a shorter absmax row) steps differently, by design (no
    block spans two ranks); an empty shard (u: 300 + 0) has no blocks."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor

    torch.manual_seed(0)
    shapes = {"w": (16, 64), "v": (5, 96), "u": (1, 300)}
    model = torch.nn.ParameterDict({k: torch.randn(s) for k, s in shapes.items()})
    init = {k: p.detach().clone() for k, p in model.items()}
    full = {k: p.clone().requires_grad_() for k, p in init.items()}
    fully_shard(model)

    def chunk(t: torch.Tensor) -> torch.Tensor:  # this rank's rows, as FSDP2 shards them
        chunks = t.detach().chunk(WORLD)
        return chunks[rank] if rank < len(chunks) else t[:0]

    shard = {k: chunk(p).clone().requires_grad_() for k, p in full.items() if chunk(p).numel()}

    def assert_shards(
        ours: torch.optim.Optimizer, theirs: torch.optim.Optimizer, what: str
    ) -> None:
        for k, p in model.items():
            if k not in shard:  # an empty shard, with state as any other
                state = {j: t for j, t in ours.state[p].items() if j != "step"}
                assert p.to_local().numel() == 0 and state
                assert all(isinstance(t, DTensor) for t in state.values()), f"{what} {k}"
                continue
            assert torch.equal(p.to_local(), shard[k].detach()), f"{what} {k}: param"
            for key, t in theirs.state[shard[k]].items():
                got = ours.state[p][key]
                if key == "step":
                    continue
                assert isinstance(got, DTensor), f"{what} {k}: {key}"
                got = got.to_local()
                if key.endswith("_absmax"):  # a row of 2 on each rank: the first shard's blocks
                    assert got.shape == (1, 2), f"{what} {k}: {key} {tuple(got.shape)}"
                    got = got.reshape(-1)[: t.numel()]
                assert got.dtype == t.dtype and torch.equal(got, t), f"{what} {k}: {key}"

    cases = [
        (fusedopt.AdamW, {"lr": 0.01, "weight_decay": 0.1}),
        (fusedopt.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    ]
    for cls, kw in cases:
        with torch.no_grad():
            for k, p in model.items():
                full[k].copy_(init[k])
                p.to_local().copy_(chunk(init[k]))
                if k in shard:
                    shard[k].copy_(chunk(init[k]))
        opt = cls(model.values(), state_dtype="int8_blockwise", min_8bit_size=256, **kw)
        ref_full = cls(full.values(), state_dtype="int8_blockwise", min_8bit_size=256, **kw)
        ref_shard = cls(shard.values(), state_dtype="int8_blockwise", min_8bit_size=0, **kw)
        for step in range(3):
            for k, p in model.items():
                g = torch.randn(shapes[k], generator=torch.Generator().manual_seed(10 * step))
                p.grad = distribute_tensor(g, p.device_mesh, p.placements)
                full[k].grad = g.clone()
                if k in shard:
                    shard[k].grad = chunk(g).clone()
            for o in (opt, ref_full, ref_shard):
                o.step()
        name = cls.__name__
        assert_shards(opt, ref_shard, name)
        w, v = model["w"], model["v"]
        assert torch.equal(w.full_tensor(), full["w"].detach()), f"{name}: w, whole blocks"
        for key, t in ref_full.state[full["w"]].items():
            if key != "step":  # the rows of absmax, one after the other, are the whole one's
                assert torch.equal(opt.state[w][key].full_tensor().view(t.shape), t), key
        assert not torch.equal(v.full_tensor(), full["v"].detach()), f"{name}: v, cut blocks"
        # Loading converts shard by shard: 8-bit into fp32 moments (decoded) and back (encoded),
        # as the same loads do for the plain optimizer on the shard alone.
        fp32, plain = cls(model.values(), **kw), cls(shard.values(), **kw)
        fp32.load_state_dict(opt.state_dict())
        plain.load_state_dict(ref_shard.state_dict())
        assert_shards(fp32, plain, f"{name} decoded")
        decoded = fusedopt.dequantize_state_dict(opt.state_dict())["state"]
        for i, pstate in fp32.state_dict()["state"].items():
            assert decoded[i].keys() == pstate.keys()
            for key, t in pstate.items():
                d = decoded[i][key]
                assert type(d) is type(t) and torch.equal(d, t), f"{name} dequantized {i} {key}"
        opt.load_state_dict(fp32.state_dict())
        ref_shard.load_state_dict(plain.state_dict())
        assert_shards(opt, ref_shard, f"{name} encoded")


def test_fsdp2_other_optimizers_match_unsharded(tmp_path) -> None:  # noqa: ANN001
    _spawn(_fsdp_other_optimizers, tmp_path)


def _fsdp_lamb_refuses_wrong_norms(rank: int, tmp: str) -> None:
    """Sharded LAMB's phase-1 sums really are reduced: without the all-reduce (each rank
    using its shard's norms) the result differs from the unsharded one."""
    from unittest import mock

    model, _ = _sharded_model()
    opt = fusedopt.LAMB(model.parameters(), lr=0.05, weight_decay=0.1)
    with mock.patch.object(torch.distributed, "all_reduce", lambda *a, **k: None):
        no_reduce = _train(model, opt, rank, range(1))
    model2, _ = _sharded_model()
    opt2 = fusedopt.LAMB(model2.parameters(), lr=0.05, weight_decay=0.1)
    reduced = _train(model2, opt2, rank, range(1))
    assert any(not torch.allclose(a, b) for a, b in zip(no_reduce[0], reduced[0]))


def test_fsdp2_lamb_norms_are_reduced(tmp_path) -> None:  # noqa: ANN001
    _spawn(_fsdp_lamb_refuses_wrong_norms, tmp_path)


def _fsdp_master_weights(rank: int, tmp: str) -> None:
    """A bf16 model under FSDP2 with fp32 master weights: the masters (and moments) are fp32
    DTensors sharded like the params, the params are their masters rounded, and the sharded
    masters track an unsharded bf16 run with master weights. They are equal bit for bit (with
    two ranks, the bf16 grads are averaged as the unsharded run's loss sum makes them); the fp32
    table tolerance leaves room for fp32 ulps only: a reduction that changed a bf16 grad would
    move a master by up to 2 lr, which deserves a look rather than a 5% tolerance."""
    from torch.distributed.tensor import DTensor

    model, _ = _sharded_model(torch.bfloat16)
    opt = fusedopt.AdamW(model.parameters(), lr=0.01, master_weights=True)
    for step in range(STEPS):
        x, y = _batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x.bfloat16()), y.bfloat16()).backward()
        opt.step()
    ref_model = _model().to(torch.bfloat16)
    ref = fusedopt.AdamW(ref_model.parameters(), lr=0.01, master_weights=True)
    for step in range(STEPS):
        ref.zero_grad()
        loss = sum(
            torch.nn.functional.mse_loss(ref_model(x.bfloat16()), y.bfloat16())
            for x, y in (_batch(r, step) for r in range(WORLD))
        )
        (loss / WORLD).backward()
        ref.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        full = opt.state[p]["master_param"].full_tensor()
        r = ref.state[q]["master_param"]
        torch.testing.assert_close(full, r, rtol=TOL.rtol, atol=TOL.atol)
    for p in model.parameters():
        m = opt.state[p]["master_param"]
        assert isinstance(m, DTensor) and m.placements == p.placements
        assert m.dtype == torch.float32 and opt.state[p]["exp_avg"].dtype == torch.float32
        assert torch.equal(m.to_local().bfloat16(), p.to_local().detach())


def test_fsdp2_master_weights(tmp_path) -> None:  # noqa: ANN001
    _spawn(_fsdp_master_weights, tmp_path)


# -- torch.distributed.checkpoint -------------------------------------------------------------


def _fsdp_checkpoint(rank: int, tmp: str) -> None:
    # 8-bit: the 128- and 80-element weights (shards of 64, and 48 + 32) in 8 bits, the rest fp32
    q8 = {"state_dtype": "int8_blockwise", "min_8bit_size": 64}
    for kw in ({}, {"state_dtype": torch.bfloat16}, q8):
        _fsdp_checkpoint_case(rank, os.path.join(tmp, f"ckpt{len(kw)}"), kw)
    _fsdp_checkpoint_other_mesh(os.path.join(tmp, f"ckpt{len(q8)}"), q8)


def _fsdp_checkpoint_case(rank: int, ckpt: str, kw: dict) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.tensor import DTensor

    model, _ = _sharded_model()
    opt = fusedopt.AdamW(model.parameters(), lr=0.01, weight_decay=0.1, **kw)
    _train(model, opt, rank, range(3))
    msd, osd = get_state_dict(model, opt)
    assert all(
        isinstance(v, DTensor)
        for s in osd["state"].values()
        for k, v in s.items()
        if k != "step" and not k.endswith("_qmap")  # the 8-bit maps: the same on every rank
    )
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=ckpt)
    straight = _train(model, opt, rank, range(3, 6))

    model2, _ = _sharded_model()  # a fresh init, then the checkpoint
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)
    opt2 = fusedopt.AdamW(model2.parameters(), lr=0.5, weight_decay=0.1, **kw)
    msd2, osd2 = get_state_dict(model2, opt2)
    state = {"model": msd2, "optim": osd2}
    dcp.load(state, checkpoint_id=ckpt)
    set_state_dict(model2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    assert opt2.param_groups[0]["lr"] == 0.01
    for p, s in opt2.state.items():
        want = kw.get("state_dtype", torch.float32)
        if want == "int8_blockwise":
            want = torch.uint8 if p.numel() >= kw["min_8bit_size"] else torch.float32
        assert s["exp_avg"].dtype == want
    resumed = _train(model2, opt2, rank, range(3, 6))
    for step, (a, b) in enumerate(zip(resumed, straight)):
        for i, (x, y) in enumerate(zip(a, b)):
            assert torch.equal(x, y), f"resumed step {step + 4} param[{i}] differs"


def _fsdp_checkpoint_other_mesh(ckpt: str, kw: dict) -> None:
    """8-bit states saved with 2 shards a param do not load where each param is 1 shard (the
    same 2 ranks as replicas): their blocks would not be this mesh's; DCP says which state."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = _model()
    mesh = init_device_mesh("cpu", (WORLD, 1), mesh_dim_names=("replicate", "shard"))
    fully_shard(model, mesh=mesh)  # HSDP: 2 replicas of 1 shard
    opt = fusedopt.AdamW(model.parameters(), lr=0.01, weight_decay=0.1, **kw)
    msd, osd = get_state_dict(model, opt)
    with pytest.raises(CheckpointException, match=r"Size mismatch.*exp_avg_absmax"):
        dcp.load({"model": msd, "optim": osd}, checkpoint_id=ckpt)


def test_fsdp2_distributed_checkpoint_resume_is_identical(tmp_path) -> None:  # noqa: ANN001
    _spawn(_fsdp_checkpoint, tmp_path)
