"""The hand-built 8-node graph the tests compute by hand (see test_prune_scores.py for arithmetic).

    idx  node  kind       layer pos  detail
    0    F0    feature    0     1    feature 7, activation 2.0
    1    F1    feature    0     1    feature 3, activation 1.0
    2    F2    feature    1     1    feature 5, activation 1.5
    3    R0    error      0     1
    4    E0    embedding  -1    0    token 10
    5    E1    embedding  -1    1    token 11
    6    L0    logit      2     1    token 20, p = 0.75
    7    L1    logit      2     1    token 21, p = 0.25

Edges A[target, source]:
    F0 <- E1 1.0, E0 -1.0          |row| = 2
    F1 <- E1 3.0                   |row| = 3
    F2 <- F0 2.0, F1 -1.0, R0 1.0  |row| = 4
    L0 <- F2 2.0, R0 1.0, E1 1.0   |row| = 4
    L1 <- F1 1.0, E1 -1.0          |row| = 2
"""

from __future__ import annotations

import numpy as np

from graphs import Graph, make_node_table

F0, F1, F2, R0, E0, E1, L0, L1 = range(8)
EDGES = {
    (F0, E1): 1.0, (F0, E0): -1.0,
    (F1, E1): 3.0,
    (F2, F0): 2.0, (F2, F1): -1.0, (F2, R0): 1.0,
    (L0, F2): 2.0, (L0, R0): 1.0, (L0, E1): 1.0,
    (L1, F1): 1.0, (L1, E1): -1.0,
}


def hand_graph(**overrides) -> Graph:
    adjacency = np.zeros((8, 8), dtype=np.float32)
    for (t, s), weight in EDGES.items():
        adjacency[t, s] = weight
    table = make_node_table(
        feature_layer_pos_feat=[[0, 1, 7], [0, 1, 3], [1, 1, 5]],
        feature_activation=[2.0, 1.0, 1.5],
        error_layer_pos=[[0, 1]],
        embedding_token_ids=[10, 11],
        logit_token_ids=[20, 21],
        n_layers=2,
    )
    kwargs = dict(
        adjacency=adjacency, **table,
        logit_probabilities=[0.75, 0.25], logit_labels=["x", "y"],
        prompt="a b", token_ids=[10, 11], token_strs=["a", " b"], n_layers=2,
        model={"name": "hand", "n_layers": 2, "d_model": 4, "d_vocab": 32},
        transcoders={"path": "/tmp/tc", "kind": "clt", "n_features": 8, "hash": "abc"},
        settings={"max_feature_nodes": None, "batch_size": 4},
        timing_seconds={"attribution": 0.5},
        feature_labels={F0: "feature zero", F2: "say x"},
    )
    kwargs.update(overrides)
    return Graph(**kwargs)
