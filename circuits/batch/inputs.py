"""The prompts of a batch: a text file (one prompt per line) or JSONL ({"prompt", "target",
"contrast", "id"} per line), read into PromptItems with checked, file-name-safe, unique ids."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from circuits.errors import CircuitsError

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_KEYS = {"prompt", "target", "contrast", "id"}


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a batch; `targets`/`contrast` as TraceConfig's (empty/None: the top logits)."""

    index: int
    id: str
    prompt: str
    targets: tuple[str, ...] = field(default_factory=tuple)
    contrast: str | None = None

    def config(self, base):
        """`base` (a TraceConfig) with this prompt's targets and contrast, where it has them."""
        if not self.targets and self.contrast is None:
            return base
        update = {"targets": list(self.targets) or base.targets,
                  "contrast": self.contrast if self.contrast is not None else base.contrast}
        return type(base).model_validate({**base.model_dump(), **update})

    def to_json(self) -> dict:
        out = {"id": self.id, "index": self.index, "prompt": self.prompt}
        if self.targets:
            out["targets"] = list(self.targets)
        if self.contrast is not None:
            out["contrast"] = self.contrast
        return out


def default_id(index: int) -> str:
    return f"p{index:06d}"


def as_items(prompts) -> list[PromptItem]:
    """Strings, dicts ({"prompt", ...}) or PromptItems -> PromptItems with checked ids."""
    items = []
    for i, p in enumerate(prompts):
        if isinstance(p, PromptItem):
            items.append(p if p.index == i else PromptItem(i, p.id, p.prompt, p.targets, p.contrast))
        elif isinstance(p, str):
            items.append(PromptItem(i, default_id(i), p))
        elif isinstance(p, dict):
            items.append(_from_record(p, i, f"prompt {i}"))
        else:
            raise CircuitsError(f"prompt {i} is a {type(p).__name__}; give a string or a dict with 'prompt'")
    _check_unique(items)
    return items


def read_prompts(path: str | Path) -> list[PromptItem]:
    """The prompts of `path`: JSONL when it ends in .jsonl, else one prompt per (non-blank) line."""
    path = Path(path)
    if not path.is_file():
        raise CircuitsError(f"no prompts file at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CircuitsError(f"{path} is not UTF-8 text") from None
    lines = text.splitlines()
    items = []
    if path.suffix == ".jsonl":
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CircuitsError(f"{path}:{n}: not JSON ({err.msg})") from None
            items.append(_from_record(record, len(items), f"{path}:{n}"))
    else:
        items = [PromptItem(i, default_id(i), line) for i, line in enumerate(ln for ln in lines if ln.strip())]
    if not items:
        raise CircuitsError(f"{path} holds no prompts")
    _check_unique(items)
    return items


def _from_record(record, index: int, where: str) -> PromptItem:
    if not isinstance(record, dict):
        raise CircuitsError(f"{where}: expected an object with 'prompt' (and optional target, contrast, id)")
    unknown = sorted(set(record) - _KEYS)
    if unknown:
        raise CircuitsError(f"{where}: unknown key {unknown[0]!r} (known: id, prompt, target, contrast)")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise CircuitsError(f"{where}: 'prompt' must be a non-empty string")
    target = record.get("target")
    targets = (target,) if isinstance(target, str) else tuple(target or ())
    if not all(isinstance(t, str) and t for t in targets):
        raise CircuitsError(f"{where}: 'target' must be a token string or a list of them")
    contrast = record.get("contrast")
    if contrast is not None and (not isinstance(contrast, str) or len(targets) != 1):
        raise CircuitsError(f"{where}: 'contrast' must be a token string, with exactly one 'target'")
    pid = record.get("id", default_id(index))
    if not isinstance(pid, str) or not _ID.fullmatch(pid):
        raise CircuitsError(f"{where}: id {pid!r} must be 1-100 letters, digits, '.', '_' or '-' "
                            "(it names the graph files), starting with a letter or digit")
    return PromptItem(index, pid, prompt, targets, contrast)


def _check_unique(items: list[PromptItem]) -> None:
    seen: dict[str, int] = {}
    for item in items:
        key = item.id.lower()  # graph files of ids differing in case would collide on some filesystems
        if key in seen:
            raise CircuitsError(f"prompts {seen[key]} and {item.index} have the same id {item.id!r}; "
                                "ids name the graph files and must be unique")
        seen[key] = item.index
