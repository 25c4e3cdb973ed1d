"""Training the `world` organism: a small TransformerLens model, loss on answer tokens only.

Each step draws a fixed number of addition lines and of fact lines (two-hop lines drawn more often)
and runs one forward pass over each, so the short addition lines never pay for the padding of the
long facts. AdamW (weight decay on matrices), warm-up and cosine decay; the saved weights are an
exponential moving average of the trained ones, which generalises addition much earlier than the
raw weights do. Everything is seeded: the same seed and thread count give the same bytes.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from circuits.models.world.corpus import Example, WorldCorpus
from circuits.models.world.fused import answer_residuals


class WorldTrainConfig(BaseModel):
    """Architecture and optimisation of one `world` variant (saved in meta.json)."""

    seed: int = 0
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 512
    n_ctx: int = 32
    act_fn: str = "gelu"
    steps: int = 3000
    lr: float = 1e-3
    min_lr_fraction: float = 0.1
    weight_decay: float = 0.1
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    batch_addition: int = 256
    batch_facts: int = 64
    two_hop_weight: int = 1  # a two-hop line is drawn this many times as often as a one-hop line
    ema_decay: float = 0.0  # > 0: the saved model is an exponential moving average of the weights


VARIANTS: dict[str, WorldTrainConfig] = {
    "world": WorldTrainConfig(),
    "world-tiny": WorldTrainConfig(d_model=48, n_heads=4, d_mlp=96, n_layers=4, steps=100,
                                   warmup_steps=10, lr=3e-3, batch_addition=32,
                                   batch_facts=16),
}


def hooked_config(cfg: WorldTrainConfig, d_vocab: int):
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
        d_head=cfg.d_model // cfg.n_heads, d_mlp=cfg.d_mlp, n_ctx=cfg.n_ctx, d_vocab=d_vocab,
        act_fn=cfg.act_fn, normalization_type="LN", positional_embedding_type="standard",
        seed=cfg.seed, default_prepend_bos=True, model_name="world", original_architecture="world",
        device="cpu")


def encode_examples(examples: list[Example], encode: Callable[[str], list[int]], bos_id: int,
                    pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded tokens [n, pos] (BOS first) and the loss mask [n, pos-1] over answer-token targets."""
    rows, answer_starts = [], []
    for ex in examples:
        prompt_ids = [bos_id] + encode(ex.prompt)
        rows.append(prompt_ids + encode(ex.answer))
        answer_starts.append(len(prompt_ids))
    width = max(len(r) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, answer_starts)):
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, start - 1:len(row) - 1] = True  # position p predicts token p+1
    return tokens, mask


class _Pool:
    """Lines of one kind, drawn in reshuffled passes (optionally weighted by repetition)."""

    def __init__(self, tokens: torch.Tensor, mask: torch.Tensor, weights: list[int], gen: torch.Generator):
        index = torch.repeat_interleave(torch.arange(len(tokens)), torch.tensor(weights))
        self.tokens, self.mask, self.index, self.gen = tokens, mask, index, gen
        self.order, self.cursor = torch.empty(0, dtype=torch.long), 0

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        picked = [torch.empty(0, dtype=torch.long)]
        while n > 0:
            if self.cursor >= len(self.order):
                self.order = self.index[torch.randperm(len(self.index), generator=self.gen)]
                self.cursor = 0
            take = self.order[self.cursor:self.cursor + n]
            self.cursor += len(take)
            n -= len(take)
            picked.append(take)
        rows = torch.cat(picked)
        return self.tokens[rows], self.mask[rows]


def _answer_loss(model, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over answer targets; unembeds only the answer positions."""
    picked = answer_residuals(model, tokens[:, :-1], mask)  # the last token predicts nothing we train on
    logits = model.unembed(model.ln_final(picked[:, None]))[:, 0]
    targets = tokens[:, 1:][mask]
    return F.cross_entropy(logits, targets, reduction="sum"), int(mask.sum())


def _lr_at(step: int, cfg: WorldTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_fraction + (1 - cfg.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def train_world_model(corpus: WorldCorpus, encode: Callable[[str], list[int]], d_vocab: int,
                      bos_id: int, pad_id: int, cfg: WorldTrainConfig, progress: bool = False,
                      on_eval: Callable[[int, object], None] | None = None, eval_every: int = 0):
    """Train a HookedTransformer on the corpus's training lines; returns it in eval mode."""
    from transformer_lens import HookedTransformer

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    with warnings.catch_warnings():  # HookedTransformer's deprecation notice (we pin TL 3.9)
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(hooked_config(cfg, d_vocab), move_to_device=False)

    def pool(examples: list[Example], weights: list[int] | None = None) -> _Pool:
        tokens, mask = encode_examples(examples, encode, bos_id, pad_id)
        return _Pool(tokens, mask, weights or [1] * len(examples), gen)

    addition = pool(corpus.addition_train)
    facts = pool(corpus.one_hop + corpus.two_hop_train,
                 [1] * len(corpus.one_hop) + [cfg.two_hop_weight] * len(corpus.two_hop_train))

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=cfg.betas,
                            foreach=True)
    params = [p for p in model.parameters()]
    ema = _Ema(params, cfg.ema_decay) if cfg.ema_decay > 0 else None
    bar = _progress_bar(cfg.steps, progress)
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        total, n_targets = 0.0, 0
        for tokens, mask in (addition.draw(cfg.batch_addition), facts.draw(cfg.batch_facts)):
            if len(tokens):
                loss_sum, n = _answer_loss(model, tokens, mask)
                total, n_targets = total + loss_sum, n_targets + n
        loss = total / n_targets
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(step)
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if on_eval is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == cfg.steps):
            model.eval()
            if ema is not None:
                ema.swap()
            on_eval(step + 1, model)
            if ema is not None:
                ema.swap()
            model.train()
    if bar is not None:
        bar.close()
    if ema is not None:
        ema.swap()
    model.eval()
    return model


class _Ema:
    """Exponential moving average of parameters (bias-corrected warm-up); swap() exchanges them."""

    def __init__(self, params: list[torch.Tensor], decay: float):
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        for p, s in zip(self.params, self.shadow):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training world", unit="step", dynamic_ncols=True)
