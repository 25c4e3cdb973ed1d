"""TraceConfig: the settings of one trace, the one object that flows whole from the CLI (its options
are derived from these fields, circuits/cli/options.py) through ReplacementModel.trace to the
engine (circuits.attribution.engine.attribute). pydantic and constants only, so the CLI builds its
options without importing torch. A new trace option is a field here, read by the engine, tested."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from circuits.attribution.memory import DEFAULT_MAX_FEATURE_NODES, DEFAULT_MEMORY_GB
from graphs.thresholds import DEFAULT_EDGE_THRESHOLD, DEFAULT_NODE_THRESHOLD


class TraceConfig(BaseModel):
    """Settings of one trace (saved in the graph, so a result can be reproduced). Its fields are
    also the options of `circuits trace` (circuits/cli/options.py derives them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    node_threshold: float = Field(DEFAULT_NODE_THRESHOLD, gt=0, le=1, description="keep feature/error nodes holding this share of influence")
    edge_threshold: float = Field(DEFAULT_EDGE_THRESHOLD, gt=0, le=1, description="keep edges holding this share of edge score")
    max_feature_nodes: int | None = Field(None, gt=0, le=10_000_000,
                                          description="attribute at most this many features, chosen by influence "
                                          f"(default: all, up to {DEFAULT_MAX_FEATURE_NODES} and the memory budget)")
    memory_gb: float | None = Field(DEFAULT_MEMORY_GB, gt=0, le=1_000_000, description="memory budget (GB): the trace's "
                                    "peak resident memory, model included; a default cap shrinks to fit it; an explicit "
                                    "cap whose rows do not fit is streamed (its rows computed twice), one that still "
                                    "does not, or a prompt whose forward pass does not, is refused before the work "
                                    "(None, from Python: no budget)")
    max_n_logits: int = Field(10, gt=0, le=100_000, description="at most this many logit targets")
    desired_logit_prob: float = Field(0.95, gt=0, le=1, description="logit targets until this cumulative probability")
    batch_size: int = Field(64, gt=0, le=65_536, description="target rows per backward sweep")
    targets: list[str] = Field(default_factory=list, description="extra target token",
                               json_schema_extra={"flag": "--target"})
    contrast: str | None = Field(None, description="with one --target: trace logit(target) - logit(contrast)")
    answer: str | None = Field(None, description="the expected answer token: a logit node even when it is not "
                               "among the top logits (then a target direction like --target)")
    qk: bool = Field(False, description="explain attention: head loadings on the kept edges, QK attributions of "
                     "the heads carrying the most cross-position edges")
    qk_heads: int = Field(8, gt=0, le=10_000, description="with --qk: explain this many heads")
