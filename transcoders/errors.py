"""User-facing errors of the transcoder package: one clear line each."""


class TranscoderError(Exception):
    """Bad transcoder input (mismatched directory, bad corpus, NaN activations, ...)."""
