"""Rows of several prompts in shared backward sweeps (circuits.attribution.batched): each batched
graph equals the single-prompt graph to 1e-6 relative, for prompts of different lengths (padded to
the longest), with the influence-ordered choice, custom targets and the all-features path; padding
that is not masked breaks it; trace_many and `circuits trace-batch --batch-prompts` expose it."""

from __future__ import annotations

import json

import numpy as np
import torch
import pytest
from typer.testing import CliRunner

from circuits.attribution import batched
from circuits.attribution.config import TraceConfig
from circuits.attribution.engine import attribute
from circuits.batch import manifest as mf
from circuits.cli.main import app
from circuits.errors import CircuitsError
from graphs.errors import GraphError
from tests.circuits.batch.helpers import assert_same_outputs, cli, finish, free_port, npz_members, save_tiny_transcoder

# 7, 2, 13, 7, 6 tokens: a batch pads the shorter ones to the longest
PROMPTS = ["calc: 36+59=", "the", "calc: 3+4= calc: 5+6=", "calc: 41+2=", "Sacramento is the capital of"]
RTOL = 1e-6


def assert_same_graph(single, batch) -> None:
    """Same nodes exactly; edges equal to RTOL of the graph's largest edge."""
    for name in ("kind", "layer", "position", "feature", "token_id"):
        np.testing.assert_array_equal(getattr(single, name), getattr(batch, name), err_msg=name)
    np.testing.assert_allclose(batch.activation, single.activation, rtol=0, atol=0)
    assert batch.logit_labels == single.logit_labels and batch.prompt == single.prompt
    a, b = single.dense_adjacency(), batch.dense_adjacency()
    assert np.abs(a).max() > 0
    assert np.abs(a - b).max() <= RTOL * np.abs(a).max(), np.abs(a - b).max() / np.abs(a).max()


@pytest.fixture
def pack_all(monkeypatch):
    """Every pending request in one shared sweep, whatever its cone: padding in every sweep."""
    monkeypatch.setattr(batched, "PACK_WASTE", float("inf"))


def _lengths(rm) -> list[int]:
    return [len(rm.tokens(p)) for p in PROMPTS]


@pytest.mark.parametrize("settings", [{}, {"memory_gb": None}, {"max_feature_nodes": 25, "batch_size": 8}],
                         ids=["budget", "all-features", "influence-cap"])
def test_batched_graphs_equal_single_prompt_graphs(setup, one_thread, settings, pack_all):
    rm = setup
    assert len(set(_lengths(rm))) >= 4  # prompts of different lengths: padding in every shared sweep
    configs = [TraceConfig(**settings)] * len(PROMPTS)
    configs[3] = TraceConfig(**settings, targets=["7"], contrast="8")  # a custom direction in the batch
    singles = [attribute(rm, p, c) for p, c in zip(PROMPTS, configs)]
    for k in (2, 5):  # a partial last group, and all five in one group
        for single, batch in zip(singles, batched.attribute_many(rm, list(zip(PROMPTS, configs)), k)):
            assert_same_graph(single, batch)


def test_sweeps_really_are_shared(setup, one_thread, monkeypatch):
    """The rows of prompts with the same causal cones go through one sweep (not one per prompt)."""
    rm = setup
    calls = []
    real = batched.compute_rows_shared
    monkeypatch.setattr(batched, "compute_rows_shared", lambda reqs, *a: calls.append(len(reqs)) or real(reqs, *a))
    same = ["calc: 36+59=", "calc: 41+2=", "calc: 12+75="]
    assert len({len(rm.tokens(p)) for p in same}) == 1
    list(batched.attribute_many(rm, [(p, TraceConfig()) for p in same], 3))
    assert max(calls) == 3


def _request(n_rows: int, layer: int, n_pos: int):
    from types import SimpleNamespace

    from circuits.attribution.targets import TargetSeeds

    seeds = TargetSeeds(torch.full((n_rows,), layer), torch.full((n_rows,), n_pos - 1), torch.zeros(n_rows, 8))
    return SimpleNamespace(seeds=seeds, rep=SimpleNamespace(embed_pos_d=torch.zeros(n_pos, 8)))


def test_a_shallow_cone_is_not_swept_through_a_deep_one():
    """Packing keeps a shared sweep within PACK_WASTE of the separate sweeps' arithmetic: equal
    cones share, a layer-1 batch is not swept through 30 layers, nor 4 positions through 12."""
    from types import SimpleNamespace

    blocks = SimpleNamespace(n_layers=30)
    reqs = [_request(8, 30, 6), _request(8, 1, 6), _request(8, 30, 6), _request(8, 20, 6), _request(8, 21, 6),
            _request(8, 30, 12)]
    parts = list(batched._sweeps(reqs, blocks, 64))
    assert sorted(map(sorted, parts)) == [[0, 2], [1], [3, 4], [5]]
    assert list(batched._sweeps(reqs[:3:2], blocks, 8)) == [[0], [1]]  # the row limit


def test_unmasked_padding_breaks_equality(setup, one_thread, monkeypatch, pack_all):
    """Mutation: padded positions attended to (pattern padding 1, not 0) leak gradient into the
    shorter prompt's real positions: its graph differs (the graph check even finds edges against
    the causal order); equal-length prompts, with no padding, are unaffected."""
    rm = setup
    monkeypatch.setattr(batched, "PATTERN_PAD", 1.0)
    config = TraceConfig()
    same_length = [PROMPTS[0], PROMPTS[3]]  # 7 and 7 tokens: nothing padded
    for single, batch in zip([attribute(rm, p, config) for p in same_length],
                             batched.attribute_many(rm, [(p, config) for p in same_length], 2)):
        assert_same_graph(single, batch)
    mixed = [PROMPTS[0], PROMPTS[2]]  # 7 and 13 tokens: the first is padded
    single = attribute(rm, mixed[0], config)
    with pytest.raises((AssertionError, GraphError)):  # other edges, or edges against the causal order
        short = next(batched.attribute_many(rm, [(p, config) for p in mixed], 2))
        assert_same_graph(single, short)


