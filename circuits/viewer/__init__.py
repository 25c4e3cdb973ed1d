"""The offline graph explorer: `circuits view` / `circuits serve` (docs/viewer.md)."""
