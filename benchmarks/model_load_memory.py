"""Peak RSS of loading a checkpoint with `--dtype float32` vs `bfloat16` (circuits.models.load_model).

Writes a random Llama checkpoint (bf16 safetensors, the dtype hub checkpoints ship in) of about
--params parameters under benchmarks/work/ (git-ignored), then loads it in a fresh process per
dtype and prints: the model's weight bytes, the process's peak RSS, its peak before loading
(imports), and load time. The checkpoint is deleted afterwards (--keep keeps it).

    PYTHONPATH=. nice -n 10 python benchmarks/model_load_memory.py [--params 500e6] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work" / "model_load_memory"

# VmHWM (this process's peak RSS since exec), not ru_maxrss: Linux keeps ru_maxrss across fork + exec,
# so a child would report the parent's peak (the writer held the whole random model)
CHILD = r"""
import json, sys, time
import torch
from circuits.models import load_model
def status_gb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1e6
before = status_gb("VmHWM:")
t0 = time.perf_counter()
loaded = load_model(sys.argv[1], dtype=sys.argv[2])
seconds = time.perf_counter() - t0
weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
print(json.dumps({"dtype": sys.argv[2], "weights_gb": weights / 1e9, "peak_rss_gb": status_gb("VmHWM:"),
                  "rss_before_gb": before, "load_s": seconds}))
"""


def make_checkpoint(folder: Path, params: float) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny_checkpoints import _bos_tokenizer

    tokenizer, ids = _bos_tokenizer()
    d = 1024
    per_layer = 4 * d * d + 3 * d * (4 * d)  # attention (q, k, v, o) + gated MLP (d_mlp = 4d)
    n_layers = max(1, round(params / per_layer))
    config = LlamaConfig(hidden_size=d, intermediate_size=4 * d, num_hidden_layers=n_layers, num_attention_heads=16,
                         num_key_value_heads=16, max_position_embeddings=256, **ids)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=float, default=500e6)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    folder = WORK / "llama"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    try:
        make_checkpoint(folder, args.params)
        disk = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1e9
        rows = []
        for dtype in ("float32", "bfloat16"):
            run = subprocess.run([sys.executable, "-c", CHILD, str(folder), dtype], capture_output=True, text=True,
                                 cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
        print(f"checkpoint: {disk:.2f} GB of bf16 safetensors")
        print(f"{'dtype':<9} {'weights':>8} {'peak RSS':>9} {'peak before load':>17} {'load':>7}")
        for r in rows:
            print(f"{r['dtype']:<9} {r['weights_gb']:>6.2f}GB {r['peak_rss_gb']:>7.2f}GB {r['rss_before_gb']:>15.2f}GB "
                  f"{r['load_s']:>6.1f}s")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