def test_trace_many_batched_equals_trace(setup, one_thread):
    rm = setup
    got = list(rm.trace_many(PROMPTS[:3], batch_prompts=3))
    for (item, result), prompt in zip(got, PROMPTS):
        single = rm.trace(prompt)
        assert_same_graph(single.graph, result.graph)
        assert result.summary["counts"] == single.summary["counts"]
        assert result.graph.timing_seconds["shared"] > 0
    with pytest.raises(CircuitsError, match="batch_prompts"):
        list(rm.trace_many(PROMPTS, batch_prompts=0))


def test_trace_batch_cli_with_batch_prompts_writes_the_same_graphs(setup, tmp_path, one_thread):
    rm = setup
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    outs = {}
    for k in (1, 3):
        outs[k] = tmp_path / f"out{k}"
        result = CliRunner().invoke(app, ["trace-batch", str(prompts), "--out", str(outs[k]), "--model", "world-tiny",
                                          "--transcoders", str(rm.transcoder_dir), "--json", "--threads", "1",
                                          "--batch-prompts", str(k)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output[result.output.index("{"):])["traced"] == len(PROMPTS)
    one = [json.loads(x) for x in (outs[1] / mf.MANIFEST).read_text().splitlines()]
    three = [json.loads(x) for x in (outs[3] / mf.MANIFEST).read_text().splitlines()]
    assert [r["id"] for r in one] == [r["id"] for r in three] and len(one) == len(PROMPTS)
    for r1, r3 in zip(one, three):
        assert r1["sizes"] == r3["sizes"]
        a, b = npz_members(outs[1] / r1["files"]["full"]), npz_members(outs[3] / r3["files"]["full"])
        assert a["metadata"] == b["metadata"] and a.keys() == b.keys()
        for key in a:
            if key != "metadata":
                x = np.frombuffer(a[key][2], dtype=a[key][0])
                y = np.frombuffer(b[key][2], dtype=b[key][0])
                assert a[key][:2] == b[key][:2], key
                if x.dtype.kind == "f":
                    assert np.abs(x - y).max(initial=0) <= RTOL * max(np.abs(x).max(initial=0), 1e-30), key
                else:
                    np.testing.assert_array_equal(x, y, err_msg=key)
    bad = CliRunner().invoke(app, ["trace-batch", str(prompts), "--out", str(tmp_path / "bad"), "--batch-prompts", "0"])
    assert bad.exit_code == 2 and "--batch-prompts" in bad.output


def test_two_gloo_ranks_with_batch_prompts_write_what_one_process_writes(world_tiny, tmp_path):
    """The ranks trace the same groups of prompts one process does (group r*N + k on rank k), so
    with the same --batch-prompts the folders are equal byte for byte apart from timing."""
    tc = save_tiny_transcoder(world_tiny, tmp_path / "clt")
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    args = ["--model", "world-tiny", "--transcoders", str(tc), "--json", "--threads", "1", "--batch-prompts", "2"]
    finish(cli("trace-batch", str(prompts), "--out", str(tmp_path / "one"), *args))
    text = finish(cli("trace-batch", str(prompts), "--out", str(tmp_path / "two"), *args,
                      torchrun=["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]))
    assert json.loads(text[text.index("{"):])["traced"] == len(PROMPTS)
    assert_same_outputs(tmp_path / "one", tmp_path / "two")


def _rows(attr) -> torch.Tensor:
    return torch.cat([attr.feature_rows, attr.logit_rows])


@pytest.mark.parametrize("arch,hook_out", [("llama3", False), ("gemma2", True), ("gemma3", False), ("gpt2", False)])
def test_shared_sweeps_on_other_architectures(arch, hook_out, tmp_path, one_thread, pack_all):
    """RMSNorm, grouped-query attention, Gemma's post-norms (with the transcoder writing before the
    post-MLP norm), a CLT with a skip term: prompts of 4, 9 and 6 tokens in one group, rows equal to
    each prompt's own to 1e-6 relative."""
    from circuits.attribution.engine import FrozenBlocks, attribution_rows, attribution_steps
    from circuits.models.pretrained import load_hf_checkpoint
    from circuits.replacement.hooks import adapt_hooks
    from tests.circuits.attribution_checks import random_transcoder
    from tests.helpers import tiny_checkpoints as tiny

    model = load_hf_checkpoint(getattr(tiny, f"make_tiny_{arch}")(tmp_path), "cpu")
    tc = random_transcoder(model.cfg.n_layers, model.cfg.d_model, "clt", skip=True)
    if hook_out:
        tc.cfg.output_hook = "mlp.hook_out"
        adapt_hooks(model, tc, "the fixture transcoder")
    gen = torch.Generator().manual_seed(0)
    tokens = [torch.randint(1, model.cfg.d_vocab, (n,), generator=gen) for n in (4, 9, 6)]
    config = TraceConfig(batch_size=8, max_feature_nodes=30)
    singles = [attribution_rows(model, tc, t, config, threads=1) for t in tokens]
    blocks = FrozenBlocks(model)
    steps = [attribution_steps(model, tc, blocks, t, config, [], False, lambda: None) for t in tokens]
    for single, shared in zip(singles, batched.run_shared(steps, blocks, tc, 24)):
        assert torch.equal(single.feature_idx, shared.feature_idx)
        a, b = _rows(single), _rows(shared)
        assert a.abs().max() > 0 and (a - b).abs().max() <= RTOL * a.abs().max()
