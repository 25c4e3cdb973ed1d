"""The feature index: top contexts are the true argmax activations, frequencies are exact, files are safe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuits.errors import CircuitsError
from circuits.features.index import build_feature_index, tokenize_corpus
from circuits.features.output_view import output_view
from circuits.features.store import INDEX_JSON, INDEX_NPZ, load_feature_index, save_feature_index
from circuits.interventions import feature_activations
from tests.circuits.test_interventions import make_tiny_pair

K, BEFORE, AFTER = 3, 2, 1


@pytest.fixture(scope="module")
def pair(one_thread):
    return make_tiny_pair(seed=1)


@pytest.fixture(scope="module")
def docs(pair):
    gen = torch.Generator().manual_seed(0)
    d_vocab = pair[0].cfg.d_vocab
    return [torch.cat([torch.tensor([0]), torch.randint(2, d_vocab, (int(n),), generator=gen)])
            for n in torch.randint(3, 14, (10,), generator=gen)]


@pytest.fixture(scope="module")
def index(pair, docs):
    return build_feature_index(*pair, docs, k=K, before=BEFORE, after=AFTER, batch_size=3, meta={"model": "tiny"})


def test_top_contexts_are_the_argmax_activations(pair, docs, index):
    model, tc = pair
    acts = [feature_activations(model, tc, d)[1:] for d in docs]          # [pos-1, L, F], BOS dropped
    L, F = tc.cfg.n_layers, tc.cfg.n_features
    n_tokens = sum(a.shape[0] for a in acts)
    assert index.meta["n_tokens"] == n_tokens and index.meta["n_docs"] == len(docs)
    for layer in range(L):
        for feature in range(F):
            rows = sorted(((float(a[p, layer, feature]), i, p + 1) for i, a in enumerate(acts)
                           for p in range(a.shape[0]) if a[p, layer, feature] > 0), reverse=True)
            contexts = index.top_contexts(layer, feature)
            assert len(contexts) == min(K, len(rows))
            fired = [v for v, _, _ in rows]
            assert index.frequency(layer, feature) == pytest.approx(len(fired) / n_tokens)
            if fired:
                assert index.mean_activation(layer, feature) == pytest.approx(np.mean(fired), rel=1e-4)
            for context, (value, _, _) in zip(contexts, rows):
                assert context.activation == pytest.approx(value, abs=1e-5)
                # the window around a position with this activation (docs sharing a prefix tie exactly)
                windows = [(docs[d][max(0, p - BEFORE): p + AFTER + 1].tolist(), min(p, BEFORE))
                           for v, d, p in rows if abs(v - value) < 1e-5]
                assert (context.token_ids, context.center) in windows
                assert context.acts[context.center] == pytest.approx(value, rel=1e-3)   # stored as f16


def test_max_tokens_stops_the_pass(pair, docs):
    small = build_feature_index(*pair, docs, max_tokens=20, k=2, batch_size=4)
    assert small.meta["n_tokens"] == 20


def test_save_load_roundtrip_is_atomic_and_checked(tmp_path, index):
    assert load_feature_index(tmp_path) is None
    save_feature_index(index, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_JSON, INDEX_NPZ]   # no temp files left
    loaded = load_feature_index(tmp_path)
    assert np.array_equal(loaded.top_tokens, index.top_tokens)
    assert np.array_equal(loaded.frequency_layer_feat, index.frequency_layer_feat)
    assert loaded.top_contexts(2, 5) == index.top_contexts(2, 5)
    assert loaded.label(2, 5) == index.label(2, 5)
    meta = json.loads((tmp_path / INDEX_JSON).read_text())
    (tmp_path / INDEX_JSON).write_text(json.dumps({**meta, "build_id": meta["build_id"] + 1}))
    with pytest.raises(CircuitsError, match="half-written"):
        load_feature_index(tmp_path)
    with pytest.raises(CircuitsError, match="feature 4:0 does not exist"):
        index.top_contexts(4, 0)


def test_output_view_finds_the_token_a_decoder_writes(pair):
    model, tc = pair
    target = 7
    original = tc.W_dec[1][3].clone()
    with torch.no_grad():
        tc.W_dec[1][3] = model.W_U[:, target] / tc.W_dec[1].shape[1]
    try:
        view = output_view(model, tc, 1, 3, k=3)
    finally:
        with torch.no_grad():
            tc.W_dec[1][3] = original
    assert view["promoted"][0][0] == model.tokenizer.decode([target])
    assert view["promoted"][0][1] > view["promoted"][1][1] > 0 > view["suppressed"][0][1]


def test_cli_index_and_show(tmp_path, pair, monkeypatch):
    from typer.testing import CliRunner

    from circuits.replacement.model import ReplacementModel
    from circuits.cli.main import app

    model, tc = pair
    loaded = type("Loaded", (), {"model": model, "tokenizer": model.tokenizer, "name": "tiny"})()
    monkeypatch.setattr(ReplacementModel, "load", classmethod(lambda cls, *a, **kw: cls(loaded, tc, tmp_path)))
    runner = CliRunner()
    missing = runner.invoke(app, ["features", "show", "1:3"])
    assert missing.exit_code == 2 and missing.output.startswith("error: no feature index in")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("fact : the capital of the state containing dallas is austin\n\n"
                      "calc : 3 + 5 = 8\nkobe bryant played basketball for the lakers in los angeles\n")
    built = runner.invoke(app, ["features", "index", "--corpus", str(corpus), "--json"])
    assert built.exit_code == 0, built.output
    assert json.loads(built.output)["n_tokens"] == 28
    index = load_feature_index(tmp_path)
    layer, feature = np.unravel_index(int(index.top_acts[..., 0].argmax()), index.top_acts.shape[:2])
    shown = runner.invoke(app, ["features", "show", f"{layer}:5:{feature}"])
    assert shown.exit_code == 0, shown.output
    assert f"{index.top_acts[layer, feature, 0]:8.3f}" in shown.output and "promotes:" in shown.output
    bad = runner.invoke(app, ["features", "show", "3-120"])
    assert bad.exit_code == 2 and bad.output.strip().startswith("error: malformed feature '3-120'")


def test_tokenize_corpus_skips_blank_lines(pair):
    docs = list(tokenize_corpus(pair[0], ["the capital", "  ", "of texas is"]))
    assert [d.tolist() for d in docs] == [[0, 2, 3], [0, 4, 10, 8]]
