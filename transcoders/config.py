"""The transcoder's architecture as one typed object (saved beside every transcoder)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator


class TranscoderConfig(BaseModel):
    """Architecture of a transcoder: cross-layer (CLT) or per-layer (PLT), and its activation."""

    kind: Literal["clt", "plt"] = Field("clt", description="clt: features write to every later layer; plt: own layer only")
    n_layers: int = Field(..., gt=0, description="number of transformer layers (MLPs replaced)")
    d_model: int = Field(..., gt=0, description="residual stream width")
    n_features: int = Field(..., gt=0, description="features per layer")
    activation: Literal["jumprelu", "relu", "topk"] = Field("jumprelu", description="feature nonlinearity")
    topk: int | None = Field(None, gt=0, description="k for the topk activation (per layer, per token)")
    skip: bool = Field(False, description="add a linear skip term W_skip x")
    jumprelu_bandwidth: float = Field(0.1, gt=0, description="STE rectangle width eps for the threshold gradient")
    input_hook: str = Field("ln2.hook_normalized", description="TransformerLens hook the features read (per block)")
    output_hook: str = Field("hook_mlp_out", description="TransformerLens hook the transcoder reconstructs (per block)")

    @model_validator(mode="after")
    def _topk_needs_k(self) -> "TranscoderConfig":
        if self.activation == "topk" and self.topk is None:
            raise ValueError("activation 'topk' needs topk=k")
        return self

    def n_outputs(self, source_layer: int) -> int:
        """How many layers a feature read at `source_layer` writes to."""
        return self.n_layers - source_layer if self.kind == "clt" else 1
