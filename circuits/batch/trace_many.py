"""trace_many: one TraceResult per prompt, in order, through the public per-prompt entry
(circuits.trace.trace_prompt). Every prompt is checked (tokens, context, target tokens) before the
first is traced, so a bad line stops the batch at once instead of after an hour."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from circuits.batch.inputs import PromptItem, as_items


def check_items(rm, items: list[PromptItem], config) -> None:
    """Raise the first prompt's one-line error (empty, unknown words, too long, bad target token)."""
    from circuits.errors import CircuitsError
    from circuits.attribution.targets import custom_targets

    for item in items:
        try:
            rm.tokens(item.prompt)
            c = item.config(config)
            custom_targets(rm.model, c.targets, c.contrast)
        except CircuitsError as err:
            raise CircuitsError(f"prompt {item.id} ({item.prompt[:40]!r}): {err}") from None


def trace_many(rm, prompts: Iterable, config=None, progress: bool = False,
               batch_prompts: int = 1) -> Iterator[tuple[PromptItem, object]]:
    """Yield (PromptItem, TraceResult) for each prompt (strings, dicts or PromptItems), in order.
    Each prompt's own target/contrast replace the config's; the graphs equal `rm.trace(prompt)`
    (bit for bit; with batch_prompts > 1, whose prompts share backward sweeps, to 1e-6 relative:
    circuits.attribution.batched)."""
    from circuits.attribution.config import TraceConfig
    from circuits.trace import trace_prompts

    config = config or TraceConfig()
    check_batch_prompts(batch_prompts)
    items = as_items(prompts)
    check_items(rm, items, config)
    bar = _bar(len(items)) if progress else None
    results = trace_prompts(rm, [(item.prompt, item.config(config)) for item in items], batch_prompts)
    for item, result in zip(items, results):
        if bar is not None:
            bar.update(1)
        yield item, result
    if bar is not None:
        bar.close()


def check_batch_prompts(batch_prompts) -> None:
    from circuits.errors import CircuitsError

    if isinstance(batch_prompts, bool) or not isinstance(batch_prompts, int) or not 1 <= batch_prompts <= 4096:
        raise CircuitsError(f"batch_prompts must be an integer from 1 to 4096, not {batch_prompts!r}")


def _bar(total: int, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="prompts", unit="prompt", dynamic_ncols=True)
