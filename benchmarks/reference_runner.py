"""Run the reference implementation (circuit-tracer, PyPI) on exact token ids and save its graph.

Runs INSIDE the reference venv (benchmarks/setup_reference.sh) and imports only circuit_tracer,
transformer_lens, transformers (for the tokenizer class), torch, numpy, safetensors and yaml,
never our packages:

    benchmarks/work/ct-venv/bin/python benchmarks/reference_runner.py \
        --model-dir D --transcoders T --tokens 0,17,42,... --out result.npz \
        [--max-feature-nodes N] [--batch-size B] [--repeat R] [--threads K] [--device cpu|cuda]

D is our cached-model format (config.json = HookedTransformerConfig fields, model.safetensors =
TransformerLens-named state dict, tokenizer.json, meta.json with "special_tokens"); T is a
circuit-tracer transcoder directory (config.yaml + safetensors, PLT or CLT layout). The tokens are
used as given: the first must be a special token (BOS), otherwise circuit-tracer would prepend one
and the runner refuses. The npz keys are listed in benchmarks/README.md ("npz written by the
reference runner"); nothing in it needs pickle (np.load(..., allow_pickle=False) works).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.metadata as md
import io
import json
import os
import re
import resource
import sys
import time
from pathlib import Path

KIND_FEATURE, KIND_ERROR, KIND_TOKEN, KIND_LOGIT = 0, 1, 2, 3


def die(msg: str) -> None:
    print(f"reference_runner: error: {msg}", file=sys.stderr)
    sys.exit(2)


def rss_now_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="circuit-tracer reference run on exact token ids")
    ap.add_argument("--model-dir", required=True, type=Path)
    ap.add_argument("--transcoders", required=True, type=Path)
    ap.add_argument("--tokens", required=True, help="comma-separated token ids, BOS included")
    ap.add_argument("--max-feature-nodes", type=int, default=None, help="default: all active features")
    ap.add_argument("--batch-size", type=int, default=512, help="circuit-tracer's batch_size (default 512)")
    ap.add_argument("--max-n-logits", type=int, default=10)
    ap.add_argument("--desired-logit-prob", type=float, default=0.95)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run attribute() R times; the graph of the last run is saved, all times are kept")
    ap.add_argument("--eager", action="store_true",
                    help="load all transcoder weights into memory (default: circuit-tracer's own default "
                         "lazy_encoder=False, lazy_decoder=True, i.e. decoder rows read from disk when needed)")
    ap.add_argument("--verbose", action="store_true", help="echo circuit-tracer's phase log")
    ap.add_argument("--hf-checkpoint", action="store_true",
                    help="--model-dir is a transformers checkpoint, run with circuit-tracer's nnsight backend "
                         "(what GemmaScope-2's mlp.hook_in / mlp.hook_out need on Gemma-2)")
    return ap.parse_args(argv)


def load_cfg(model_dir: Path, device: str):
    from transformer_lens import HookedTransformerConfig

    raw = json.loads((model_dir / "config.json").read_text())
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig)}
    kept = {k: v for k, v in raw.items() if k in known}
    dropped = sorted(set(raw) - known)
    kept["device"] = device
    return HookedTransformerConfig(**kept), dropped


def load_tokenizer(model_dir: Path):
    from transformers import PreTrainedTokenizerFast

    meta = json.loads((model_dir / "meta.json").read_text())
    tok = PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"),
                                  **meta.get("special_tokens", {}))
    # TransformerLens' set_tokenizer() re-loads the tokenizer by name_or_path with add_bos_token=True
    # unless it already has add_bos_token; a tokenizer built from a file has no name_or_path. Token
    # ids are passed explicitly, so the flag changes nothing we use (no text is tokenized).
    tok.init_kwargs.setdefault("name_or_path", str(model_dir))
    tok.init_kwargs["add_bos_token"] = True
    return tok


def load_transcoders(tdir: Path, device, eager: bool):
    """The transcoder directory loaded with circuit-tracer's own loaders (no hub access)."""
    import torch
    import yaml
    from circuit_tracer.transcoder.cross_layer_transcoder import load_clt
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    config = yaml.safe_load((tdir / "config.yaml").read_text())
    kind = config.get("model_kind")
    lazy = dict(lazy_encoder=False, lazy_decoder=not eager)
    common = dict(feature_input_hook=config["feature_input_hook"],
                  feature_output_hook=config["feature_output_hook"],
                  scan=config.get("scan", str(tdir)), device=device, dtype=torch.float32)
    paths = {}
    for i, p in enumerate(config.get("transcoders") or []):
        if str(p).startswith("hf://"):
            die(f"{tdir}/config.yaml names a hub file ({p}); the benchmark runs offline")
        paths[i] = str(p if Path(p).is_absolute() else tdir / p)
    gemma_scope_2 = bool(paths) and _has_tensor(paths[0], "w_enc")  # GemmaScope-2: w_enc, affine_skip_connection
    if gemma_scope_2:  # circuit-tracer's GemmaScope-2 loaders do not load lazily
        lazy = dict(lazy_encoder=False, lazy_decoder=False)
    if kind == "transcoder_set":
        if paths:
            if gemma_scope_2:
                common["special_load_fn"] = "gemma-scope-2"
        else:
            n = len(list(tdir.glob("layer_*.safetensors")))
            paths = {i: str(tdir / f"layer_{i}.safetensors") for i in range(n)}
        if not paths:
            die(f"no per-layer transcoder files in {tdir}")
        tc = load_transcoder_set(paths, **common, **lazy)
    elif kind == "cross_layer_transcoder" and gemma_scope_2:
        from circuit_tracer.transcoder.cross_layer_transcoder import load_gemma_scope_2_clt

        # circuit-tracer 0.5.0 reads layers range(max(paths)), one short of a full set: one extra key
        # (never read) makes it read every layer
        tc = load_gemma_scope_2_clt({**paths, len(paths): paths[len(paths) - 1]}, **common, **lazy)
    elif kind == "cross_layer_transcoder":
        tc = load_clt(str(tdir), **common, **lazy)
        attach_clt_skip(tc, tdir, device)
    else:
        die(f"{tdir}/config.yaml: unknown model_kind {kind!r}")
    return tc, config


