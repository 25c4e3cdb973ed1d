"""TrainConfig: everything a transcoder training run depends on, as one typed object.

It is also the CLI's help (`circuits transcoders train --help` lists these fields) and is saved as
`training_config.json` beside every trained transcoder, so a run can be reproduced from its folder.
"""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from transcoders.config import TranscoderArchitecture


BUFFER_BYTES = 512 << 20  # default shuffle group: x and y in float32 (the trainer holds about two groups at once)
MAX_BUFFER_TOKENS = 65536
MAX_TOKENS = 10**12  # a trillion tokens: beyond any transcoder run; larger values are typing mistakes


class TrainConfig(BaseModel):
    """How to train a transcoder: its architecture (`transcoder`), the data and the optimisation."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    RUNTIME_FIELDS: typing.ClassVar[frozenset[str]] = frozenset({"threads", "checkpoint_seconds", "eval_tokens",
                                                                   "eval_every_tokens"})
    """Fields that do not change what is trained; --resume may change them."""

    transcoder: TranscoderArchitecture = Field(default_factory=TranscoderArchitecture,
                                               description="the transcoder's architecture")

    # --- data ---------------------------------------------------------------------------------
    tokens: int = Field(3_000_000, gt=0, le=MAX_TOKENS, description="training tokens (positions, summed over steps)")
    batch_size: int = Field(1024, gt=0, le=1 << 24, description="tokens per optimiser step (global, over all ranks)")
    seq_len: int = Field(128, gt=1, le=1 << 20, description="longest sequence fed to the model (longer ones are cut)")
    model_batch: int = Field(64, gt=0, le=1 << 20, description="sequences per model forward pass")
    buffer_tokens: int | None = Field(None, gt=0, le=1 << 32, description="token-level shuffle buffer size (default: "
                                      "as many tokens as fit in 512 MiB of float32 x and y, at most 65536, "
                                      "a multiple of --batch-size)")
    activation_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS, description="distinct tokens to run the model on "
                                          "(default: --tokens); training cycles over them (kept in memory, "
                                          "or in --cache-dir)")
    activation_dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32", description="precision of the model's forward passes that collect training activations "
        "(bfloat16: autocast, about 2x faster on CPUs with bf16 matmuls but several times slower on CPUs "
        "without them; auto: bfloat16 where a timed product says it is faster here, else float32; "
        "activations stay float32 after)")

    # --- optimisation -------------------------------------------------------------------------
    lr: float = Field(2e-3, gt=0, le=1e3, description="Adam learning rate")
    lr_warmup_steps: int = Field(50, ge=0, le=10**12, description="linear LR warm-up steps")
    lr_decay_frac: float = Field(0.2, ge=0, le=1, description="fraction of training at the end with linear LR decay to 0")
    grad_clip: float = Field(1.0, gt=0, le=1e12, description="gradient norm clip")
    sparsity_coef: float = Field(0.1, ge=0, le=1e12, description="lambda of the tanh sparsity penalty")
    sparsity_c: float = Field(1.0, gt=0, le=1e12, description="c in tanh(c * ||W_dec_i|| * a_i)")
    sparsity_warmup_frac: float = Field(0.5, ge=0, le=1, description="fraction of training over which lambda ramps up from 0")
    preact_coef: float = Field(3e-6, ge=0, le=1e12, description="pre-activation loss coefficient (keeps features alive)")
    revive_after_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS, description="apply the pre-activation loss only to "
                                            "features silent for this many tokens (unset or 0: to every feature)")
    recon_loss: Literal["sum", "fvu"] = Field("sum", description="reconstruction term: sum of squared errors over "
                                              "layers (sum), or d * sum_l FVU_l on the batch, each layer weighted "
                                              "equally (fvu)")
    decoder_init: Literal["uniform", "zero", "encoder"] = Field(
        "uniform", description="decoder start: uniform random, zero, or each feature's unit-norm encoder row "
        "(at its own layer; zero elsewhere)")
    encoder_init: Literal["uniform", "data"] = Field(
        "uniform", description="encoder start: uniform random rows, or each feature reading the direction of "
        "one centred input of the first shuffle group (features start spread over where the data lies)")
    encoder_bias_init: Literal["zero", "centred"] = Field(
        "zero", description="encoder bias start: zero, or -W_enc E[x] (features read centred inputs at the start)")
    decoder_unit_norm: bool = Field(False, description="rescale every feature's decoder to norm 1 after each step "
                                    "(TopK / BatchTopK; the tanh penalty of JumpReLU reads the norms)")
    skip_init: Literal["zero", "lstsq"] = Field(
        "zero", description="skip term start (--skip): zero, or the least-squares affine map from inputs to "
        "outputs on the first shuffle group (W_skip and b_dec; ridge-regularised), so features learn what a "
        "linear map leaves")
    skip_lr_scale: float = Field(1.0, ge=0, le=1e6, description="W_skip's learning rate as a multiple of --lr "
                                 "(0: W_skip stays at its start)")
    auxk_coef: float = Field(0.0, ge=0, le=1e12, description="AuxK coefficient: the top --auxk-k dead features "
                             "(silent for --revive-after-tokens, default --dead-after-tokens) reconstruct the residual")
    auxk_k: int | None = Field(None, gt=0, le=1 << 20, description="dead features per token in the AuxK term "
                               "(default d_model / 2)")
    threshold_init: float = Field(0.5, ge=0, le=1e12, description="initial JumpReLU threshold (normalised units)")
    dead_after_tokens: int = Field(1_000_000, gt=0, le=MAX_TOKENS, description="a feature silent this many tokens counts as dead")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed (init, shuffling)")

    # --- bookkeeping --------------------------------------------------------------------------
    checkpoint_seconds: float = Field(60.0, ge=0, le=1e9, description="write a resumable checkpoint at most this often (0: every log step)")
    log_every: int = Field(25, gt=0, le=10**12, description="steps between progress / JSONL log lines")
    eval_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS, description="held-out tokens scored after training "
                                    "(default: a tenth of --tokens, 2048 to 32768; 0: no score)")
    eval_every_tokens: int | None = Field(None, gt=0, le=MAX_TOKENS, description="every this many training tokens, "
                                          "score reconstruction (FVU, L0, dead) on held-out positions and log it "
                                          "(a held-out learning curve; unset: only at the end)")
    cache_dir: str | None = Field(None, description="memory-mapped activation cache folder (reused across runs; "
                                  "`circuits transcoders cache-activations` builds one)")
    cache_dtype: Literal["float32", "bfloat16"] = Field("bfloat16", description="storage precision of --cache-dir "
                                                        "(bfloat16: half the disk and reads)")
    threads: int | None = Field(None, ge=1, le=4096, description="CPU threads for training (default: measure 1 vs torch's "
                                "default on this machine and keep the faster; a busy machine often favours 1)")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.buffer_tokens is not None and self.buffer_tokens < self.batch_size:
            raise ValueError(f"buffer_tokens ({self.buffer_tokens}) must be >= batch_size ({self.batch_size})")
        if not self.transcoder.skip and (self.skip_init != "zero" or self.skip_lr_scale != 1.0):
            raise ValueError("--skip-init and --skip-lr-scale need a skip term (--skip)")
        if self.decoder_unit_norm and self.transcoder.activation == "jumprelu":
            raise ValueError("--decoder-unit-norm is for topk / batchtopk / relu (JumpReLU's penalty reads decoder norms)")
        return self

    def training_fields(self) -> dict:
        """The settings a resumed run must keep (everything but RUNTIME_FIELDS), flat."""
        return {k: v for k, v in self.flat().items() if k not in self.RUNTIME_FIELDS}

    def flat(self) -> dict:
        """Every setting by its own name, the architecture's beside the run's (the CLI's shape)."""
        return {**self.transcoder.model_dump(), **self.model_dump(exclude={"transcoder"})}

    @classmethod
    def from_flat(cls, values: dict) -> "TrainConfig":
        """The config from settings by name: architecture fields may be given flat (as CLI options
        are, and as training_config.json / checkpoints written before the nesting hold them) or in
        a nested `transcoder` dict; flat ones win."""
        values = dict(values)
        nested = values.pop("transcoder", None) or {}
        arch = dict(nested.model_dump() if isinstance(nested, BaseModel) else nested)
        arch.update({k: values.pop(k) for k in list(values) if k in TranscoderArchitecture.model_fields})
        return cls(**values, transcoder=arch)

    def updated(self, values: dict) -> "TrainConfig":
        """A copy with `values` (flat names) changed, validated."""
        return self.from_flat({**self.flat(), **values})

    def group_tokens(self, n_layers: int, d_model: int) -> int:
        """The shuffle buffer's size in tokens: buffer_tokens, or derived from BUFFER_BYTES and the
        activation shape (one group holds x and y, [tokens, n_layers, d_model] float32 each)."""
        if self.buffer_tokens is not None:
            return self.buffer_tokens
        fit = BUFFER_BYTES // (2 * 4 * n_layers * d_model)
        return max(self.batch_size, min(MAX_BUFFER_TOKENS, fit) // self.batch_size * self.batch_size)

    @property
    def n_steps(self) -> int:
        return max(1, self.tokens // self.batch_size)
