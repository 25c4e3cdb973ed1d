"""What each transcoder feature means: the feature index built over a corpus (index.py), how it is
stored beside the transcoders (store.py) and a feature's output view (output_view.py)."""
