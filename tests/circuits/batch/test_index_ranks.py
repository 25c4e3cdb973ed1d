"""The feature index built over ranks (`torchrun -m circuits features index`): the corpus's
batches sharded, merged exactly. The top-K merge is order-free under its total order (ties
included), and 2 gloo ranks write the index one process writes, array for array, bit for bit."""

from __future__ import annotations

import json

import numpy as np
import torch

from circuits.features.index import _RunningTopK
from circuits.features.store import INDEX_JSON, INDEX_NPZ
from tests.circuits.batch.helpers import cli, finish, free_port, save_tiny_transcoder

K, L, F, B, T = 4, 2, 3, 3, 5


def _batches(n: int):
    """Integer activations (many ties at different positions, so the tie order decides windows)."""
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        acts = torch.randint(0, 3, (B, T, L, F), generator=gen).float()
        tokens = torch.randint(0, 50, (B, T), generator=gen)
        yield acts, tokens, torch.ones(B, T, dtype=torch.bool)


def _state(top: _RunningTopK):
    return [top.acts_k_l_f, top.keys_k_l_f, top.tokens_k_l_f_w, top.window_k_l_f_w]


def test_top_k_of_shards_merges_to_the_sequential_top_k():
    batches = list(_batches(7))
    one = _RunningTopK(K, L, F, 1, 1)
    for j, b in enumerate(batches):
        one.update(*b, batch_index=j)
    for world in (2, 3):
        shards = [_RunningTopK(K, L, F, 1, 1) for _ in range(world)]
        for j, b in enumerate(batches):
            shards[j % world].update(*b, batch_index=j)
        merged = shards[world - 1]  # merged in another order than the ranks'
        for other in reversed(shards[:-1]):
            merged.merge(*_state(other))
        for a, b in zip(_state(one), _state(merged)):
            assert torch.equal(a, b)
    # mutation: the batch index left out of the keys (every batch's candidates keyed alike) -> a
    # tie between batches is broken by merge order, and the shards' merge differs
    shards = [_RunningTopK(K, L, F, 1, 1) for _ in range(2)]
    for j, b in enumerate(batches):
        shards[j % 2].update(*b, batch_index=0)
    shards[1].merge(*_state(shards[0]))
    assert not all(torch.equal(a, b) for a, b in zip(_state(one)[2:], _state(shards[1])[2:]))


def _index_arrays(folder) -> tuple[dict, dict]:
    with np.load(folder / INDEX_NPZ, allow_pickle=False) as npz:
        arrays = {k: (npz[k].dtype.str, npz[k].shape, npz[k].tobytes()) for k in npz.files if k != "build_id"}
    meta = json.loads((folder / INDEX_JSON).read_text())
    return arrays, {k: v for k, v in meta.items() if k not in ("created", "build_id")}


def test_two_gloo_ranks_build_the_index_one_process_builds(world_tiny, tmp_path):
    folders = [save_tiny_transcoder(world_tiny, tmp_path / name, n_features=64) for name in ("one", "two")]
    args = ["features", "index", "--model", "world-tiny", "--tokens", "2500", "--batch-size", "4", "--json"]
    finish(cli(*args, "--transcoders", str(folders[0])))
    text = finish(cli(*args, "--transcoders", str(folders[1]),
                      torchrun=["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]))
    assert json.loads(text[text.index("{"):])["n_tokens"] == 2500  # rank 0 prints once
    one, two = _index_arrays(folders[0]), _index_arrays(folders[1])
    assert one[1] == two[1]
    assert one[0].keys() == two[0].keys() and one[0] == two[0]
    acts = np.frombuffer(one[0]["top_acts"][2], dtype=one[0]["top_acts"][0])
    assert (acts > 0).any()
