"""How much of a fact's MLP signal a transcoder sees: for country pairs (A, B), the share of the
difference between the MLP outputs at A's token in "The capital of A is" and at B's token in
"The capital of B is" (every layer) that the transcoder's reconstruction explains,
1 - |d_true - d_rec|^2 / |d_true|^2 (circuits.studies.demos.capitals.mlp_reference, the reference row of
`circuits demo capitals`), with p(B's capital) when the real MLP outputs are patched in.

    python benchmarks/fact_share.py --transcoders DIR [--model smollm2-135m]

Not a test: it prints figures (docs/case_studies.md, docs/transcoders.md).
"""

from __future__ import annotations

import argparse

import torch

PAIRS = [("France", "Paris", "Germany", "Berlin"), ("Japan", "Tokyo", "Italy", "Rome"),
         ("Germany", "Berlin", "Russia", "Moscow"), ("Italy", "Rome", "France", "Paris")]


def main() -> None:
    from circuits import ReplacementModel
    from circuits.studies.demos.capitals import answer_token, mlp_reference, subject_position
    from circuits.replacement.prompts import tokenize_prompt

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transcoders", required=True)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rm = ReplacementModel.load(args.model, transcoders=args.transcoders)
    shares = []
    for subject, answer, other, goal in PAIRS:
        tokens, other_tokens = (tokenize_prompt(rm.model, f"The capital of {c} is") for c in (subject, other))
        pos, other_pos = subject_position(rm.model, tokens, subject), subject_position(rm.model, other_tokens, other)
        ref = mlp_reference(rm, tokens, other_tokens, pos, other_pos, answer_token(rm.model, answer),
                            answer_token(rm.model, goal))
        shares.append(ref["explained_share"])
        print(f"{subject:>8} -> {other:<8} share {ref['explained_share']:.3f}   real MLP patch: "
              f"p({goal}) {ref['p_goal'][0]:.3f} -> {ref['p_goal'][1]:.3f}")
    print(f"mean share {sum(shares) / len(shares):.3f}")


if __name__ == "__main__":
    main()
