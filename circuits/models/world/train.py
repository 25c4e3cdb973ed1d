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
from contextlib import contextmanager
from typing import Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel

from circuits.models.world.corpus import Example, WorldCorpus
from circuits.models.world.fused import answer_residuals


class WorldTrainConfig(BaseModel):
    """Architecture and optimisation of one `world` variant (saved in meta.json).

    The defaults are `world`, chosen by short runs on this 2-core machine. Facts are learned within
    a few hundred steps; held-out addition is the slow part, and it tracks training accuracy (the
    model learns an algorithm, it does not memorise). What mattered most: averaging the weights
    (EMA: 0.85 vs 0.26 held-out addition at step 1000 of one run), annealing the learning rate
    well down (most of the gain comes late in the cosine), weight decay 2.0 over 1.0 and 0.5, peak
    lr 2e-3 over 1e-3 and 4e-3, and d_mlp 256 over 512 (as accurate, cheaper). Digit and counting
    lines in the corpus did not help and were dropped.
    """

    seed: int = 0
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 256
    n_ctx: int = 32
    act_fn: str = "gelu"
    steps: int = 3000
    lr: float = 2e-3
    min_lr_fraction: float = 0.02
    weight_decay: float = 2.0
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    batch_addition: int = 128
    batch_facts: int = 32
    two_hop_weight: int = 2  # a two-hop line is drawn this many times as often as a one-hop line
    ema_decay: float = 0.995  # > 0: the saved model is an exponential moving average of the weights
    threads: int = 1  # torch CPU threads while training (see train_world_model)


VARIANTS: dict[str, WorldTrainConfig] = {
    "world": WorldTrainConfig(),
    "world-tiny": WorldTrainConfig(d_model=48, n_heads=4, d_mlp=96, steps=100, warmup_steps=10,
                                   lr=3e-3, batch_addition=32, batch_facts=16, ema_decay=0.9),
}


def hooked_config(cfg: WorldTrainConfig, d_vocab: int):
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
        d_head=cfg.d_model // cfg.n_heads, d_mlp=cfg.d_mlp, n_ctx=cfg.n_ctx, d_vocab=d_vocab,
        act_fn=cfg.act_fn, normalization_type="LN", positional_embedding_type="standard",
        default_prepend_bos=True, model_name="world", original_architecture="world", device="cpu")
    # no `seed=` here: TransformerLens would reseed every global RNG each time the config is loaded


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
    """Train a HookedTransformer on the corpus's training lines; returns it in eval mode.

    Runs on `cfg.threads` CPU threads (default 1): the matrices are small, and with 2 threads on
    2 shared cores OpenMP's barriers stall whenever another process holds a core (measured 5-15x
    slower per step, against 1.5x faster on an idle machine).
    """
    with torch_threads(cfg.threads):
        return _train(corpus, encode, d_vocab, bos_id, pad_id, cfg, progress, on_eval, eval_every)


@contextmanager
def torch_threads(n: int):
    """Run the block with n torch CPU threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(corpus, encode, d_vocab, bos_id, pad_id, cfg, progress, on_eval, eval_every):
    from transformer_lens import HookedTransformer

    gen = torch.Generator().manual_seed(cfg.seed)  # draws batches; nothing else is random
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(cfg.seed)  # the initial weights, without touching the caller's RNG
        warnings.simplefilter("ignore", DeprecationWarning)  # HookedTransformer's notice (TL 3.9)
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
    """Exponential moving average of the parameters; swap() exchanges them with the live ones.

    The decay at step t is min(decay, (1 + t) / (10 + t)): early on the average spans about the
    last tenth of training so far, and it never reaches further back than 1 / (1 - decay) steps.
    """

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
