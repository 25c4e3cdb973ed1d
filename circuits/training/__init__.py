"""Transcoders for a model: the corpus they learn from, training, the default CLT of each built-in
model (trained on first use and cached) and the fidelity of the replacement model they make.

    corpus.py    token sequences to train / evaluate on (built-in corpus, text file, dataset)
    train.py     train_for_model: corpus + trainer (transcoders.trainer) + held-out fidelity
    defaults.py  default_transcoders: the cached default CLT of a built-in model
    fidelity.py  measure_fidelity / fidelity_report: how well the transcoder stands in for the MLPs
"""
