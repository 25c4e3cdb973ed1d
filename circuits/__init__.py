"""circuits: trace attribution graphs through cross-layer transcoders.

The public API is five names (imported on first use, so `import circuits` stays fast):

    import circuits
    rm = circuits.ReplacementModel.load("world")     # model + transcoders (+ feature index)
    result = rm.trace("calc: 36+59=")                 # circuits.TraceResult: graph, pruned, summary
    result.prune(0.9, 0.98).write_json("graph.json")
    rm.intervene("calc: 36+59=", {"1:5:17": 2.0})     # ids exactly as `circuits trace` prints them

    ReplacementModel  a model with its transcoders: trace, intervene (circuits.replacement.model)
    TraceConfig       the settings of a trace (circuits.trace)
    TraceResult       a traced prompt: .graph, .pruned, .summary, .prune(), .write_json(), .save()
    Graph             the attribution graph as data (graphs.Graph)
    CircuitsError     the one-line user errors (bad prompt, missing file, ...)

The model side and the user's entry point: model loading (built-in and real), the local
replacement model, attribution, interventions, fidelity and the CLI. Imports `transcoders` and
`graphs`; they never import this package.
"""

from circuits.errors import CircuitsError

__all__ = ["ReplacementModel", "TraceConfig", "TraceResult", "Graph", "CircuitsError"]

_LAZY = {"ReplacementModel": "circuits.replacement.model", "TraceConfig": "circuits.attribution.config",
         "TraceResult": "circuits.trace", "Graph": "graphs"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'circuits' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
