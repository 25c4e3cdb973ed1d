"""Attention explained (Kamath, Ameisen et al. 2025): head loadings of edges and QK attributions
of attention scores, on the local replacement model of a prompt.

    from circuits.attention import explain_head
    result = explain_head(rm, "fact: the capital of the state containing dallas is", layer=2, head=1,
                          query=9, key=6)
    result.pairs[:5], result.q_marginals[:5], result.remainders

loadings.py: an edge's split over heads; qk.py: a score's split into node pairs; attach.py: both
on a pruned graph (`circuits trace --qk`); heads.py: one head of the frozen model.
"""

from __future__ import annotations

from circuits.attention.explain import explain_head

__all__ = ["explain_head"]
