"""Studies on a ReplacementModel: experiments over prompts and datasets (dataset faithfulness:
faithfulness.py). The lead engineer moves experiments, validation and the demos here."""
