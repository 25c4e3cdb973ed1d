"""Everything that evolves during training (transcoder, Adam, normalisation scales, dead-feature
trackers, step) with one optimisation step and save/load to a resumable checkpoint."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import torch

from transcoders.checkpoint import load_checkpoint, load_optimizer_tensors, optimizer_tensors, save_checkpoint
from transcoders.distributed import DistInfo, all_reduce_sum, wrap_ddp
from transcoders.errors import TranscoderError
from transcoders.loss import TranscoderObjective
from transcoders.normalization import estimate_scales, fold_normalization
from transcoders.train_config import TrainConfig
from transcoders.transcoder import Transcoder


@torch.no_grad()
def init_from_data(tc: Transcoder, cfg: TrainConfig, x_mean_ld: torch.Tensor,
                   x_tok_layer_d: torch.Tensor | None = None) -> None:
    """--encoder-init, --decoder-init and --encoder-bias-init on normalised data (x_mean_ld [L, d]:
    mean input; x_tok_layer_d: the first group, for --encoder-init data)."""
    if cfg.encoder_init == "data":
        L, F, _ = tc.W_enc.shape
        rows = torch.randperm(x_tok_layer_d.shape[0])[:F]  # F distinct inputs (with repeats if fewer)
        rows = rows[torch.arange(F) % rows.numel()]
        centred_lfd = (x_tok_layer_d[rows] - x_mean_ld.cpu()).transpose(0, 1).to(tc.W_enc)
        norm_lf1 = tc.W_enc.norm(dim=-1, keepdim=True)  # keep the random start's row norms
        tc.W_enc.copy_(centred_lfd / centred_lfd.norm(dim=-1, keepdim=True).clamp_min(1e-8) * norm_lf1)
    if cfg.decoder_init == "zero":
        for W in tc.W_dec:
            W.zero_()
    elif cfg.decoder_init == "encoder":
        unit_lfd = tc.W_enc / tc.W_enc.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        for l, W in enumerate(tc.W_dec):
            W.zero_()
            W[:, 0].copy_(unit_lfd[l])
    if cfg.encoder_bias_init == "centred":
        tc.b_enc.copy_(-torch.einsum("lfd,ld->lf", tc.W_enc, x_mean_ld))


@torch.no_grad()
def fit_skip(tc: Transcoder, x_tok_layer_d: torch.Tensor, y_tok_layer_d: torch.Tensor, ridge: float = 1e-3) -> None:
    """W_skip_l, b_dec_l <- the least-squares affine map y_l ~ x_l W + b on normalised data, ridge
    `ridge` x mean eigenvalue of the centred inputs' Gram matrix (the first group holds a few
    thousand tokens for d x d unknowns per layer: the ridge keeps the fit from reading noise)."""
    x_lnd = x_tok_layer_d.transpose(0, 1).double()
    y_lnd = y_tok_layer_d.transpose(0, 1).double()
    x_mean_l1d, y_mean_l1d = x_lnd.mean(1, keepdim=True), y_lnd.mean(1, keepdim=True)
    xc_lnd, yc_lnd = x_lnd - x_mean_l1d, y_lnd - y_mean_l1d
    gram_ldd = xc_lnd.transpose(1, 2) @ xc_lnd
    d = gram_ldd.shape[-1]
    scale_l = gram_ldd.diagonal(dim1=1, dim2=2).mean(-1) * ridge
    eye_dd = torch.eye(d, dtype=gram_ldd.dtype)
    W_ldd = torch.linalg.solve(gram_ldd + scale_l[:, None, None] * eye_dd, xc_lnd.transpose(1, 2) @ yc_lnd)
    b_ld = (y_mean_l1d - x_mean_l1d @ W_ldd)[:, 0]
    tc.W_skip.copy_(W_ldd.to(tc.W_skip))
    tc.b_dec.copy_(b_ld.to(tc.b_dec))


@torch.no_grad()
def update_batchtopk_threshold(tc: Transcoder, acts_lnf: torch.Tensor, step: int, decay: float = 0.9) -> None:
    """theta_l <- running mean (EMA) of the smallest activation BatchTopK kept at layer l; outside
    training a feature fires when its pre-activation exceeds theta_l (Bussmann et al. 2024). The
    time constant is ~10 steps: on runs of a few hundred steps a slower average (0.99) remembered
    the first steps' small activations and gave 4x the L0 at inference."""
    kept_min_l = acts_lnf.masked_fill(acts_lnf <= 0, float("inf")).amin(dim=(1, 2))
    kept_min_l = torch.where(torch.isfinite(kept_min_l), kept_min_l, tc.threshold[:, 0])
    rate = 1.0 if step == 0 else 1 - decay
    tc.threshold.mul_(1 - rate).add_(rate * kept_min_l[:, None])


