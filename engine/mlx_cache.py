"""The MLX weight cache: each checkpoint converted once, loaded without torch afterwards.

Layout, under `data_dir()/mlx` (`cache_root()`), one pair per checkpoint:
    <sha256>-v<F>.<S>.safetensors   the weights, float32, in MLX's layouts (engine.mlx_convert)
    <sha256>-v<F>.<S>.json          the manifest: the architecture (`CoreSpec`), the
                                    checkpoint's SHA-256, the weights file's size and SHA-256
`<sha256>` is the checkpoint's full SHA-256 (`ResolvedModel.sha256`), `F` the cache format and
`S` the spec version, so a changed checkpoint or a new converter never meets an old entry.

Both files are written atomically (engine.atomicio), weights first, manifest last: an entry
without a manifest is incomplete. A later start reads the manifest, checks the weights file's
size and SHA-256 and loads it with `mx.load` - the checkpoint is not unpickled. Anything that
does not check out (missing, truncated, altered, unreadable) is converted again and replaced.
Two processes converting the same checkpoint write identical files; the last rename wins.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.atomicio import write_atomic, write_text_atomic
from engine.download import file_sha256
from engine.mlx_spec import SPEC_VERSION, CoreSpec
from engine.store import data_subdir

if TYPE_CHECKING:
    import mlx.core as mx
    from torch import nn

CACHE_FORMAT = 1


def cache_root() -> Path:
    """`data_dir()/mlx`, created on demand."""
    return data_subdir("mlx")


def cached_files(root: Path | None = None) -> list[Path]:
    """Every finished file of the cache (weights and manifests; an atomic write's hidden
    temporary belongs to a conversion still running and is left to it)."""
    root = root or cache_root()
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


def clear_cache(root: Path | None = None) -> list[tuple[Path, int]]:
    """Delete the converted weights; returns (path, bytes) of each file removed. A later
    MLX start converts its checkpoint again."""
    removed = []
    for path in cached_files(root):
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        removed.append((path, size))
    return removed


def entry_stem(checkpoint_sha256: str) -> str:
    return f"{checkpoint_sha256}-v{CACHE_FORMAT}.{SPEC_VERSION}"


@dataclass(frozen=True)
class CachedCore:
    """A checked cache entry; `hit` tells whether it was there already."""

    spec: CoreSpec
    weights: Path
    hit: bool

    def load(self) -> dict[str, mx.array]:
        """The weights as MLX arrays, by the names of `engine.mlx_core.MLXCore`."""
        import mlx.core as mx

        arrays = mx.load(str(self.weights), format="safetensors")
        assert isinstance(arrays, dict)
        return arrays


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_entry(checkpoint_sha256: str, root: Path | None = None) -> CachedCore | str:
    """The entry of a checkpoint if it is complete and intact, else the reason it is not."""
    root = root or cache_root()
    stem = entry_stem(checkpoint_sha256)
    manifest = _manifest(root / f"{stem}.json")
    if manifest is None:
        return "first use" if not (root / f"{stem}.json").exists() else "unreadable manifest"
    if manifest.get("format") != CACHE_FORMAT or manifest.get("checkpoint") != checkpoint_sha256:
        return "a manifest of another format or checkpoint"
    weights = root / f"{stem}.safetensors"
    try:
        size = weights.stat().st_size
        if size != manifest.get("weights_bytes") or file_sha256(weights) != manifest.get(
                "weights_sha256"):
            return "the weights file does not match its manifest"
        spec = CoreSpec.from_json(json.dumps(manifest["spec"]))
    except (OSError, KeyError, TypeError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    return CachedCore(spec=spec, weights=weights, hit=True)


def _write_entry(checkpoint_sha256: str, spec: CoreSpec, weights: dict[str, Any],
                 root: Path) -> CachedCore:
    import mlx.core as mx

    stem = entry_stem(checkpoint_sha256)
    path = root / f"{stem}.safetensors"
    arrays = {name: mx.array(value) for name, value in weights.items()}
    write_atomic(path, lambda f: mx.save_safetensors(f, arrays))
    manifest = {"format": CACHE_FORMAT, "checkpoint": checkpoint_sha256,
                "weights": path.name, "weights_bytes": path.stat().st_size,
                "weights_sha256": file_sha256(path),
                "mlx_version": getattr(mx, "__version__", "?"),
                "spec": json.loads(spec.to_json())}
    write_text_atomic(root / f"{stem}.json", json.dumps(manifest, indent=1, sort_keys=True))
    return CachedCore(spec=spec, weights=path, hit=False)


def ensure_core(checkpoint_sha256: str, load: Callable[[], nn.Module], *,
                root: Path | None = None,
                on_convert: Callable[[str], None] | None = None) -> CachedCore:
    """The cached entry of a checkpoint, converting it first if it is missing or broken.

    `load()` gives the checkpoint's HTDemucs; it is called only when converting.
    `on_convert(reason)` is told before a conversion starts (first use, or why it is rebuilt).
    Raises `DemixerError` if the model has a part the MLX port does not implement."""
    from engine.mlx_convert import describe

    root = root or cache_root()
    found = check_entry(checkpoint_sha256, root)
    if isinstance(found, CachedCore):
        return found
    if on_convert is not None:
        on_convert(found)
    spec, weights = describe(load())
    return _write_entry(checkpoint_sha256, spec, weights, root)
