"""Interventions (constrained patching): exact hook values, hand computations, bad input, the CLI."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from circuits.errors import CircuitsError
from circuits.interventions import (
    Intervention, check_layer_range, clean_run, decoder_deltas, feature_activations, injections_from, intervene_tokens,
    parse_layer_range, parse_set, patch_hooks, resolve_changes)

WORDS = ("the capital of state containing dallas is austin texas california sacramento calc : + = "
         "0 1 2 3 4 5 6 7 8 9 fact a in for kobe bryant played basketball lakers los angeles where city").split()


def make_tiny_pair(seed: int = 0):
    """A random 4-layer LayerNorm HookedTransformer (word tokenizer) and a random sparse CLT for it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from transcoders.config import TranscoderConfig
    from transcoders.transcoder import Transcoder

    vocab = {w: i for i, w in enumerate(["<bos>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")
    fast.init_kwargs.update(name_or_path="", add_bos_token=True)  # keeps TransformerLens from reloading it by name
    cfg = HookedTransformerConfig(n_layers=4, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32,
                                  d_vocab=len(vocab), act_fn="gelu", normalization_type="LN", seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=fast)
    model.eval()
    torch.manual_seed(seed)
    transcoder = Transcoder(TranscoderConfig(kind="clt", n_layers=4, d_model=32, n_features=24))
    with torch.no_grad():
        transcoder.W_enc.normal_(0, 0.4)
        transcoder.threshold.uniform_(0.2, 0.8)
        for W in transcoder.W_dec:
            W.normal_(0, 0.5)
    transcoder.requires_grad_(False)
    return model, transcoder


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: ~10x faster on one thread of 2 shared cores


def active_feature(acts_pos_layer_feat, layer, pos):
    """The most active feature at (layer, pos)."""
    feature = int(acts_pos_layer_feat[pos, layer].argmax())
    assert acts_pos_layer_feat[pos, layer, feature] > 0
    return feature


def inactive_feature(acts_pos_layer_feat, layer, pos):
    return int(torch.nonzero(acts_pos_layer_feat[pos, layer] == 0)[0])


# --- semantics -------------------------------------------------------------------------------
@pytest.mark.parametrize("clamp", [False, True])
@pytest.mark.parametrize("freeze", [False, True])
def test_identity_interventions_leave_logits_unchanged(pair, tokens, clamp, freeze):
    model, tc = pair
    acts = feature_activations(model, tc, tokens)
    f1, f2 = active_feature(acts, 1, 4), active_feature(acts, 0, -1)
    ivs = [Intervention(1, 4, f1, multiplier=1.0), Intervention(0, -1, f2, value=float(acts[-1, 0, f2]))]
    result = intervene_tokens(model, tc, tokens, ivs, freeze_attention=freeze, clamp_mlps=clamp)
    assert torch.allclose(result.logits_after, result.logits_before, atol=1e-5)
    assert abs(result.kl) < 1e-8
    assert torch.allclose(result.acts_after, acts, atol=1e-5)


def _patched_mlp_outs(model, tc, tokens, ivs, layers, clamp):
    """Run with the patch hooks and record every MLP output as the next block sees it."""
    clean = clean_run(model, tc, tokens)
    changes = resolve_changes(ivs, clean.acts_pos_layer_feat)
    span = check_layer_range(layers, changes, tc)
    hooks = patch_hooks(model, tc, clean, decoder_deltas(tc, changes, span, tokens.shape[0]), span,
                        freeze_attention=True, clamp_mlps=clamp)
    seen = {}
    reads = [(f"blocks.{l}.hook_mlp_out", lambda x, hook, l=l: seen.__setitem__(l, x[0].clone())) for l in range(4)]
    with model.hooks(fwd_hooks=hooks + reads):
        logits = model(tokens[None])[0]
    return clean, changes, seen, logits


@pytest.mark.parametrize("clamp", [False, True])
def test_first_patched_layer_mlp_out_moves_by_delta_times_decoder(pair, tokens, clamp):
    model, tc = pair
    acts = feature_activations(model, tc, tokens)
    f = active_feature(acts, 1, 5)
    ivs = [Intervention(1, 5, f, multiplier=-1.0)]
    clean, changes, seen, logits = _patched_mlp_outs(model, tc, tokens, ivs, None, clamp)
    delta_a = -2.0 * float(acts[5, 1, f])
    assert changes[0].after == pytest.approx(-float(acts[5, 1, f]))
    expected = torch.zeros_like(clean.mlp_out_pos_layer_d[:, 1])
    expected[5] = delta_a * tc.W_dec[1][f, 0]
    assert torch.allclose(seen[1] - clean.mlp_out_pos_layer_d[:, 1], expected, atol=1e-5)
    assert torch.equal(seen[0], clean.mlp_out_pos_layer_d[:, 0])  # layers before the range are untouched
    # layer 2: clamped = clean + delta * W_dec_{1->2} exactly; running MLPs also react to the new residual
    expected[5] = delta_a * tc.W_dec[1][f, 1]
    reaction = (seen[2] - clean.mlp_out_pos_layer_d[:, 2] - expected).abs().max()
    assert (reaction < 1e-5) if clamp else (reaction > 1e-3)
    result = intervene_tokens(model, tc, tokens, ivs, clamp_mlps=clamp)   # intervene() runs exactly these hooks
    assert torch.allclose(result.logits_after, logits, atol=1e-6)


def test_ablation_patched_only_in_last_layer_equals_hand_computation(pair, tokens):
    model, tc = pair
    acts = feature_activations(model, tc, tokens)
    f = active_feature(acts, 1, 6)
    _, cache = model.run_with_cache(tokens[None])
    resid_pos_d = cache["blocks.3.hook_resid_post"][0].clone()
    resid_pos_d[6] -= acts[6, 1, f] * tc.W_dec[1][f, 2]       # its write into MLP 3, removed
    hand_logits = model.unembed(model.ln_final(resid_pos_d[None]))[0]
    for clamp in (False, True):
        result = intervene_tokens(model, tc, tokens, [Intervention(1, 6, f, multiplier=0.0)], layers=(3, 3), clamp_mlps=clamp)
        assert torch.allclose(result.logits_after, hand_logits, atol=1e-5)
        assert not torch.allclose(result.logits_after, result.logits_before, atol=1e-3)


def test_freeze_attention_holds_patterns_at_clean_values(pair, tokens):
    model, tc = pair
    clean = clean_run(model, tc, tokens)
    changes = resolve_changes([Intervention(0, 2, 0, value=25.0)], clean.acts_pos_layer_feat)
    deltas = decoder_deltas(tc, changes, (0, 3), tokens.shape[0])
    patterns = {}
    for freeze in (True, False):
        hooks = patch_hooks(model, tc, clean, deltas, (0, 3), freeze_attention=freeze)
        read = [("blocks.2.attn.hook_pattern", lambda x, hook, f=freeze: patterns.__setitem__(f, x[0].clone()))]
        with model.hooks(fwd_hooks=hooks + read):
            model(tokens[None])
    assert torch.allclose(patterns[True], clean.patterns[2], atol=1e-7)
    assert (patterns[False] - clean.patterns[2]).abs().max() > 1e-3


def test_position_ranges_equal_separate_interventions(pair, tokens):
    model, tc = pair
    n = tokens.shape[0]
    ranged = intervene_tokens(model, tc, tokens, [Intervention(1, (-3, -1), 7, value=3.0)])
    single = intervene_tokens(model, tc, tokens, [Intervention(1, p, 7, value=3.0) for p in (n - 3, n - 2, n - 1)])
    assert [c.pos for c in ranged.changes] == [n - 3, n - 2, n - 1]
    assert torch.allclose(ranged.logits_after, single.logits_after, atol=1e-6)


def test_injection_copies_the_activation_from_another_prompt(pair, tokens):
    from circuits.replacement.prompts import tokenize_prompt

    model, tc = pair
    source = tokenize_prompt(model, "fact : the capital of the state containing sacramento is")
    src_acts = feature_activations(model, tc, source)
    f = active_feature(src_acts, 2, -1)
    ivs = injections_from(model, tc, source, [(2, -1, f)])
    assert ivs[0].value == pytest.approx(float(src_acts[-1, 2, f]))
    result = intervene_tokens(model, tc, tokens, ivs)
    assert result.changes[0].after == pytest.approx(float(src_acts[-1, 2, f]))
    assert result.changes[0].pos == tokens.shape[0] - 1


def test_generation_after_identity_intervention_matches_clean(pair, tokens):
    model, tc = pair
    acts = feature_activations(model, tc, tokens)
    f = active_feature(acts, 2, -1)
    result = intervene_tokens(model, tc, tokens, [Intervention(2, -1, f, multiplier=1.0)], generate=4)
    assert len(result.generated_after) == 4
    assert result.generated_after == result.generated_before


# --- bad input -------------------------------------------------------------------------------
def test_bad_interventions_name_the_feature(pair, tokens):
    model, tc = pair
    acts = feature_activations(model, tc, tokens)
    off = inactive_feature(acts, 2, 3)
    on = active_feature(acts, 2, 3)
    cases = [
        (Intervention(4, 3, 0, value=1.0), "feature 4:3:0: layer 4 does not exist"),
        (Intervention(1, 3, 24, value=1.0), "feature 1:3:24: feature 24 does not exist"),
        (Intervention(1, 40, 2, value=1.0), "position out of range"),
        (Intervention(1, 0, 2, value=1.0), "BOS"),
        (Intervention(2, 3, off, multiplier=-1.0), f"feature 2:3:{off} is not active at position 3"),
    ]
    for iv, message in cases:
        with pytest.raises(CircuitsError, match=message):
            intervene_tokens(model, tc, tokens, [iv])
    with pytest.raises(CircuitsError, match=f"2:3:{on} is set twice"):
        intervene_tokens(model, tc, tokens, [Intervention(2, 3, on, value=1.0), Intervention(2, (2, 4), on, value=0.0)])
    with pytest.raises(CircuitsError, match="layer range 2:5 is outside the model"):
        intervene_tokens(model, tc, tokens, [Intervention(2, 3, on, value=1.0)], layers=(2, 5))
    with pytest.raises(CircuitsError, match="writes to layers 2-3, none of them in the patched range 0:1"):
        intervene_tokens(model, tc, tokens, [Intervention(2, 3, on, value=1.0)], layers=(0, 1))


def test_parse_set_and_layer_range():
    assert parse_set("3:-1:120=x0") == Intervention(3, -1, 120, multiplier=0.0)
    assert parse_set("2:4..6:17=5.5") == Intervention(2, (4, 6), 17, value=5.5)
    assert parse_set(" 1:-3..-1:2 = x-1.5") == Intervention(1, (-3, -1), 2, multiplier=-1.5)
    assert parse_set("0:2:9=-2e-1") == Intervention(0, 2, 9, value=-0.2)
    for bad in ("3:1=2", "a:b:c=1", "3:1:2=abc", "3:1:2", "3:1:2=x", "3:1-2:4=1", "3:1:2=1=2"):
        with pytest.raises(CircuitsError, match="malformed --set"):
            parse_set(bad)
    assert parse_layer_range("2:3") == (2, 3)
    assert parse_layer_range("2") == (2, 2)
    assert parse_layer_range("1:") == (1, None)
    with pytest.raises(CircuitsError, match="malformed layer range"):
        parse_layer_range("x:2")


# --- CLI -------------------------------------------------------------------------------------
def _invoke(args):
    from typer.testing import CliRunner

    from circuits.cli.main import app

    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("args, message", [
    (["--set", "3:1=2"], "malformed --set '3:1=2'"),
    (["--set", "3:1:2=x"], "malformed --set '3:1:2=x'"),
    (["--set", "1:2:3=x0", "--layers", "a:b"], "malformed layer range 'a:b'"),
])
def test_cli_bad_syntax_is_one_line(args, message):
    result = _invoke(["intervene", "the capital of", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_cli_json_and_inactive_multiple(pair, tokens, monkeypatch):
    from circuits.replacement.model import ReplacementModel

    model, tc = pair
    loaded = type("Loaded", (), {"model": model, "tokenizer": model.tokenizer, "name": "tiny"})()
    monkeypatch.setattr(ReplacementModel, "load", classmethod(lambda cls, *a, **kw: cls(loaded, tc, None)))
    acts = feature_activations(model, tc, tokens)
    f, off = active_feature(acts, 1, -1), inactive_feature(acts, 1, -1)
    prompt = "fact : the capital of the state containing dallas is"
    result = _invoke(["intervene", prompt, "--set", f"1:-1:{f}=x-2", "--set", f"1:-1:{off}=4",
                      "--layers", "1:2", "--json", "--top", "3", "--generate", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["layers"] == [1, 2] and len(out["top_before"]) == 3 and out["kl"] > 0
    assert [c["after"] for c in out["interventions"]] == pytest.approx([-2 * float(acts[-1, 1, f]), 4.0])
    bad = _invoke(["intervene", prompt, "--set", f"1:-1:{off}=x2"])
    assert bad.exit_code == 2
    assert bad.output.strip() == (f"error: feature 1:{tokens.shape[0] - 1}:{off} is not active at position "
                                  f"{tokens.shape[0] - 1}, so a multiple of it changes nothing; set a value instead "
                                  f"(e.g. 1:{tokens.shape[0] - 1}:{off}=2.0)")
    text = _invoke(["intervene", prompt, "--set", f"1:-1:{f}=x0"])
    assert text.exit_code == 0 and "KL(before || after)" in text.output
