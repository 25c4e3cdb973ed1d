"""A transcoder's config and its weight files must say the same thing: every disagreement is one
TranscoderError line naming the config and the fix, never a silent choice of one side.

What a config may declare, and what the files carry (`LayerViews`):

  activation   config `activation` (circuit-tracer), `circuits: activation` (ours), SAELens `architecture`
               files: JumpReLU `threshold` tensors, TopK `k` scalars
  k            config `k`, `circuits: topk`, SAELens `k`; files: `k` scalars (one per layer file)
  skip         config `skip` / `circuits: skip` (ours), SAELens `architecture` (`..._skip_...`)
               files: `W_skip` / `affine_skip_connection` tensors
  hooks        `feature_input_hook` and `feature_output_hook` (SAELens `hook_name`, `hook_name_out`)

The rules (pinned by tests/transcoders/test_config_agreement.py):
  - every declared value must agree with every other declaration and with the files;
  - a config that declares no activation gets the one the files imply: JumpReLU if they carry
    thresholds, TopK if they carry `k`, ReLU if neither (both: refused);
  - k only with TopK, a positive integer, the same in every place that states it;
  - both hooks must be named: no hook is assumed.
"""

from __future__ import annotations

from transcoders.errors import TranscoderError
from transcoders.formats_read import LayerViews

ACTIVATIONS = {"relu": "relu", "jump_relu": "jumprelu", "jumprelu": "jumprelu", "topk": "topk",
               "top_k": "topk", "batchtopk": "topk", "batch_topk": "topk"}
SHOWN = {"relu": "relu", "jumprelu": "jump_relu", "topk": "topk"}


def activation_name(raw, where: str, key: str = "activation") -> str:
    """Our name (relu | jumprelu | topk) of a config's activation string."""
    act = ACTIVATIONS.get(str(raw).lower().replace("-", "_"))
    if act is None:
        raise TranscoderError(f"{where}: {key} '{raw}' is not one of relu, jump_relu, topk")
    return act


def _agreed(declared: dict[str, object], what: str, where: str):
    """The one value of `declared` ({place: value}, None = not stated), or an error naming both places."""
    stated = {place: v for place, v in declared.items() if v is not None}
    values = list(dict.fromkeys(stated.values()))
    if len(values) > 1:
        shown = ", ".join(f"{place}: {v}" for place, v in stated.items())
        raise TranscoderError(f"{where}: the config states {what} twice, differently ({shown}): keep one")
    return values[0] if values else None


def _file_k(layers: list[LayerViews], where: str) -> int | None:
    ks = [lv.k for lv in layers]
    if all(k is None for k in ks):
        return None
    if any(k is None for k in ks) or len(set(ks)) > 1:
        raise TranscoderError(f"{where}: the layer files store different TopK k ({ks}): "
                              "they belong to different transcoders")
    return ks[0]


def resolve_activation(declared: dict[str, str | None], declared_k: dict[str, object],
                       layers: list[LayerViews], where: str) -> tuple[str, int | None]:
    """(activation, k) from the config's declarations and what the files carry (module doc)."""
    act = _agreed({p: activation_name(v, where, p) if v is not None else None for p, v in declared.items()},
                  "the activation", where)
    has_thr = layers[0].threshold is not None
    file_k = _file_k(layers, where)
    for place, k in declared_k.items():
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0):
            raise TranscoderError(f"{where}: {place} must be a positive whole number of features, not {k!r}")
    k = _agreed({**declared_k, "the files' k": file_k}, "TopK's k", where)
    if act is None:
        if has_thr and file_k is not None:
            raise TranscoderError(f"{where}: the files carry JumpReLU thresholds and a TopK k: "
                                  "declare `activation:` (jump_relu or topk) in the config")
        act = "jumprelu" if has_thr else "topk" if file_k is not None else "relu"
    if act != "jumprelu" and has_thr:
        raise TranscoderError(f"{where}: activation {SHOWN[act]} but the weight files carry JumpReLU thresholds: "
                              "set activation: jump_relu (or remove the thresholds)")
    if act == "jumprelu" and not has_thr:
        raise TranscoderError(f"{where}: activation jump_relu but the weight files have no threshold")
    if act != "topk" and k is not None:
        raise TranscoderError(f"{where}: a TopK k ({k}) is given but the activation is {SHOWN[act]}: "
                              "set activation: topk, or remove k")
    if act == "topk" and k is None:
        raise TranscoderError(f"{where}: activation topk needs k (add `k: <features per token>` to the config)")
    if act == "topk" and k > layers[0].enc.shape[0]:
        raise TranscoderError(f"{where}: TopK k = {k} is more than the {layers[0].enc.shape[0]} features per layer")
    return act, k


def resolve_skip(declared: dict[str, object], layers: list[LayerViews], where: str) -> bool:
    """Whether the transcoder has a skip term: the files say; a config that states it must agree."""
    for place, v in declared.items():
        if v is not None and not isinstance(v, bool):
            raise TranscoderError(f"{where}: {place} must be true or false, not {v!r}")
    stated = _agreed(declared, "the skip term", where)
    has_skip = layers[0].skip is not None
    if stated is True and not has_skip:
        raise TranscoderError(f"{where}: the config says skip: true but the weight files have no W_skip: "
                              "download the skip weights, or set skip: false")
    if stated is False and has_skip:
        raise TranscoderError(f"{where}: the config says skip: false but the weight files carry W_skip: "
                              "set skip: true (or remove W_skip)")
    return has_skip


def required_hook(value, key: str, reads: bool, where: str) -> str:
    """A hook the config must name (a transcoder read at the wrong hook gives a wrong graph, exit 0)."""
    if not isinstance(value, str) or not value.strip():
        examples = "ln2.hook_normalized, hook_resid_mid or mlp.hook_in" if reads else "hook_mlp_out or mlp.hook_out"
        raise TranscoderError(f"{where}: no {key}: name the hook the transcoder {'reads' if reads else 'writes'} "
                              f"(e.g. {examples}); no hook is assumed")
    return value