def _has_tensor(path: str, name: str) -> bool:
    from safetensors import safe_open

    if not path.endswith(".safetensors"):
        return False
    with safe_open(path, framework="pt", device="cpu") as f:
        return name in f.keys()


def attach_clt_skip(tc, tdir: Path, device) -> None:
    """circuit-tracer 0.5.0's `load_clt` reads no skip term from a CLT directory (its `to_safetensors`
    writes none); its CrossLayerTranscoder takes one, W_skip [L, d, d] with y += x @ W_skip[l] (set by
    `load_gemma_scope_2_clt` from affine_skip_connection). When the encoder files carry W_skip_{i}
    (our `save_transcoder`, the fixture's clt-*-skip), give them to circuit-tracer's own class."""
    import torch
    from safetensors import safe_open

    skips = []
    for i in range(tc.n_layers):
        with safe_open(str(tdir / f"W_enc_{i}.safetensors"), framework="pt", device="cpu") as f:
            if f"W_skip_{i}" not in f.keys():
                return
            skips.append(f.get_tensor(f"W_skip_{i}").float())
    if getattr(tc, "W_skip", None) is not None:
        return
    tc.W_skip = torch.nn.Parameter(torch.stack(skips).to(device), requires_grad=False)
    tc.skip_connection = True


def remap_state_dict(state: dict, target_keys: set) -> dict:
    """Our TransformerLens names -> names inside circuit-tracer's wrapped modules
    (blocks.i.mlp.X -> blocks.i.mlp.old_mlp.X, unembed.X -> unembed.old_unembed.X)."""
    out = {}
    for k, v in state.items():
        if k.endswith((".mask", ".IGNORE")):  # derived buffers (causal mask); shapes differ across TL versions
            continue
        if k in target_keys:
            out[k] = v
            continue
        k2 = re.sub(r"^(blocks\.\d+\.mlp)\.", r"\1.old_mlp.", k)
        k2 = re.sub(r"^unembed\.", "unembed.old_unembed.", k2)
        out[k2] = v
    return out


