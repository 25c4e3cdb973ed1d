"""How much memory a trace needs, and the feature cap that fits a budget.

The budget is the trace process's peak resident memory: what is resident when the trace starts
(the model, the transcoder, the interpreter: `baseline_bytes`) plus the trace's large allocations,
all float32:

Before the forward pass (known from the prompt's length and the model's shape, `forward_bytes`):
- the frozen attention patterns, kept causally (circuits.replacement.frozen_patterns) for as many
  of the lowest layers as fit in PATTERN_KEEP_SHARE of the budget, and for the others each layer's
  q and k ([P, H + G, e]) that the backward rebuilds them from, a query block at a time
  (`pattern_layers_kept`); and the forward's own
  per-layer scores and pattern ([H, P, P] each, one layer at a time);
- the captured activations ([L, P, d]: inputs, outputs, reconstruction, errors and their copies),
  the transcoder's dense activations per layer ([L, P, F], twice while decoding); logits only at
  the last position.
After it (`TraceShape`, once the active features are known), the larger of two phases:
- attribution: what the local replacement model keeps; the logit rows over every source; the
  activation-scaled decoders (kept when they take at most DECODER_CACHE_SHARE of the budget, else
  read in blocks); one backward batch (gradients, the attention backward's temporaries, its rows
  over every source, their |rows|, the |rows| buffer of influence); the row store (a chosen feature's row over every source, an upper bound: a row keeps
  the features below its layer); influence's visited block (twice) and the chosen rows over the
  graph's columns, alive beside the store at the end; with streamed rows (when the store does not
  fit): the rows' sketches instead of the store (circuits.attribution.streamed_rows);
- the graph: its targets x sources edges, (chosen + logits) x (chosen + errors + tokens),
  GRAPH_COPIES times (edges, normalised |A| for influence and pruning).
Freed heap memory is handed back after the forward and after each influence round
(transcoders.cpu_memory.release_freed_memory), so what is resident is what is alive.
The default cap is DEFAULT_MAX_FEATURE_NODES features (chosen by influence) or fewer when that
does not fit the budget; an explicit cap whose exact rows do not fit streams them, and one that
does not fit even so is refused with one line, as is a prompt whose forward pass alone does not
fit (before it runs).
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from circuits.errors import CircuitsError

DEFAULT_MAX_FEATURE_NODES = 7500
DEFAULT_MEMORY_GB = 4.0
GRAPH_COPIES = 3
DECODER_CACHE_SHARE = 0.25
PATTERN_KEEP_SHARE = 0.25  # keep the frozen patterns when they take at most this share of the budget
_F32 = 4
_GB = 2 ** 30


def resident_bytes() -> int:
    """This process's resident memory now (the trace's baseline)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def pattern_layers_kept(n_layers: int, n_heads: int, n_pos: int, memory_gb: float | None) -> int:
    """How many of the lowest layers keep their frozen patterns (fast): as many as fit in
    PATTERN_KEEP_SHARE of the budget (all without one); the backward rebuilds the others' from q
    and k (circuits.replacement.frozen_patterns)."""
    from circuits.replacement.frozen_patterns import causal_pattern_bytes

    if memory_gb is None:
        return n_layers
    return min(n_layers, int(PATTERN_KEEP_SHARE * memory_gb * _GB) // causal_pattern_bytes(1, n_heads, n_pos))


def forward_bytes(n_layers: int, n_heads: int, d_model: int, n_pos: int, n_transcoder_features: int,
                  d_vocab: int, *, n_kv_heads: int | None = None, d_head: int | None = None,
                  kept_layers: int | None = None) -> int:
    """The forward pass's and local replacement model's large arrays for a prompt of n_pos tokens
    (`kept_layers`: only the lowest that many layers keep their patterns, the others q and k)."""
    from circuits.replacement.frozen_patterns import causal_pattern_bytes, qk_bytes

    kept_layers = n_layers if kept_layers is None else kept_layers
    kept = causal_pattern_bytes(kept_layers, n_heads, n_pos) + \
        qk_bytes(n_layers - kept_layers, n_heads, n_kv_heads or n_heads, d_head or d_model // n_heads, n_pos)
    patterns = kept + 3 * n_heads * n_pos * n_pos * _F32
    activations = 8 * n_layers * n_pos * d_model * _F32
    dense_features = 2 * n_layers * n_pos * n_transcoder_features * _F32
    return patterns + activations + dense_features + 2 * d_vocab * _F32


def check_forward_fits(n_bytes: int, n_pos: int, memory_gb: float | None, baseline_bytes: int) -> None:
    """Refuse, before the forward pass, a prompt whose forward alone exceeds the budget."""
    if memory_gb is None or baseline_bytes + n_bytes <= memory_gb * _GB:
        return
    need = gb_up((baseline_bytes + n_bytes) / _GB)
    raise CircuitsError(f"the forward pass of this {n_pos}-token prompt needs about {need} GB, before any "
                        f"attribution, but the memory budget is {memory_gb:g} GB: shorten the prompt or raise "
                        f"--memory-gb above {need}")


@dataclass
class TraceShape:
    n_active: int  # active features of the prompt
    n_errors: int
    n_pos: int
    n_logits: int
    decoder_floats: int  # sum over active features of (layers written to) x d_model
    gradient_bytes: int  # one backward sweep's stored gradients
    batch_rows: int = 64  # rows per backward batch
    sweep_temp_bytes: int = 0  # one sweep's temporaries (attention backward per layer, a rebuilt pattern block)
    fixed_bytes: int = 0  # what the local replacement model keeps (patterns or their q and k, activations)
    baseline_bytes: int = 0  # resident before the trace (model, transcoder, interpreter)
    cache_decoders: bool = True

    @property
    def n_sources(self) -> int:
        return self.n_active + self.n_errors + self.n_pos

    def attribution_bytes(self, n_chosen: int, store_bytes: int | None = None, streamed: bool = False) -> int:
        """The attribution phase; the row store at its upper bound unless `store_bytes` is given;
        `streamed`: the rows' sketches instead of the store (circuits.attribution.streamed_rows)."""
        from circuits.attribution.streamed_rows import sketch_bytes

        decoders = self.decoder_floats * _F32 if self.cache_decoders else 0
        # one batch: its gradients and the attention's temporaries; its rows, their |rows| (norms)
        # and the influence buffer of |rows| (kept between rounds)
        batch = self.gradient_bytes + self.sweep_temp_bytes + 3 * self.batch_rows * self.n_sources * _F32
        if streamed:  # the sketches, and the flow's [B, K] temporaries per block
            store = sketch_bytes(n_chosen, self.n_active) + 2 * sketch_bytes(self.batch_rows, self.n_active)
        else:
            store = n_chosen * (self.n_sources + 2) * _F32 if store_bytes is None else store_bytes
        visited_block = 2 * n_chosen * n_chosen * _F32
        chosen_rows = n_chosen * (n_chosen + self.n_errors + self.n_pos) * _F32
        logit_rows = self.n_logits * self.n_sources * _F32 + 3 * self.n_active * _F32
        return self.fixed_bytes + decoders + batch + store + visited_block + chosen_rows + logit_rows

    def graph_bytes(self, n_chosen: int) -> int:
        edges = (n_chosen + self.n_logits) * (n_chosen + self.n_errors + self.n_pos) * _F32
        return GRAPH_COPIES * edges

    def bytes_for(self, n_chosen: int, store_bytes: int | None = None, streamed: bool = False) -> int:
        """Predicted peak resident bytes of the trace with n_chosen features."""
        return self.baseline_bytes + max(self.attribution_bytes(n_chosen, store_bytes, streamed),
                                         self.graph_bytes(n_chosen))

    def min_row_bytes(self) -> int:
        """The least a stored row takes: a feature of the lowest layer keeps only errors and tokens."""
        return (self.n_errors + self.n_pos + 2) * _F32

    def largest_fitting(self, budget_bytes: int, upper: int, streamed: bool = False) -> int:
        """The most features (<= upper) whose trace fits budget_bytes (0 if not even one)."""
        lo, hi = 0, upper
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.bytes_for(mid, streamed=streamed) <= budget_bytes:
                lo = mid
            else:
                hi = mid - 1
        return lo


def gb_up(gb: float) -> str:
    """`gb` rounded up to two significant digits (0.0031, 0.25, 1.3, 12, 140): small needs do not
    show as 0.0, and a budget raised to the number shown is enough."""
    if gb <= 0:
        return "0"
    digits = max(0, 1 - math.floor(math.log10(gb)))
    up = math.ceil(gb * 10 ** digits) / 10 ** digits
    return f"{up:.{digits}f}"


def plan_decoders(shape: TraceShape, memory_gb: float | None) -> TraceShape:
    """Keep the activation-scaled decoders (fast for short prompts) only when they take at most
    DECODER_CACHE_SHARE of the budget; otherwise the rows read them in blocks."""
    if memory_gb is not None:
        shape.cache_decoders = shape.decoder_floats * _F32 <= DECODER_CACHE_SHARE * memory_gb * _GB
    return shape


@dataclass
class RowPlan:
    n_chosen: int  # the cap
    store_limit: int | None  # bytes the row store may take (None: the cap's upper bound fits)
    predicted_bytes: int | None  # predicted peak (None without a budget)
    streamed: bool = False  # rows sketched for the choice, the chosen ones recomputed (streamed_rows)


def plan_rows(shape: TraceShape, requested: int | None, memory_gb: float | None) -> RowPlan:
    """The cap, the row store's allowance, and whether rows are streamed. The exact row store is
    used whenever it fits; streamed rows (circuits.attribution.streamed_rows) only when it does not.

    An explicit cap (or no budget) is checked at the store's upper bound; if that does not fit, in
    streamed mode (else refused by choose_feature_cap, naming the cap that fits). The default cap
    is DEFAULT_MAX_FEATURE_NODES (or every active feature if fewer), lowered until everything but
    the store fits beside the store's least (one row per chosen feature of the lowest layer); the
    store then gets what is left of the budget and influence-ordered choice stops when it is full:
    the same features, in the same order, as that many chosen with the cap set to them (the last
    round's most influential ones). When not even one row fits that way, streamed mode with the
    largest cap it fits."""
    if memory_gb is None:
        return RowPlan(choose_feature_cap(shape, requested, None), None, None)
    budget = int(memory_gb * _GB)
    if requested is not None:
        upper = min(requested, shape.n_active)
        if shape.bytes_for(upper) <= budget:
            return RowPlan(upper, None, shape.bytes_for(upper))
        if shape.bytes_for(upper, streamed=True) <= budget:
            return RowPlan(upper, None, shape.bytes_for(upper, streamed=True), streamed=True)
        choose_feature_cap(shape, requested, memory_gb, streamed=True)  # raises, naming what fits
    upper = min(shape.n_active, DEFAULT_MAX_FEATURE_NODES)
    if shape.bytes_for(upper) <= budget:
        return RowPlan(upper, None, shape.bytes_for(upper))

    def fits(n: int) -> bool:
        return shape.bytes_for(n, n * shape.min_row_bytes()) <= budget

    lo, hi = 0, upper
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    if lo == 0:  # not even one exact row: stream
        n = choose_feature_cap(shape, None, memory_gb, streamed=True)  # raises if not even one fits
        return RowPlan(n, None, shape.bytes_for(n, streamed=True), streamed=True)
    store_limit = budget - shape.baseline_bytes - shape.attribution_bytes(lo, 0)
    return RowPlan(lo, store_limit, shape.bytes_for(lo, store_limit))


def choose_feature_cap(shape: TraceShape, requested: int | None, memory_gb: float | None,
                       streamed: bool = False) -> int:
    """How many features to attribute: `requested` (checked against the budget), or by default
    all active features up to DEFAULT_MAX_FEATURE_NODES and the budget. memory_gb None: no budget.
    `streamed`: the memory of streamed rows."""
    upper = shape.n_active if requested is None else min(requested, shape.n_active)
    if requested is None:
        upper = min(upper, DEFAULT_MAX_FEATURE_NODES)
    if memory_gb is None:
        return upper
    budget = int(memory_gb * _GB)
    if shape.bytes_for(upper, streamed=streamed) <= budget:
        return upper
    fits = shape.largest_fitting(budget, upper, streamed)
    need = shape.bytes_for(upper, streamed=streamed) / _GB
    if requested is not None or fits == 0:
        hint = (f"lower --max-feature-nodes to {fits}" if fits > 0 else "shorten the prompt") + \
            f" or raise --memory-gb to {gb_up(need)}"
        raise CircuitsError(f"this trace needs about {gb_up(need)} GB ({upper} of {shape.n_active} active "
                            f"features) but the memory budget is {memory_gb:g} GB: {hint}")
    return fits
