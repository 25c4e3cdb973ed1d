"""circuits: trace attribution graphs through cross-layer transcoders.

The model side and the user's entry point: model loading (built-in and real),
the local replacement model, attribution, interventions, fidelity and the CLI.
Imports `transcoders` and `graphs`; they never import this package.
"""

from circuits.errors import CircuitsError

__all__ = ["CircuitsError"]
