"""The architecture of one HTDemucs core as plain data: what the MLX port is built from.

`engine.mlx_convert` reads a `CoreSpec` off a loaded demucs `HTDemucs` (every convolution's
geometry, every norm's kind, groups and eps, the transformer's options) and `engine.mlx_core`
builds the MLX network from it. It is stored as JSON beside the cached weights, so a later
start builds the network without loading the checkpoint. No torch and no MLX here.

Layouts are demucs's (channels-first); the MLX side does its own transposes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

SPEC_VERSION = 1  # bump when the meaning of a field changes: cached weights are rebuilt


@dataclass(frozen=True)
class ConvSpec:
    """One torch Conv1d/Conv2d/ConvTranspose1d/ConvTranspose2d, as torch configured it."""

    transposed: bool
    cin: int
    cout: int
    kernel: tuple[int, ...]  # 1 or 2 entries (2: frequency x time)
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    bias: bool

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvSpec:
        return cls(transposed=bool(d["transposed"]), cin=int(d["cin"]), cout=int(d["cout"]),
                   kernel=tuple(d["kernel"]), stride=tuple(d["stride"]),
                   padding=tuple(d["padding"]), dilation=tuple(d["dilation"]),
                   bias=bool(d["bias"]))


@dataclass(frozen=True)
class NormSpec:
    """"group" (torch GroupNorm, and demucs's MyGroupNorm), "layer" (LayerNorm) or "none"."""

    kind: str
    channels: int = 0
    groups: int = 1
    eps: float = 1e-5
    affine: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormSpec:
        return cls(kind=str(d["kind"]), channels=int(d["channels"]), groups=int(d["groups"]),
                   eps=float(d["eps"]), affine=bool(d["affine"]))


@dataclass(frozen=True)
class DConvSpec:
    """demucs's DConv residual branch: per layer conv -> norm -> GELU -> 1x1 -> norm -> GLU
    -> LayerScale, added to its input."""

    layers: tuple[tuple[ConvSpec, NormSpec, ConvSpec, NormSpec], ...]
    gelu: bool  # else ReLU

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DConvSpec:
        layers = tuple((ConvSpec.from_dict(a), NormSpec.from_dict(b), ConvSpec.from_dict(c),
                        NormSpec.from_dict(e)) for a, b, c, e in d["layers"])
        return cls(layers=layers, gelu=bool(d["gelu"]))


@dataclass(frozen=True)
class LayerSpec:
    """One HEncLayer or HDecLayer (`freq`: over frequencies, else over time)."""

    freq: bool
    conv: ConvSpec  # the encoder's strided conv, or the decoder's conv_tr
    norm1: NormSpec
    norm2: NormSpec
    rewrite: ConvSpec | None
    dconv: DConvSpec | None
    pad: int  # HDecLayer: the crop after conv_tr; HEncLayer: unused (in conv.padding)
    last: bool = False  # HDecLayer: no GELU at the end

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerSpec:
        return cls(freq=bool(d["freq"]), conv=ConvSpec.from_dict(d["conv"]),
                   norm1=NormSpec.from_dict(d["norm1"]), norm2=NormSpec.from_dict(d["norm2"]),
                   rewrite=ConvSpec.from_dict(d["rewrite"]) if d["rewrite"] else None,
                   dconv=DConvSpec.from_dict(d["dconv"]) if d["dconv"] else None,
                   pad=int(d["pad"]), last=bool(d["last"]))


@dataclass(frozen=True)
class TLayerSpec:
    """One layer of the cross-transformer (both branches share it)."""

    cross: bool
    norm_first: bool
    norms: tuple[NormSpec, ...]  # norm1, norm2 (self) or norm1, norm2, norm3 (cross)
    norm_out: NormSpec
    layer_scale: bool
    gelu: bool  # else ReLU
    hidden: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TLayerSpec:
        return cls(cross=bool(d["cross"]), norm_first=bool(d["norm_first"]),
                   norms=tuple(NormSpec.from_dict(n) for n in d["norms"]),
                   norm_out=NormSpec.from_dict(d["norm_out"]),
                   layer_scale=bool(d["layer_scale"]), gelu=bool(d["gelu"]),
                   hidden=int(d["hidden"]))


@dataclass(frozen=True)
class TransformerSpec:
    dim: int
    heads: int
    norm_in: NormSpec
    norm_in_t: NormSpec
    layers: tuple[TLayerSpec, ...]
    max_period: float
    weight_pos_embed: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformerSpec:
        return cls(dim=int(d["dim"]), heads=int(d["heads"]),
                   norm_in=NormSpec.from_dict(d["norm_in"]),
                   norm_in_t=NormSpec.from_dict(d["norm_in_t"]),
                   layers=tuple(TLayerSpec.from_dict(x) for x in d["layers"]),
                   max_period=float(d["max_period"]),
                   weight_pos_embed=float(d["weight_pos_embed"]))


@dataclass(frozen=True)
class CoreSpec:
    """A whole HTDemucs core: its metadata (the sizes `engine.core.CoreShapes` needs) and
    its layers. `segment` is the model's own training length in seconds, as a fraction."""

    sources: tuple[str, ...]
    audio_channels: int
    samplerate: int
    segment: str
    nfft: int
    hop: int
    encoder: tuple[LayerSpec, ...]
    tencoder: tuple[LayerSpec, ...]
    decoder: tuple[LayerSpec, ...]
    tdecoder: tuple[LayerSpec, ...]
    freq_emb_scale: float  # 0: no frequency embedding
    freq_emb_inner: float  # ScaledEmbedding.scale
    freq_emb_shape: tuple[int, int]
    bottom_channels: int  # 0: no channel up/downsamplers around the transformer
    transformer: TransformerSpec | None

    @property
    def segment_fraction(self) -> Fraction:
        return Fraction(self.segment)

    def to_json(self) -> str:
        return json.dumps({"spec_version": SPEC_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CoreSpec:
        d = json.loads(text)
        if d.get("spec_version") != SPEC_VERSION:
            raise ValueError(f"architecture spec version {d.get('spec_version')}, "
                             f"expected {SPEC_VERSION}")
        layers = {k: tuple(LayerSpec.from_dict(x) for x in d[k])
                  for k in ("encoder", "tencoder", "decoder", "tdecoder")}
        t = d["transformer"]
        return cls(sources=tuple(d["sources"]), audio_channels=int(d["audio_channels"]),
                   samplerate=int(d["samplerate"]), segment=str(d["segment"]),
                   nfft=int(d["nfft"]), hop=int(d["hop"]), **layers,
                   freq_emb_scale=float(d["freq_emb_scale"]),
                   freq_emb_inner=float(d["freq_emb_inner"]),
                   freq_emb_shape=(int(d["freq_emb_shape"][0]), int(d["freq_emb_shape"][1])),
                   bottom_channels=int(d["bottom_channels"]),
                   transformer=TransformerSpec.from_dict(t) if t else None)
