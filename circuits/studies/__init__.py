"""Studies on a ReplacementModel: experiments shared by the case studies (experiments.py), the
`world` state features and swap trials, validation at scale, the case-study demos (demos/), and
graph faithfulness over a dataset (faithfulness.py, faithfulness_batch.py)."""
