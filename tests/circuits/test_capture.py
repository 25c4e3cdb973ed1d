"""One capture: every reading of a model's per-layer activations goes through
circuits.replacement.hooks.capture_layers, the transcoder trainer's included (transcoders/ never hooks a model)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from circuits.replacement.hooks import capture_layers
from circuits.training.train import ModelLayers
from tests.transcoders.tiny import TinyLayers, tiny_model, token_sequences
from transcoders.activation_source import ModelActivationSource

ROOT = Path(__file__).resolve().parents[2]
IN_HOOK, OUT_HOOK = "ln2.hook_normalized", "hook_mlp_out"


def test_the_trainers_activations_are_capture_layers_rows_without_bos_and_padding():
    model = tiny_model()
    seqs = [s[:n] for s, n in zip(token_sequences(6, length=12, seed=3), (12, 5, 9, 12, 3, 7))]
    source = ModelActivationSource(ModelLayers(model), seqs, IN_HOOK, OUT_HOOK, seq_len=12, model_batch=4,
                                   group_tokens=sum(len(s) - 1 for s in seqs))
    x_tok_layer_d, y_tok_layer_d, _ = source.read_group(source.start_position())
    expect_x, expect_y = [], []
    for seq in sorted(seqs, key=len):  # the source batches similar lengths together
        cap = capture_layers(model, torch.tensor([seq]), IN_HOOK, OUT_HOOK, logits=False)
        expect_x.append(cap.x_b_t_layer_d[0, 1:])
        expect_y.append(cap.y_b_t_layer_d[0, 1:])
    assert x_tok_layer_d.shape == (sum(len(s) - 1 for s in seqs), model.cfg.n_layers, model.cfg.d_model)
    torch.testing.assert_close(x_tok_layer_d, torch.cat(expect_x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_tok_layer_d, torch.cat(expect_y), rtol=1e-5, atol=1e-5)
    # and the capture itself reads what the model's hooks hold
    seen = {}
    tokens = torch.tensor([seqs[0]])
    model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.1.{OUT_HOOK}", lambda a, hook: seen.setdefault("y", a))])
    assert torch.equal(capture_layers(model, tokens, IN_HOOK, OUT_HOOK).y_b_t_layer_d[:, :, 1], seen["y"])


def _sources(package: str) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for p in sorted((ROOT / package).rglob("*.py"))}


def test_only_circuits_hooks_captures_and_transcoders_never_hooks_a_model():
    captures = [name for name, text in {**_sources("circuits"), **_sources("transcoders")}.items()
                if "run_with_cache" in text]
    assert captures == ["circuits/replacement/hooks.py"]
    hooking = re.compile(r"run_with_hooks|run_with_cache|\.hooks\(|add_hook|hook_dict")
    assert [name for name, text in _sources("transcoders").items() if hooking.search(text)] == []


def test_the_transcoder_tests_reader_reads_what_the_engine_reads():
    """tests/transcoders read models through TinyLayers (they never import circuits); it must give
    the engine's ModelLayers' activations exactly."""
    model = tiny_model()
    tokens = torch.tensor(token_sequences(3, length=10, seed=5))
    ours = ModelLayers(model)(tokens, IN_HOOK, OUT_HOOK)
    theirs = TinyLayers(model)(tokens, IN_HOOK, OUT_HOOK)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
