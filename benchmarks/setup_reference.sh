#!/usr/bin/env bash
# Create the virtual environment for the reference implementation (circuit-tracer, PyPI).
#
#   bash benchmarks/setup_reference.sh            # creates / updates benchmarks/work/ct-venv
#   CT_VENV=/some/where bash benchmarks/setup_reference.sh
#
# circuit-tracer needs an older transformers (<=4.57.3) than our engine, so it lives in its own
# venv. torch is installed FIRST from the local CPU wheel (torch==2.13.0): with torch already
# satisfied pip does not pull the multi-GB CUDA build. The other versions are pinned to the
# combination that was resolved and tested with torch 2.13.0 (see benchmarks/README.md); pip
# resolves nothing else afterwards. Idempotent: a venv whose pins already match is left alone.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${CT_VENV:-$HERE/work/ct-venv}"
PY="${PYTHON:-python3}"

TORCH_PIN="torch==2.13.0"
# The tested combination (pip's own resolution of circuit-tracer 0.5.0 next to torch 2.13.0).
PINS=(
  "circuit-tracer==0.5.0"
  "transformer-lens==3.2.1"
  "transformers==4.57.3"
  "tokenizers==0.22.2"
  "huggingface-hub==0.36.2"
  "nnsight==0.8.1"
  "safetensors==0.8.0"
  "numpy==2.4.6"
  "pyyaml==6.0.3"
  "einops==0.8.2"
)

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "creating venv at $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

stamp="$VENV/.reference-pins"
want="$(printf '%s\n' "$TORCH_PIN" "${PINS[@]}")"
if [[ -f "$stamp" ]] && [[ "$(cat "$stamp")" == "$want" ]] && "$VPY" - <<'EOF' 2>/dev/null
import circuit_tracer, transformer_lens, torch  # noqa: F401
assert torch.__version__.startswith("2.13.0")
EOF
then
  echo "reference venv already set up: $VENV"
  exit 0
fi

export PIP_DISABLE_PIP_VERSION_CHECK=1
# 1. torch first: the local CPU wheel (pip.conf's find-links has it; pip finds it by version).
"$VPY" -m pip install -q "$TORCH_PIN" 2> >(grep -v "is ignored: it is neither" >&2)
# 2. circuit-tracer with the pinned dependency set; the constraint keeps torch where it is.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$TORCH_PIN" > "$constraints"
"$VPY" -m pip install -q -c "$constraints" "${PINS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
# 3. sanity: torch unchanged, imports work, no CUDA runtime pulled in.
"$VPY" - <<'EOF'
import importlib.metadata as md
import torch, transformer_lens, transformers, circuit_tracer  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
for name in ("circuit-tracer", "transformer-lens", "transformers", "torch", "nnsight"):
    print(f"  {name}=={md.version(name)}")
cuda = [d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].startswith("nvidia-")]
assert not cuda, f"CUDA packages were pulled in: {cuda}"
EOF
echo "$want" > "$stamp"
echo "reference venv ready: $VENV"
