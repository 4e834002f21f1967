"""The tests' optimizer registry (tests/optim_info.py) says what the optimizers do: its state keys,
its options and its matrices are checked here, so an incomplete entry fails loudly."""

from __future__ import annotations

import inspect

import pytest
import torch

from fusedopt._opdefs import OPS
from optim_info import INFO, OPTIMS, cases

# Every optimizer is in these matrices; its tolerance says who judges it: torch.optim (the twin
# it must have) or the fp64 reference (and the reference backend on Triton).
EVERY = ("damaged", "compile", "mixed", "triton_cpu")
JUDGED = {
    "vs_torch": ("parity", "checkpoint", "triton_torch"),
    "vs_fp64": ("fp64ref", "triton_ref"),
}
# Options a class either takes as a constructor argument or refuses with a TypeError.
OPTIONS = ("amsgrad", "nesterov", "trust_clip", "bias_correction", "max_grad_norm",
           "master_weights", "stochastic_rounding", "state_dtype")  # fmt: skip


@pytest.mark.parametrize("info", OPTIMS, ids=lambda i: i.name)
def test_every_optimizer_is_in_every_matrix(info):
    have = {u.partition(":")[0] for c in info.configs.values() for u in c.use}
    assert (info.tolerance == "vs_torch") == (info.torch_cls is not None)
    missing = set(EVERY + JUDGED[info.tolerance]) - have - set(info.unsupported) - set(info.exempt)
    assert all(info.exempt.values()), "an exemption needs its reason"
    assert not missing, f"{info.name}: no config in {sorted(missing)}"
    assert not have & set(info.unsupported), f"{info.name}: configs in matrices it refuses"


def test_every_update_op_is_in_the_cuda_matrix():
    ops = {c.values[0].op for c in cases("cuda")}
    assert ops == {i.op for i in OPTIMS if "cuda" not in i.exempt}


def test_matrices_have_unique_ids():
    for m in {u.partition(":")[0] for i in OPTIMS for c in i.configs.values() for u in c.use}:
        ids = [c.id for c in cases(m)]
        assert len(ids) == len(set(ids)), m


@pytest.mark.parametrize("info", OPTIMS, ids=lambda i: i.name)
def test_options_are_what_the_class_takes(info):
    takes = inspect.signature(info.cls).parameters
    for option in OPTIONS:
        assert (option in takes) == (option in info.supports), option
    for name, config in info.configs.items():
        assert set(config.kwargs) <= set(takes), name


@pytest.mark.parametrize("info", OPTIMS, ids=lambda i: i.name)
def test_state_keys_are_the_steps(info):
    """The entry's state keys, in order, are what one step with its "damaged" config (the
    options that change the state keys) keeps, and what its op names."""
    configs = [c.values[2].kwargs for c in cases("damaged") if c.values[0] is info]
    assert len(configs) == (0 if "damaged" in info.exempt else 1)
    p = info.params(torch.float32)[0] if info.params else torch.randn(5, requires_grad=True)
    opt = info.cls([p], **(configs[0] if configs else {}))
    p.grad = torch.randn_like(p)
    opt.step()
    keys = list(opt.state[p])
    assert [k for k in keys if k in info.state_keys] == list(info.state_keys)
    op_keys = {a.key for a in OPS[info.op].args if a.role in ("state", "step", "aux")}
    assert set(keys) <= op_keys
    assert set(info.optional_state) <= set(info.state_keys)


def test_names_are_unique():
    assert len(INFO) == len(OPTIMS)
