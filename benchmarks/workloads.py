"""The parameter lists the benchmark steps. Shapes are deterministic; values come from a fixed seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def gpt_shapes(
    n_layer: int = 12, d_model: int = 384, vocab: int = 8192, ctx: int = 1024
) -> list[tuple[int, ...]]:
    """Parameter shapes of a GPT-2-style decoder (nanoGPT layout, with biases).

    The defaults give 24.8M parameters in 148 tensors: two embeddings (8192x384, 1024x384), per
    layer the fused QKV and output projections (1152x384, 384x384), the MLP (1536x384, 384x1536)
    and eight vectors (layernorm weights and biases, linear biases), and the final layernorm --
    the mix of a few large matrices and many short vectors that real models hand an optimizer.
    Shapes follow torch's nn.Linear (out_features, in_features).
    """
    d = d_model
    shapes: list[tuple[int, ...]] = [(vocab, d), (ctx, d)]  # token and position embeddings
    for _ in range(n_layer):
        shapes += [
            (d,), (d,),  # ln_1 weight, bias
            (3 * d, d), (3 * d,),  # attention q, k, v projection
            (d, d), (d,),  # attention output projection
            (d,), (d,),  # ln_2 weight, bias
            (4 * d, d), (4 * d,),  # MLP up-projection
            (d, 4 * d), (d,),  # MLP down-projection
        ]  # fmt: skip
    shapes += [(d,), (d,)]  # ln_f weight, bias
    return shapes


@dataclass(frozen=True)
class Workload:
    """A list of parameter shapes in one dtype, under a short name used by ``--workloads``."""

    name: str
    description: str
    shapes: tuple[tuple[int, ...], ...]
    dtype: torch.dtype = torch.float32
    # The params are views of one flat buffer, end to end, and so are the grads (as a model
    # flattened Megatron- or DeepSpeed-style has them): fusedopt then updates them as one range
    # (Note [adjacent tensors] in csrc/common/multi_tensor.h). Every implementation gets them so.
    flat: bool = False

    @property
    def params(self) -> int:
        return sum(_numel(s) for s in self.shapes)

    @property
    def tensors(self) -> int:
        return len(self.shapes)

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, str(self.dtype).removeprefix("torch."))

    def make(self, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Fresh params and their grads: random and non-zero (a kernel never sees a zero grad).

        Every implementation gets a clone of the same values, so all of them do the same work.
        """
        gen = torch.Generator().manual_seed(seed)
        params, grads = [], []
        for shape in self.shapes:
            params.append((torch.randn(shape, generator=gen) * 0.02).to(self.dtype))
            grads.append((torch.randn(shape, generator=gen) * 1e-2).to(self.dtype))
        return self.copy(params), self.copy(grads)

    def copy(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Copies of tensors (this workload's shapes), views of one buffer when ``flat``."""
        if not self.flat:
            return [t.clone() for t in tensors]
        flat = torch.cat([t.reshape(-1) for t in tensors])
        return [v.view(t.shape) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def workloads(quick: bool = False) -> dict[str, Workload]:
    """The benchmark's workloads by name; ``quick`` shrinks each one (for tests and CI)."""
    flat_n = 4 * 2**20 if quick else 64 * 2**20
    gpt = gpt_shapes(n_layer=2, d_model=128, vocab=2048, ctx=256) if quick else gpt_shapes()
    n_tiny = 200 if quick else 2000
    gpt_desc = f"GPT-like list, {len(gpt)} tensors of mixed sizes"
    return {
        w.name: w
        for w in (
            Workload("flat", f"one tensor of {flat_n / 2**20:.0f}Mi params", ((flat_n,),)),
            Workload("gpt", gpt_desc, tuple(gpt)),
            Workload("tiny", f"{n_tiny} tensors of 1,024 params", ((1024,),) * n_tiny),
            Workload(
                "tiny-flat",
                f"{n_tiny} tensors of 1,024 params, views of one buffer",
                ((1024,),) * n_tiny,
                flat=True,
            ),
            Workload("gpt-bf16", gpt_desc, tuple(gpt), torch.bfloat16),
            # Muon's params: the list's matrices (embeddings included, as torch.optim.Muon
            # would take them), 2 + 4 * n_layer of them
            Workload(
                "gpt-2d",
                f"the GPT-like list's {sum(len(s) == 2 for s in gpt)} matrices",
                tuple(s for s in gpt if len(s) == 2),
            ),
        )
    }
