"""Transcoders on the Hugging Face hub, reached through `huggingface_hub` (its cache, HF_HUB_OFFLINE,
HF_TOKEN / the saved token), with circuit-tracer's reference forms:

  owner/repo[/subfolder][@revision]     a repo (or a folder of it) holding config.yaml
  hf://owner/repo/path/file[?revision=R] one file, as listed in a config.yaml `transcoders:` list
  gemma, llama                          circuit-tracer's shortcuts for its two first releases
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, urlparse

from transcoders.errors import TranscoderError

SHORTCUTS = {"gemma": "mwhanna/gemma-scope-transcoders", "llama": "mntss/transcoder-Llama-3.2-1B"}


class HubRef(NamedTuple):
    repo_id: str
    path: str | None  # subfolder (repo refs) or file (hf:// refs)
    revision: str | None

    def label(self) -> str:
        where = self.repo_id + (f"//{self.path}" if self.path else "")
        return f"{where}@{self.revision}" if self.revision else where


def parse_repo_ref(spec: str) -> HubRef | None:
    """'owner/repo[/sub][@rev]' -> HubRef; None if `spec` does not look like one."""
    spec = SHORTCUTS.get(spec, spec)
    if spec.startswith("hf://"):
        return parse_hf_uri(spec)
    body, _, rev = spec.partition("@")
    parts = body.strip("/").split("/")
    if len(parts) < 2 or any(not p or p in (".", "..") for p in parts) or spec.startswith(("/", ".", "~")):
        return None
    return HubRef("/".join(parts[:2]), "/".join(parts[2:]) or None, rev or None)


def parse_hf_uri(uri: str) -> HubRef:
    u = urlparse(uri)
    repo_name, _, file_path = u.path.lstrip("/").partition("/")
    if u.scheme != "hf" or not u.netloc or not repo_name or not file_path:
        raise TranscoderError(f"'{uri}' is not a Hugging Face file reference (hf://owner/repo/path/file)")
    rev = parse_qs(u.query).get("revision", [None])[0]
    return HubRef(f"{u.netloc}/{repo_name}", file_path, rev or None)


def _hub_error(exc: Exception, what: str) -> TranscoderError:
    from huggingface_hub import errors

    name = type(exc).__name__
    if isinstance(exc, errors.LocalEntryNotFoundError):
        fix = "it is not in the local Hugging Face cache and the hub is unreachable or HF_HUB_OFFLINE=1: run once online"
    elif isinstance(exc, errors.GatedRepoError):
        fix = "the repo is gated: accept its terms on huggingface.co and set HF_TOKEN"
    elif isinstance(exc, errors.RepositoryNotFoundError):
        fix = "no such repo (or it is private: set HF_TOKEN)"
    elif isinstance(exc, errors.RevisionNotFoundError):
        fix = "no such revision"
    elif isinstance(exc, errors.EntryNotFoundError):
        fix = "the repo has no such file"
    else:
        fix = f"{name}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
    return TranscoderError(f"cannot get {what} from the Hugging Face hub: {fix}")


def download_file(ref: HubRef, filename: str | None = None) -> Path:
    """Local path of one file (downloaded into the HF cache if needed)."""
    from huggingface_hub import hf_hub_download

    name = filename if filename is not None else ref.path
    sub = ref.path if filename is not None else None
    what = f"{ref.repo_id}/{f'{sub}/' if sub else ''}{name}" + (f"@{ref.revision}" if ref.revision else "")
    try:
        return Path(hf_hub_download(repo_id=ref.repo_id, filename=name, subfolder=sub, revision=ref.revision))
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line naming the file
        raise _hub_error(exc, what) from None


def download_folder(ref: HubRef, patterns: list[str]) -> Path:
    """Local path of the repo folder `ref.path` after fetching the files matching `patterns` in it."""
    from huggingface_hub import snapshot_download

    sub = f"{ref.path.strip('/')}/" if ref.path else ""
    try:
        root = Path(snapshot_download(ref.repo_id, revision=ref.revision,
                                      allow_patterns=[sub + p for p in patterns]))
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(exc, f"{ref.label()} ({', '.join(patterns)})") from None
    return root / sub if sub else root
