"""TraceConfig: the settings of one trace (pydantic only, so the CLI can build its options from it
without importing torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TraceConfig(BaseModel):
    """Settings of one trace (saved in the graph, so a result can be reproduced). Its fields are
    also the options of `circuits trace` (circuits/cli/options.py derives them)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    node_threshold: float = Field(0.8, gt=0, le=1, description="keep feature/error nodes holding this share of influence")
    edge_threshold: float = Field(0.98, gt=0, le=1, description="keep edges holding this share of edge score")
    max_feature_nodes: int | None = Field(None, gt=0, le=10_000_000,
                                          description="attribute at most this many features, chosen by influence "
                                          "(default: all, up to 7500 and the memory budget)")
    memory_gb: float | None = Field(4.0, gt=0, le=1_000_000, description="memory budget (GB) of the trace's large "
                                    "arrays: a default cap shrinks to fit it; an explicit cap that does not fit is refused")
    max_n_logits: int = Field(10, gt=0, le=100_000, description="at most this many logit targets")
    desired_logit_prob: float = Field(0.95, gt=0, le=1, description="logit targets until this cumulative probability")
    batch_size: int = Field(64, gt=0, le=65_536, description="target rows per backward sweep")
    targets: list[str] = Field(default_factory=list, description="extra target token",
                               json_schema_extra={"flag": "--target"})
    contrast: str | None = Field(None, description="with one --target: trace logit(target) - logit(contrast)")
    qk: bool = Field(False, description="explain attention: head loadings on the kept edges, QK attributions of "
                     "the heads carrying the most cross-position edges")
    qk_heads: int = Field(8, gt=0, le=10_000, description="with --qk: explain this many heads")
