"""Core surgery: HTDemucs cut at the complex boundary.

`HTDemucsCore` is everything of `HTDemucs.forward` between the complex spectrogram and the
mask: it takes the complex-as-channels spectrogram and the (chunk-local) waveform and returns
the spectral output (still complex-as-channels) and the time-branch output. No complex tensor
lives inside, so it traces and converts to CoreML; STFT, masking, iSTFT and overlap-add stay in
numpy (`engine.stft`, `engine.separator`).

Shapes (B = batch, C = audio channels, S = sources, F = nfft/2 bins, T = frames, L = segment):
    spec  (B, 2C, F, T) float32, channel index = 2*c + (0 real, 1 imaginary), as `_magnitude`
    wave  (B, C, L)     float32
    -> spec_out (B, S, 2C, F, T) float32, time_out (B, S, C, L) float32
Every size is read from the loaded model (`core_shapes`), never hard-coded; `CoreShapes`
itself lives in `engine.shapes` (no torch there) and is re-exported here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange
from torch import nn

from engine.shapes import CoreShapes

__all__ = ["CoreShapes", "HTDemucsCore", "core_shapes"]


def core_shapes(model: Any) -> CoreShapes:
    """Read the core's sizes from an `HTDemucs` model (not a bag: pass a bag's member)."""
    segment_samples = int(model.segment * model.samplerate)
    hop = int(model.hop_length)
    return CoreShapes(samplerate=int(model.samplerate), segment_samples=segment_samples,
                      channels=int(model.audio_channels), sources=tuple(model.sources),
                      nfft=int(model.nfft), hop=hop, freqs=int(model.nfft) // 2,
                      frames=math.ceil(segment_samples / hop))


class HTDemucsCore(nn.Module):
    """The network of an `HTDemucs` between its STFT and its iSTFT (see module docstring)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not getattr(model, "cac", False):
            raise ValueError("core surgery needs a complex-as-channels HTDemucs (cac=True)")
        self.model: Any = model  # demucs's HTDemucs (untyped)
        self.shapes = core_shapes(model)

    def forward(self, spec: torch.Tensor, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        B, _, Fq, T = spec.shape
        # Same normalisations as HTDemucs.forward; std is torch's unbiased estimator there too.
        mean = spec.mean(dim=(1, 2, 3), keepdim=True)
        std = spec.std(dim=(1, 2, 3), keepdim=True)
        x = (spec - mean) / (1e-5 + std)
        meant = wave.mean(dim=(1, 2), keepdim=True)
        stdt = wave.std(dim=(1, 2), keepdim=True)
        xt = (wave - meant) / (1e-5 + stdt)
        x, xt = self._encode_transform_decode(x, xt)
        S = len(m.sources)
        x = x.view(B, S, -1, Fq, T) * std[:, None] + mean[:, None]
        xt = xt.view(B, S, -1, wave.shape[-1]) * stdt[:, None] + meant[:, None]
        return x, xt

    def _encode_transform_decode(self, x: torch.Tensor,
                                 xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HTDemucs's encoder / cross-transformer / decoder, verbatim in behaviour."""
        m = self.model
        saved: list[torch.Tensor] = []
        saved_t: list[torch.Tensor] = []
        lengths: list[int] = []
        lengths_t: list[int] = []
        for idx, encode in enumerate(m.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(m.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = m.tencoder[idx]
                xt = tenc(xt)
                if not tenc.empty:
                    saved_t.append(xt)
                else:
                    inject = xt  # branches merge here
            x = encode(x, inject)
            if idx == 0 and m.freq_emb is not None:
                frs = torch.arange(x.shape[-2], device=x.device)
                # broadcast instead of demucs's expand_as(x): same sums, but a converted
                # package then stores a (C, F) table, not a 16.5 MB (C, F, T) constant
                emb = m.freq_emb(frs).t()[None, :, :, None]
                x = x + m.freq_emb_scale * emb
            saved.append(x)
        if m.crosstransformer:
            x, xt = self._cross_transform(x, xt)
        for idx, decode in enumerate(m.decoder):
            x, pre = decode(x, saved.pop(-1), lengths.pop(-1))
            offset = m.depth - len(m.tdecoder)
            if idx >= offset:
                tdec = m.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    xt, _ = tdec(pre[:, :, 0], None, length_t)
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), length_t)
        return x, xt

    def _cross_transform(self, x: torch.Tensor,
                         xt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        f = x.shape[2]
        if m.bottom_channels:
            x = rearrange(x, "b c f t-> b c (f t)")
            x = m.channel_upsampler(x)
            x = rearrange(x, "b c (f t)-> b c f t", f=f)
            xt = m.channel_upsampler_t(xt)
        x, xt = m.crosstransformer(x, xt)
        if m.bottom_channels:
            x = rearrange(x, "b c f t-> b c (f t)")
            x = m.channel_downsampler(x)
            x = rearrange(x, "b c (f t)-> b c f t", f=f)
            xt = m.channel_downsampler_t(xt)
        return x, xt
