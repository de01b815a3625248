"""The model catalogue (`models/catalogue.json`): names, signatures, URLs, sizes, SHA-256, stems."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from engine.errors import DemixerError


@dataclass(frozen=True)
class CheckpointEntry:
    signature: str
    file: str
    url: str
    bytes: int | None
    sha256: str | None  # full digest; None where only demucs's 8-hex prefix is published
    sha256_prefix: str


@dataclass(frozen=True)
class ModelEntry:
    name: str
    title: str
    description: str
    sources: list[str]
    checkpoints: tuple[CheckpointEntry, ...]
    weights: list[list[float]] | None  # bag weights per checkpoint and source, as demucs


@lru_cache(maxsize=1)
def _raw() -> dict:
    text = resources.files("models").joinpath("catalogue.json").read_text(encoding="utf-8")
    return json.loads(text)


def default_model() -> str:
    return str(_raw()["default"])


def model_names() -> list[str]:
    return list(_raw()["models"])


def _checkpoint(root_url: str, raw: dict) -> CheckpointEntry:
    sha = raw.get("sha256")
    prefix = raw.get("sha256_prefix") or (sha[:8] if sha else raw["file"].split("-")[1][:8])
    return CheckpointEntry(signature=raw["signature"], file=raw["file"],
                           url=root_url + raw["file"], bytes=raw.get("bytes"), sha256=sha,
                           sha256_prefix=prefix)


def get_entry(name: str) -> ModelEntry:
    """The catalogue entry for `name`; a `DemixerError` listing the known names otherwise."""
    raw = _raw()
    if name not in raw["models"]:
        known = ", ".join(model_names())
        raise DemixerError(f"Unknown model '{name}'; choose one of: {known}.")
    m = raw["models"][name]
    ckpts = tuple(_checkpoint(raw["root_url"], c) for c in m["checkpoints"])
    return ModelEntry(name=name, title=m["title"], description=m["description"],
                      sources=list(m["sources"]), checkpoints=ckpts, weights=m.get("weights"))
