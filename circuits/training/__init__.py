"""Transcoders for a model: training, the default transcoder of each built-in model (trained on
first use and cached) and the fidelity of the replacement model they make. The text they learn
from is circuits.corpora.

    train.py     train_for_model: corpus + trainer (transcoders.trainer) + held-out fidelity
    defaults.py  ensure_default_transcoder / make_default_transcoder: the cached default of a built-in model
    fidelity.py  measure_fidelity / fidelity_report: how well the transcoder stands in for the MLPs
"""