def check_rotary_tables(state: dict, target_state: dict) -> None:
    """Rotary sin/cos tables are derived from the config (rotary_base, rotary_dim); our cache may
    store fewer rows than n_ctx. They are not loaded: the rows saved must equal the rows TL built."""
    import torch

    for k in [k for k in state if k.endswith((".rotary_sin", ".rotary_cos"))]:
        saved, built = state.pop(k), target_state[k]
        n = min(saved.shape[0], built.shape[0])
        if saved.shape[1:] != built.shape[1:] or not torch.allclose(saved[:n].float(), built[:n].float(),
                                                                     rtol=0, atol=1e-5):
            die(f"{k}: the saved rotary table differs from the one TransformerLens builds from config.json")


PHASES = {
    "precompute": r"Precomputation completed in ([0-9.]+)s",
    "forward": r"Forward pass completed in ([0-9.]+)s",
    "input_vectors": r"Input vectors built in ([0-9.]+)s",
    "logit_attribution": r"Logit attributions completed in ([0-9.]+)s",
    "feature_attribution": r"Feature attributions completed in ([0-9.]+)s",
    "total": r"Attribution completed in ([0-9.]+)s",
}


def main(argv=None) -> None:
    args = parse_args(argv)
    t_start = time.perf_counter()
    rss_start = rss_now_bytes()

    import numpy as np
    import torch
    from safetensors.torch import load_file

    from circuit_tracer import ReplacementModel, attribute

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        die("--device cuda but CUDA is not available")
    needed = ("config.json", "model.safetensors") if args.hf_checkpoint else \
        ("config.json", "model.safetensors", "tokenizer.json", "meta.json")
    for p in (*(args.model_dir / n for n in needed), args.transcoders / "config.yaml"):
        if not p.is_file():
            die(f"missing {p}")
    try:
        tokens = [int(t) for t in args.tokens.replace(" ", "").split(",") if t != ""]
    except ValueError:
        die(f"--tokens must be comma-separated integers, got {args.tokens!r}")
    if len(tokens) < 2:
        die("--tokens needs BOS plus at least one token")

    # ---- setup: config, tokenizer, transcoders, ReplacementModel, weights ----
    t0 = time.perf_counter()
    device = torch.device(args.device)
    transcoders, tc_config = load_transcoders(args.transcoders, device, args.eager)
    if args.hf_checkpoint:  # a transformers checkpoint through circuit-tracer's nnsight backend
        from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel

        model = NNSightReplacementModel.from_pretrained_and_transcoders(
            str(args.model_dir), transcoders, device=device, dtype=torch.float32)
        n_layers, dropped = int(transcoders.n_layers), []
    else:
        cfg, dropped = load_cfg(args.model_dir, args.device)
        if max(tokens) >= cfg.d_vocab or min(tokens) < 0:
            die(f"token ids must be in [0, {cfg.d_vocab})")
        if len(tokens) > cfg.n_ctx:
            die(f"{len(tokens)} tokens exceed the model's context n_ctx={cfg.n_ctx}")
        tokenizer = load_tokenizer(args.model_dir)
        model = ReplacementModel.from_config(cfg, transcoders, backend="transformerlens", tokenizer=tokenizer)
        target_state = model.state_dict()
        target_keys = set(target_state.keys())
        state = remap_state_dict(load_file(str(args.model_dir / "model.safetensors")), target_keys)
        check_rotary_tables(state, target_state)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith(("IGNORE", "mask", "rotary_sin", "rotary_cos"))
                   and not k.startswith("transcoders.")]
        if missing or unexpected:
            die(f"weights do not match config: missing {missing[:5]}, unexpected {unexpected[:5]}")
        n_layers = int(cfg.n_layers)
        model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    input_ids = torch.tensor(tokens, dtype=torch.long, device=device)
    checked = model.ensure_tokenized(input_ids)
    if checked.shape != input_ids.shape or not torch.equal(checked, input_ids):
        die(f"circuit-tracer would change the token ids (first id {tokens[0]} is not a special token, "
            f"so it prepends one); pass BOS first")
    setup_seconds = time.perf_counter() - t0
    peak_rss_setup = peak_rss_bytes()
    rss_before = rss_now_bytes()

    # ---- attribution ----
    times, cpu_times, phase_runs = [], [], []
    graph = None
    for _ in range(max(1, args.repeat)):
        graph = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        log = io.StringIO()
        t1, c1 = time.perf_counter(), time.process_time()
        # verbose=True makes circuit-tracer log its phase timings (and a tqdm bar) to sys.stderr,
        # which we capture to parse the phase times.
        with contextlib.redirect_stderr(log):
            graph = attribute(input_ids, model, max_n_logits=args.max_n_logits,
                              desired_logit_prob=args.desired_logit_prob, batch_size=args.batch_size,
                              max_feature_nodes=args.max_feature_nodes, verbose=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t1)
        cpu_times.append(time.process_time() - c1)
        text = log.getvalue()
        if args.verbose:
            print(text, file=sys.stderr)
        phase_runs.append({k: float(m.group(1)) for k, pat in PHASES.items() if (m := re.search(pat, text))})
    cuda_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else -1
    peak_rss = peak_rss_bytes()

    # ---- node ordering, as circuit-tracer lays out graph.adjacency_matrix ----
    A = graph.adjacency_matrix.detach().float().cpu().numpy()
    n_pos = len(tokens)
    active = graph.active_features.detach().cpu().numpy().astype(np.int64)          # (n_active, 3)
    act_vals = graph.activation_values.detach().float().cpu().numpy()              # (n_active,)
    selected = graph.selected_features.detach().cpu().numpy().astype(np.int64)     # (n_sel,) sorted
    feat_nodes = active[selected]
    logit_ids = graph.logit_token_ids.detach().cpu().numpy().astype(np.int64)
    logit_probs = graph.logit_probabilities.detach().float().cpu().numpy()
    n_feat, n_err, n_tok, n_logit = len(selected), n_layers * n_pos, n_pos, len(logit_ids)
    N = n_feat + n_err + n_tok + n_logit
    if A.shape != (N, N):
        die(f"unexpected adjacency shape {A.shape}, expected {(N, N)}")
    err_nodes = np.stack(np.meshgrid(np.arange(n_layers), np.arange(n_pos), indexing="ij"), -1).reshape(-1, 2)

    kind = np.concatenate([np.full(n_feat, KIND_FEATURE), np.full(n_err, KIND_ERROR),
                           np.full(n_tok, KIND_TOKEN), np.full(n_logit, KIND_LOGIT)]).astype(np.int8)
    node_layer = np.concatenate([feat_nodes[:, 0], err_nodes[:, 0], np.full(n_tok, -1),
                                 np.full(n_logit, n_layers)]).astype(np.int64)
    node_pos = np.concatenate([feat_nodes[:, 1], err_nodes[:, 1], np.arange(n_pos),
                               np.full(n_logit, n_pos - 1)]).astype(np.int64)
    node_index = np.concatenate([feat_nodes[:, 2], np.full(n_err, -1), np.array(tokens),
                                 logit_ids]).astype(np.int64)
    node_activation = np.concatenate([act_vals[selected], np.full(n_err + n_tok + n_logit, np.nan)]).astype(np.float32)

    with torch.no_grad():  # the real model's logits at the last position (for cross-checks)
        if args.hf_checkpoint:
            logits_last = model._model(input_ids[None]).logits[0, -1].float().cpu().numpy()
        else:
            logits_last = model(input_ids[None])[0, -1].float().cpu().numpy()

    versions = {}
    for name in ("circuit-tracer", "transformer-lens", "transformers", "torch", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    meta = {
        "engine": "circuit-tracer",
        "versions": versions,
        "model_dir": str(args.model_dir.resolve()),
        "transcoders": str(args.transcoders.resolve()),
        "transcoder_config": {k: v for k, v in tc_config.items() if k != "transcoders"},
        "transcoder_kind": type(transcoders).__name__,
        "feature_input_hook": tc_config["feature_input_hook"],
        "feature_output_hook": tc_config["feature_output_hook"],
        "skip_connection": bool(model.skip_transcoder),
        "config_keys_dropped": dropped,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "max_feature_nodes_arg": args.max_feature_nodes,
        "eager_transcoders": args.eager,
        "logit_tokens": [t.token_str for t in graph.logit_targets],
        "phase_seconds": phase_runs,
        "node_kind_codes": {"feature": KIND_FEATURE, "error": KIND_ERROR, "token": KIND_TOKEN, "logit": KIND_LOGIT},
        "adjacency_layout": "rows = targets, columns = sources; order [features(selected), errors(layer-major), tokens, logits]",
    }

    out = {
        "adjacency": A.astype(np.float32),
        "node_kind": kind, "node_layer": node_layer, "node_pos": node_pos, "node_index": node_index,
        "node_activation": node_activation,
        "active_features": active, "activation_values": act_vals.astype(np.float32),
        "selected_features": selected, "feature_nodes": feat_nodes,
        "error_nodes": err_nodes.astype(np.int64),
        "input_tokens": np.array(tokens, dtype=np.int64),
        "logit_token_ids": logit_ids, "logit_probabilities": logit_probs.astype(np.float32),
        "logits_last": logits_last.astype(np.float32),
        "n_layers": np.int64(n_layers), "n_pos": np.int64(n_pos),
        "n_feature_nodes": np.int64(n_feat), "n_error_nodes": np.int64(n_err),
        "n_token_nodes": np.int64(n_tok), "n_logit_nodes": np.int64(n_logit),
        "n_active_features": np.int64(len(active)),
        "setup_seconds": np.float64(setup_seconds),
        "attribution_seconds": np.float64(min(times)),
        "attribution_seconds_all": np.array(times, dtype=np.float64),
        "attribution_cpu_seconds": np.float64(min(cpu_times)),
        "attribution_cpu_seconds_all": np.array(cpu_times, dtype=np.float64),
        "process_seconds": np.float64(time.perf_counter() - t_start),
        "peak_rss_bytes": np.int64(peak_rss),
        "peak_rss_setup_bytes": np.int64(peak_rss_setup),
        "rss_start_bytes": np.int64(rss_start),
        "rss_before_attribution_bytes": np.int64(rss_before),
        "cuda_peak_bytes": np.int64(cuda_peak),
        "meta_json": np.array(json.dumps(meta)),
    }
    del graph, model  # run circuit-tracer's __del__ (reset_hooks) now, not during interpreter shutdown
    gc.collect()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, args.out)
    print(f"circuit-tracer {versions['circuit-tracer']}: {n_pos} tokens, {len(active)} active features "
          f"({n_feat} attributed), {n_logit} logits, adjacency {N}x{N}; "
          f"setup {setup_seconds:.2f}s, attribution {min(times):.2f}s (runs: "
          + ", ".join(f"{t:.2f}" for t in times) + f"; CPU {min(cpu_times):.2f}s); peak RSS {peak_rss / 2**20:.0f} MiB"
          + (f", CUDA peak {cuda_peak / 2**20:.0f} MiB" if cuda_peak >= 0 else "")
          + f" -> {args.out}")


if __name__ == "__main__":
    main()
