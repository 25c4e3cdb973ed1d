"""transcoders: the replacement parts (CLT / PLT modules, file formats, activation sources, trainer).

Model-agnostic; knows nothing of graphs or of the `circuits` package.
"""

from transcoders.errors import TranscoderError

__all__ = ["TranscoderError"]
