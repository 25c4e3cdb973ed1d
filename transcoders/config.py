"""The transcoder's architecture as typed objects.

- `TranscoderArchitecture`: what a transcoder is, independent of the model it is fitted to (kind,
  features per layer, nonlinearity, skip term, the hooks it reads and writes). A training run holds
  one (`TrainConfig.transcoder`; the nesting follows sparsify's `TrainConfig.sae`).
- `TranscoderConfig`: that architecture fitted to a model (adds n_layers and d_model); every
  Transcoder carries one, and it is saved beside every transcoder.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TranscoderArchitecture(BaseModel):
    """Architecture of a transcoder: cross-layer (CLT) or per-layer (PLT), and its activation."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["clt", "plt"] = Field("clt", description="clt: features write to every later layer; plt: own layer only")
    n_features: int = Field(1024, gt=0, le=1 << 20, description="features per layer",
                            json_schema_extra={"flag": "--features"})
    activation: Literal["jumprelu", "relu", "topk"] = Field("jumprelu", description="feature nonlinearity")
    topk: int | None = Field(None, gt=0, le=1 << 20, description="k per layer and token (activation topk)")
    skip: bool = Field(False, description="add a linear skip term W_skip x")
    jumprelu_bandwidth: float = Field(0.5, gt=0, le=1e12, description="STE rectangle width for the threshold gradient")
    input_hook: str = Field("ln2.hook_normalized", description="hook the features read, per block")
    output_hook: str = Field("hook_mlp_out", description="hook the transcoder reconstructs, per block")

    @model_validator(mode="after")
    def _topk_needs_k(self):
        if self.activation == "topk" and self.topk is None:
            raise ValueError("activation 'topk' needs --topk K")
        if self.activation != "topk" and self.topk is not None:  # an option that would do nothing
            raise ValueError(f"--topk {self.topk} does nothing with activation '{self.activation}': "
                             "add --activation topk, or drop --topk")
        if self.topk is not None and self.topk > self.n_features:
            raise ValueError(f"--topk {self.topk} is more than the {self.n_features} features per layer "
                             "(--features): k active features per layer cannot hold")
        return self

    def fitted(self, n_layers: int, d_model: int) -> "TranscoderConfig":
        """This architecture for a model with `n_layers` layers of width `d_model`."""
        return TranscoderConfig(**self.model_dump(), n_layers=n_layers, d_model=d_model)


class TranscoderConfig(TranscoderArchitecture):
    """A transcoder's architecture fitted to a model."""

    n_layers: int = Field(..., gt=0, description="number of transformer layers (MLPs replaced)")
    d_model: int = Field(..., gt=0, description="residual stream width")

    def n_outputs(self, source_layer: int) -> int:
        """How many layers a feature read at `source_layer` writes to."""
        return self.n_layers - source_layer if self.kind == "clt" else 1