class TrainState:
    def __init__(self, cfg: TrainConfig, n_layers: int, d_model: int, device: str, info: DistInfo,
                 model_name: str, source_id: str):
        self.cfg, self.info, self.device = cfg, info, device
        self.tcfg = cfg.transcoder.fitted(n_layers, d_model)
        self.model_name, self.source_id = model_name, source_id
        self.step, self.tokens_seen, self.elapsed_before = 0, 0, 0.0
        self.resumed_from: int | None = None
        self.run_id = uuid.uuid4().hex[:12]  # tags this run's log lines; kept across resumes
        self._t_start = time.monotonic()
        L, F = n_layers, cfg.transcoder.n_features
        self.s_in = torch.ones(L)
        self.s_out = torch.ones(L)
        self.silent_tokens_layer_feat = torch.zeros(L, F, dtype=torch.long)
        torch.manual_seed(cfg.seed)
        self.tc = Transcoder(self.tcfg, device=device)
        if self.tc.cfg.activation == "jumprelu":  # batchtopk: its threshold is set from the first batch
            with torch.no_grad():
                self.tc.threshold.fill_(cfg.threshold_init)
        self.objective = TranscoderObjective(self.tc, cfg.sparsity_c, cfg.preact_coef, cfg.recon_loss,
                                             cfg.auxk_coef, cfg.auxk_k)
        if self.tc.W_skip is not None and cfg.skip_lr_scale == 0:  # frozen at its start: no gradient formed
            self.tc.W_skip.requires_grad_(False)
        self.module = wrap_ddp(self.objective, info, device)
        self.opt = torch.optim.Adam(self._param_groups(), lr=cfg.lr, fused=True)

    def _param_groups(self) -> list[dict]:
        """Adam's groups: W_skip apart when --skip-lr-scale sets its own rate (lr_scale: x --lr)."""
        params = list(self.objective.parameters())
        skip = self.tc.W_skip
        if skip is None or self.cfg.skip_lr_scale == 1.0:
            return [{"params": params, "lr_scale": 1.0}]
        rest = [p for p in params if p is not skip]
        if not skip.requires_grad:
            return [{"params": rest, "lr_scale": 1.0}]
        return [{"params": rest, "lr_scale": 1.0}, {"params": [skip], "lr_scale": self.cfg.skip_lr_scale}]

    # --- start ---------------------------------------------------------------------------------
    @torch.no_grad()
    def init_fresh(self, x0_tok_layer_d: torch.Tensor, y0_tok_layer_d: torch.Tensor) -> None:
        """Normalisation scales from the first group; b_dec starts at the mean normalised output."""
        self.s_in, self.s_out = estimate_scales(x0_tok_layer_d), estimate_scales(y0_tok_layer_d)
        x0 = x0_tok_layer_d * self.s_in[None, :, None]  # the first group as training sees it (normalised)
        y0 = y0_tok_layer_d * self.s_out[None, :, None]
        self.tc.b_dec.copy_(y0.mean(0).to(self.tc.b_dec.device))
        init_from_data(self.tc, self.cfg, x0.mean(0).to(self.tc.W_enc.device), x0)
        if self.cfg.skip_init == "lstsq":
            fit_skip(self.tc, x0, y0)

    # --- one optimisation step -------------------------------------------------------------------
    def train_step(self, x_tok_layer_d: torch.Tensor, y_tok_layer_d: torch.Tensor, lr: float, lam: float) -> dict:
        dev = self.device
        x = (x_tok_layer_d.to(dev) * self.s_in.to(dev)[None, :, None])
        y = (y_tok_layer_d.to(dev) * self.s_out.to(dev)[None, :, None])
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        dead = self.dead_mask() if self.cfg.auxk_coef > 0 else None
        loss, parts, y_hat, acts = self.module(x, y, lam, self.preact_mask(), dead)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.objective.parameters(), self.cfg.grad_clip)
        self.opt.step()
        with torch.no_grad():
            if self.cfg.decoder_unit_norm:
                for W in self.tc.W_dec:
                    W.div_(W.pow(2).sum(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-8))
            if self.tc.cfg.activation == "batchtopk":
                update_batchtopk_threshold(self.tc, acts, self.step)
            active_lnf = acts != 0  # acts [L, N, F]
            fired = all_reduce_sum(active_lnf.any(1).long(), self.info).cpu() > 0
            n_global = x.shape[0] * self.info.world_size
            self.silent_tokens_layer_feat += n_global
            self.silent_tokens_layer_feat[fired] = 0
            err = (y - y_hat).pow(2).sum(dim=(0, 2))
            var = (y - y.mean(0, keepdim=True)).pow(2).sum(dim=(0, 2))
            l0 = active_lnf.sum(dim=(1, 2)).float()
        self.step += 1
        self.tokens_seen += n_global
        return {"loss": loss.detach(), **parts, "lambda": lam, "lr": lr, "n": x.shape[0],
                "err_layer": err.cpu(), "var_layer": var.cpu(), "active_layer": l0.cpu()}

    def preact_mask(self) -> torch.Tensor | None:
        """[L, F] 0/1: features the pre-activation loss applies to (None: every feature)."""
        if not self.cfg.revive_after_tokens:
            return None
        return (self.silent_tokens_layer_feat >= self.cfg.revive_after_tokens).float().to(self.device)

    def dead_mask(self) -> torch.Tensor:
        """[L, F] 0/1: features silent for --revive-after-tokens (default --dead-after-tokens), for AuxK."""
        window = self.cfg.revive_after_tokens or self.cfg.dead_after_tokens
        return (self.silent_tokens_layer_feat >= window).float().to(self.device)

    def dead_fraction(self) -> float:
        window = min(self.cfg.dead_after_tokens, max(self.tokens_seen // 2, 1))
        return float((self.silent_tokens_layer_feat >= window).float().mean())

    def start_clock(self, t_monotonic: float) -> None:
        self._t_start = t_monotonic

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self._t_start

    # --- results -------------------------------------------------------------------------------
    def raw_transcoder(self) -> Transcoder:
        """The transcoder on raw activations (a BatchTopK one as JumpReLU at its learnt thresholds)."""
        return fold_normalization(self.tc, self.s_in, self.s_out).as_jumprelu()

    def summary(self) -> dict:
        secs = self.elapsed()
        return {"steps": self.step, "tokens": self.tokens_seen, "seconds": round(secs, 2),
                "tokens_per_s": round(self.tokens_seen / max(secs, 1e-9), 1),
                "dead_fraction_train": round(self.dead_fraction(), 6),
                "resumed_from_step": self.resumed_from}

    def config_record(self) -> dict:
        return {"model_name": self.model_name, "source_id": self.source_id,
                "train_config": self.cfg.model_dump(), "transcoder_config": self.tcfg.model_dump(),
                "world_size": self.info.world_size,
                "normalization": {"s_in": self.s_in.tolist(), "s_out": self.s_out.tolist()}}

    # --- checkpoints ---------------------------------------------------------------------------
    def save(self, path: Path, buffer) -> None:
        tensors = {f"tc.{k}": v for k, v in self.tc.state_dict().items()}
        opt_tensors, param_groups = optimizer_tensors(self.opt)
        tensors.update(opt_tensors)
        tensors.update({"norm.s_in": self.s_in, "norm.s_out": self.s_out,
                        "track.silent_tokens": self.silent_tokens_layer_feat,
                        "rng.torch": torch.get_rng_state()})
        meta = {"train_config": self.cfg.model_dump(), "step": self.step, "tokens_seen": self.tokens_seen,
                "buffer": buffer.state_dict(), "param_groups": param_groups, "model_name": self.model_name,
                "source_id": self.source_id, "elapsed_s": self.elapsed(), "run_id": self.run_id}
        save_checkpoint(path, tensors, meta)

    def load(self, path: Path, buffer) -> None:
        tensors, meta = load_checkpoint(path)
        saved = TrainConfig.from_flat(meta["train_config"])  # flat in checkpoints before the nesting
        if saved.training_fields() != self.cfg.training_fields():
            ours = self.cfg.training_fields()
            diff = [k for k, v in saved.training_fields().items() if ours.get(k) != v]
            raise TranscoderError(f"--resume: the settings differ from the checkpoint in {path.parent} "
                                  f"({', '.join(diff)}); resume with the original settings")
        if meta.get("source_id") != self.source_id:
            raise TranscoderError(f"--resume: the checkpoint was trained on '{meta.get('source_id')}', "
                                  f"not '{self.source_id}'")
        state = {k[3:]: v.to(self.device) for k, v in tensors.items() if k.startswith("tc.")}
        self.tc.load_state_dict(state)
        load_optimizer_tensors(self.opt, {k: v.to(self.device) if not k.endswith(".step") else v
                                          for k, v in tensors.items()}, meta["param_groups"])
        self.s_in, self.s_out = tensors["norm.s_in"], tensors["norm.s_out"]
        self.silent_tokens_layer_feat = tensors["track.silent_tokens"]
        torch.set_rng_state(tensors["rng.torch"])
        self.step, self.tokens_seen = int(meta["step"]), int(meta["tokens_seen"])
        self.elapsed_before, self._t_start = float(meta["elapsed_s"]), time.monotonic()
        self.resumed_from = self.step
        self.run_id = meta.get("run_id")
        buffer.load_state_dict(meta["buffer"])
