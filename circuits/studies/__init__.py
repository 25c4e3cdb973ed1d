"""Studies on a ReplacementModel: experiments shared by the case studies (experiments.py), the
`world` state features and swap trials, validation at scale, and the case-study demos (demos/)."""
