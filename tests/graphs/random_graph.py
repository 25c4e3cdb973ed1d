"""Random graphs that obey the Graph contract (edges go up in layer, never back in position)."""

from __future__ import annotations

import numpy as np

from graphs import Graph, make_node_table


def random_graph(seed: int, n_layers: int = 4, n_pos: int = 5, features_per_site: int = 3,
                 n_logits: int = 3, density: float = 0.5, error_scale: float = 1.0) -> Graph:
    """Features at every (layer, position >= 1) (each reads its own position's embedding, among
    random other inputs), one error node per (layer, position >= 1),
    embeddings at every position, logits at the last position. `error_scale` multiplies every
    edge out of an error node (0 gives a graph with no error influence)."""
    rng = np.random.default_rng(seed)
    sites = [(layer, pos) for layer in range(n_layers) for pos in range(1, n_pos)]
    n_per_site = rng.integers(0, features_per_site + 1, size=len(sites))
    lpf = [(l, p, int(f)) for (l, p), k in zip(sites, n_per_site)
           for f in rng.choice(1000, size=k, replace=False)]
    token_ids = rng.integers(0, 50, size=n_pos).tolist()
    table = make_node_table(
        feature_layer_pos_feat=np.array(lpf, dtype=np.int64).reshape(-1, 3),
        feature_activation=rng.uniform(0.1, 3.0, size=len(lpf)),
        error_layer_pos=np.array(sites, dtype=np.int64).reshape(-1, 2),
        embedding_token_ids=token_ids,
        logit_token_ids=(100 + np.arange(n_logits)).tolist(),
        n_layers=n_layers,
    )
    n = table["kind"].shape[0]
    layer, pos, kind = table["layer"], table["position"], table["kind"]
    allowed = (layer[None, :] < layer[:, None]) & (pos[None, :] <= pos[:, None])
    allowed &= (kind[:, None] == 0) | (kind[:, None] == 3)  # only features and logits have inputs
    weights = rng.normal(size=(n, n)) * (rng.random((n, n)) < density) * allowed
    weights[:, kind == 1] *= error_scale
    # every feature reads its own token (real features always have inputs)
    emb_at_pos = np.flatnonzero(kind == 2)[pos]
    features = np.flatnonzero(kind == 0)
    weights[features, emb_at_pos[features]] = rng.uniform(0.5, 1.5, size=features.shape[0])
    probs = rng.dirichlet(np.ones(n_logits)) * 0.9
    return Graph(
        adjacency=weights.astype(np.float32), **table,
        logit_probabilities=probs, logit_labels=[f"t{i}" for i in range(n_logits)],
        prompt="random", token_ids=token_ids, token_strs=[f"w{t}" for t in token_ids],
        n_layers=n_layers,
    )
