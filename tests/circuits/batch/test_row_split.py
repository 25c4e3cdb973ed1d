"""One prompt's rows split over ranks (`torchrun ... -m circuits trace PROMPT`): each rank computes
its share of the batches, and the graph is identical to one process, bit for bit."""

from __future__ import annotations

import torch

from circuits.attribution import engine
from circuits.attribution.row_split import RowSplit, split_rows
from tests.circuits.batch.helpers import cli, finish, free_port, npz_members, save_tiny_transcoder


def test_each_row_has_one_owner_and_a_rank_computes_only_its_batches(setup, monkeypatch, one_thread):
    order = torch.randperm(23)
    batches = list(engine._batches(23, 5))
    owners = RowSplit(0, 3).owner_rows(order, batches)
    assert sorted(torch.cat(owners).tolist()) == list(range(23))
    assert owners[0].tolist() == order[0:5].tolist() + order[15:20].tolist()

    calls = []
    real = engine.compute_rows
    monkeypatch.setattr(engine, "compute_rows", lambda *a: calls.append(len(a[-1])) or real(*a))
    def no_peers(self, block):  # the other ranks' rows stay zero: only this rank's share is computed
        return [block if r == self.rank else torch.zeros_like(block) for r in range(self.world_size)]

    monkeypatch.setattr(RowSplit, "all_gather", no_peers)
    rm = setup
    whole = rm.trace("calc: 36+59=", batch_size=4)
    n_rows = sum(calls)
    calls.clear()
    with split_rows(RowSplit(1, 2)):
        rm.trace("calc: 36+59=", batch_size=4)
    assert 0 < sum(calls) < n_rows and len(calls) <= (n_rows // 4 + 3) // 2 + 2  # about half the batches
    assert whole.graph.n_nodes > 0


def test_two_gloo_ranks_trace_one_prompt_as_one_process(world_tiny, tmp_path):
    tc = save_tiny_transcoder(world_tiny, tmp_path / "clt", n_features=64)
    args = ["trace", "calc: 36+59=", "--model", "world-tiny", "--transcoders", str(tc), "--batch-size", "8",
            "--max-feature-nodes", "40", "--json"]
    finish(cli(*args, "--full", str(tmp_path / "one.npz")))
    finish(cli(*args, "--full", str(tmp_path / "two.npz"),
               torchrun=["--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]))
    one, two = npz_members(tmp_path / "one.npz"), npz_members(tmp_path / "two.npz")
    assert one == two
    assert len(one["metadata"]["logit_labels"]) > 0
