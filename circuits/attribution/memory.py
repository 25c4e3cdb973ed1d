"""How much memory a trace needs, and the feature cap that fits a budget.

A trace's large allocations, known as soon as the prompt's active features are (float32):
- rows: (chosen features + logits) x sources, sources = every active feature + errors + tokens
  (a chosen feature's edges come from all active features, as influence needs them);
- activation-scaled decoders: per active feature, one d-vector per layer it writes to;
- the gradients of one backward sweep (bounded by engine.GRADIENT_BUDGET_BYTES);
- the graph: its targets x sources edges, (chosen features + logits) x (chosen features + errors +
  tokens), GRAPH_COPIES times (the edges, and normalised |A| for influence and pruning, which is
  float64 for graphs of up to graphs.prune.FLOAT64_MAX_NODES nodes). The trace frees the rows
  before pruning, so adding everything up overstates the peak a little.
The default cap is DEFAULT_MAX_FEATURE_NODES features (chosen by influence) or fewer when that
does not fit the budget; an explicit cap that does not fit is refused with one line.
"""

from __future__ import annotations

import math

from dataclasses import dataclass

from circuits.errors import CircuitsError

DEFAULT_MAX_FEATURE_NODES = 7500
DEFAULT_MEMORY_GB = 4.0
GRAPH_COPIES = 3
_F32 = 4


@dataclass
class TraceShape:
    n_active: int  # active features of the prompt
    n_errors: int
    n_pos: int
    n_logits: int
    decoder_floats: int  # sum over active features of (layers written to) x d_model
    gradient_bytes: int  # one backward sweep's stored gradients

    def bytes_for(self, n_chosen: int) -> int:
        n_targets = n_chosen + self.n_logits
        rows = n_targets * (self.n_active + self.n_errors + self.n_pos) * _F32
        edges = n_targets * (n_chosen + self.n_errors + self.n_pos) * _F32
        return rows + self.decoder_floats * _F32 + self.gradient_bytes + GRAPH_COPIES * edges

    def largest_fitting(self, budget_bytes: int, upper: int) -> int:
        """The most features (<= upper) whose trace fits budget_bytes (0 if not even one)."""
        lo, hi = 0, upper
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.bytes_for(mid) <= budget_bytes:
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


def choose_feature_cap(shape: TraceShape, requested: int | None, memory_gb: float | None) -> int:
    """How many features to attribute: `requested` (checked against the budget), or by default
    all active features up to DEFAULT_MAX_FEATURE_NODES and the budget. memory_gb None: no budget."""
    upper = shape.n_active if requested is None else min(requested, shape.n_active)
    if requested is None:
        upper = min(upper, DEFAULT_MAX_FEATURE_NODES)
    if memory_gb is None:
        return upper
    budget = int(memory_gb * 2 ** 30)
    if shape.bytes_for(upper) <= budget:
        return upper
    fits = shape.largest_fitting(budget, upper)
    need = shape.bytes_for(upper) / 2 ** 30
    if requested is not None or fits == 0:
        hint = (f"lower --max-feature-nodes to {fits}" if fits > 0 else "shorten the prompt") + \
            f" or raise --memory-gb to {gb_up(need)}"
        raise CircuitsError(f"this trace needs about {gb_up(need)} GB ({upper} of {shape.n_active} active "
                            f"features) but the memory budget is {memory_gb:g} GB: {hint}")
    return fits
