"""`demixer make-test-model`: random-weight HTDemucs checkpoints in demucs's local-repo format.

The pretrained checkpoints cannot be downloaded on the build machines, so every test and
benchmark gets its model from here: the real architecture of a catalogue model (same kwargs,
same parameter count, random weights) or a tiny one (`--tiny`) that separates in seconds.
The files are what `demucs.pretrained.get_model(NAME, repo=DIR)` loads: `SIG-SHA8.th` with
`klass/args/kwargs/state`, plus `NAME.yaml` listing the signatures (and bag weights).
"""

from __future__ import annotations

import hashlib
import io
import zlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
import yaml

from engine.catalogue import ModelEntry, get_entry

# DESIGN.md "Reference facts": the published HTDemucs kwargs.
REAL_KWARGS: dict[str, Any] = dict(
    channels=48, growth=2, nfft=4096, cac=True, depth=4, rewrite=True, kernel_size=8,
    stride=4, time_stride=2, context=1, context_enc=0, norm_starts=4, norm_groups=4,
    dconv_mode=3, dconv_depth=2, dconv_comp=8, freq_emb=0.2, emb_scale=10, emb_smooth=True,
    multi_freqs=[], bottom_channels=512, t_layers=5, t_heads=8, t_hidden_scale=4.0,
    t_cross_first=False, wiener_iters=0, samplerate=44100, segment=Fraction(39, 5),
)

# depth must stay 4: fewer levels make the cross-transformer's sequence explode (DESIGN.md).
TINY_OVERRIDES: dict[str, Any] = dict(channels=8, bottom_channels=32, t_layers=1, t_heads=4)


def architecture_kwargs(tiny: bool) -> dict[str, Any]:
    """The HTDemucs constructor kwargs (without `sources`) for the real or the tiny model."""
    kwargs = dict(REAL_KWARGS)
    if tiny:
        kwargs.update(TINY_OVERRIDES)
    return kwargs


def _checkpoint_bytes(sources: list[str], kwargs: dict[str, Any], seed: int) -> bytes:
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(sources=list(sources), **kwargs)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    package = {"klass": HTDemucs, "args": (), "kwargs": dict(kwargs, sources=list(sources)),
               "state": state}
    buf = io.BytesIO()
    torch.save(package, buf)
    return buf.getvalue()


def make_test_model(name: str, out_dir: Path, seed: int = 0, tiny: bool = False) -> list[Path]:
    """Write random-weight checkpoints for catalogue model `name` into `out_dir`.

    Returns the checkpoint paths. File names follow demucs (`SIG-<first 8 hex of SHA-256>.th`)
    so demucs's own loader verifies them; signatures are the catalogue's, so a test repo
    mirrors the real layout. Weights differ per checkpoint (seed + index).
    """
    entry: ModelEntry = get_entry(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = architecture_kwargs(tiny)
    paths = []
    for index, ckpt in enumerate(entry.checkpoints):
        # Distinct weights per model and per bag member, reproducible from `seed`.
        member_seed = seed + index + zlib.crc32(name.encode())
        data = _checkpoint_bytes(entry.sources, kwargs, member_seed)
        digest = hashlib.sha256(data).hexdigest()
        for stale in out_dir.glob(f"{ckpt.signature}*.th"):
            stale.unlink()  # demucs refuses a repo with two files for one signature
        path = out_dir / f"{ckpt.signature}-{digest[:8]}.th"
        path.write_bytes(data)
        paths.append(path)
    bag: dict[str, Any] = {"models": [c.signature for c in entry.checkpoints]}
    if entry.weights is not None:
        bag["weights"] = [[float(w) for w in row] for row in entry.weights]
    (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(bag))
    return paths
