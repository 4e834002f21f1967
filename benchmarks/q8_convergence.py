"""Convergence of 8-bit optimizer states: a small GPT-like model trained a few hundred steps with
each optimizer's fp32 and 8-bit states (``state_dtype="int8_blockwise"``), the same init and
batches for both; prints the final losses and their relative difference.

    PYTHONPATH=$PWD python -m benchmarks.q8_convergence [--steps 300] [--threads 2]

The model is built from a config (nothing is downloaded): a pre-norm causal transformer
(embeddings, ``--layers`` blocks of attention and a 4x MLP, a tied output head). The data is a
synthetic language: a fixed random sparse Markov chain over ``--vocab`` tokens (each token
allows 4 successors, with random probabilities), so the loss has a floor (the chain's entropy
rate, printed) that a model approaches by learning the transition table. The
8-bit runs keep every matrix's moments in 8 bits (everything but the biases and layernorms).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

import fusedopt

# (name, class, kwargs): the fp32 and 8-bit runs of each take the same. (Lion at lr 1e-4 and
# 3e-4, weight decay 1.0, did not train this model in 300 steps even with fp32 states: it needs
# its own tuning before a row of it says anything about 8-bit states.)
OPTIMIZERS = (("AdamW", "AdamW", {"lr": 3e-3, "betas": (0.9, 0.95), "weight_decay": 0.1}),)


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, ctx: int, d: int, layers: int, heads: int) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.ln(x) @ self.tok.weight.t()


class Chain:
    """A sparse Markov chain: each token has 4 possible successors."""

    def __init__(self, vocab: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.vocab = vocab
        self.succ = torch.randint(vocab, (vocab, 4), generator=g)
        self.prob = torch.rand(vocab, 4, generator=g).softmax(-1)
        # nats per token with the tokens weighted uniformly: about the loss floor
        self.entropy = float(-(self.prob * self.prob.log()).sum(-1).mean())

    def sample(self, batch: int, length: int, g: torch.Generator) -> torch.Tensor:
        out = torch.empty(batch, length, dtype=torch.int64)
        out[:, 0] = torch.randint(self.vocab, (batch,), generator=g)
        for t in range(1, length):
            a = out[:, t - 1]
            pick = torch.multinomial(self.prob[a], 1, generator=g).squeeze(1)
            out[:, t] = self.succ[a, pick]
        return out


def train(args: argparse.Namespace, cls: str, kwargs: dict, q8: bool) -> tuple[float, float]:
    """(mean train loss over the last 20 steps, loss on held-out batches)."""
    chain = Chain(args.vocab, seed=0)
    torch.manual_seed(1)
    model = GPT(args.vocab, args.ctx, args.d_model, args.layers, args.heads)
    extra = {"state_dtype": "int8_blockwise"} if q8 else {}
    opt = getattr(fusedopt, cls)(model.parameters(), **kwargs, **extra)
    g = torch.Generator().manual_seed(2)
    last = []
    for step in range(args.steps):
        lr_scale = min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = kwargs["lr"] * lr_scale
        x = chain.sample(args.batch, args.ctx + 1, g)
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= args.steps - 20:
            last.append(loss.item())
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        x = chain.sample(64, args.ctx + 1, g)
        held = float(F.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()))
    return sum(last) / len(last), held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=64)
    parser.add_argument("--ctx", type=int, default=32)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chain = Chain(args.vocab, seed=0)
    model = GPT(args.vocab, args.ctx, args.d_model, args.layers, args.heads)
    n = sum(p.numel() for p in model.parameters())
    big = sum(p.numel() for p in model.parameters() if p.numel() >= 4096)
    print(
        f"GPT: {args.layers} layers, d_model {args.d_model}, vocab {args.vocab}, ctx {args.ctx}: "
        f"{n:,} params ({big / n:.1%} in tensors of >= 4096 elements, kept in 8 bits); "
        f"{args.steps} steps of {args.batch}x{args.ctx} tokens, warmup + cosine; "
        f"{args.threads} threads; chain entropy (about the loss floor) {chain.entropy:.4f} nats"
    )
    print(f"{'optimizer':<14}{'states':<8}{'train loss':>12}{'held-out':>10}{'time':>8}")
    for name, cls, kwargs in OPTIMIZERS:
        res = {}
        for q8 in (False, True):
            t0 = time.perf_counter()
            res[q8] = train(args, cls, kwargs, q8)
            label = "8-bit" if q8 else "fp32"
            elapsed = time.perf_counter() - t0
            print(f"{name:<14}{label:<8}{res[q8][0]:>12.4f}{res[q8][1]:>10.4f}{elapsed:>7.1f}s")
        rel = [(res[True][i] - res[False][i]) / res[False][i] for i in range(2)]
        print(f"{'':<14}{'8b/fp32':<8}{rel[0]:>+12.2%}{rel[1]:>+10.2%}")


if __name__ == "__main__":
    main()
