"""Read an HTDemucs's architecture and weights for the MLX port (`engine.mlx_core`).

`describe(model) -> (CoreSpec, weights)`: the architecture as plain data (`engine.mlx_spec`),
read off the loaded demucs modules themselves (every convolution's kernel, stride, padding and
dilation, every norm's kind, groups and eps, the transformer's options), and the weights as
float32 numpy arrays in MLX's layouts, named by the MLX module tree. Anything the port does
not implement (MultiWrap bands, merged branches, sparse or CAPE attention, LSTM/attention
inside DConv...) raises a `DemixerError` naming it, instead of a silently different network.

The demucs modules are untyped, so they are `Any` here. MLX layouts: convolutions are
channels-last with weights (out, *kernel, in) — torch's
(out, in, *kernel) for Conv, (in, out, *kernel) for ConvTranspose. Linear weights stay (out, in).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import DemixerError
from engine.mlx_spec import (
    ConvSpec,
    CoreSpec,
    DConvSpec,
    LayerSpec,
    NormSpec,
    TLayerSpec,
    TransformerSpec,
)

Weights = dict[str, np.ndarray]
_CONVS = (nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d)


def _unsupported(what: str) -> DemixerError:
    return DemixerError(f"The MLX backend does not support this model: {what}; "
                        f"use --backend torch.")


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _conv(prefix: str, conv: Any, out: Weights) -> ConvSpec:
    if not isinstance(conv, _CONVS):
        raise _unsupported(f"{prefix} is a {type(conv).__name__}, not a convolution")
    transposed = isinstance(conv, nn.ConvTranspose1d | nn.ConvTranspose2d)
    padding = conv.padding
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(padding, str):
        raise _unsupported(f"{prefix} is a grouped or non-zero-padded convolution")
    if transposed and (any(conv.padding) or any(conv.output_padding) or
                       any(d != 1 for d in conv.dilation)):
        raise _unsupported(f"{prefix} is a padded or dilated transposed convolution")
    w = _array(conv.weight)
    order = (1, *range(2, w.ndim), 0) if transposed else (0, *range(2, w.ndim), 1)
    out[f"{prefix}.weight"] = np.ascontiguousarray(w.transpose(order))
    if conv.bias is not None:
        out[f"{prefix}.bias"] = _array(conv.bias)
    cin, cout = (w.shape[0], w.shape[1]) if transposed else (w.shape[1], w.shape[0])
    return ConvSpec(transposed=transposed, cin=int(cin), cout=int(cout),
                    kernel=tuple(conv.kernel_size), stride=tuple(conv.stride),
                    padding=tuple(padding), dilation=tuple(conv.dilation),
                    bias=conv.bias is not None)


def _norm(prefix: str, norm: Any, out: Weights) -> NormSpec:
    """GroupNorm (demucs's MyGroupNorm on (B, T, C) is the same maths), LayerNorm, Identity."""
    if isinstance(norm, nn.Identity):
        return NormSpec("none")
    if isinstance(norm, nn.GroupNorm):
        spec = NormSpec("group", int(norm.num_channels), int(norm.num_groups), float(norm.eps),
                        bool(norm.affine))
    elif isinstance(norm, nn.LayerNorm):
        if len(norm.normalized_shape) != 1 or getattr(norm, "bias", True) is None:
            raise _unsupported(f"{prefix} is a LayerNorm over more than the channels")
        spec = NormSpec("layer", int(norm.normalized_shape[0]), 1, float(norm.eps),
                        bool(norm.elementwise_affine))
    else:
        raise _unsupported(f"{prefix} is a {type(norm).__name__}")
    if spec.affine:
        out[f"{prefix}.weight"] = _array(norm.weight)
        out[f"{prefix}.bias"] = _array(norm.bias)
    return spec


def _layer_scale(prefix: str, module: Any, out: Weights) -> bool:
    if isinstance(module, nn.Identity):
        return False
    scale = getattr(module, "scale", None)
    if not isinstance(scale, torch.Tensor):
        raise _unsupported(f"{prefix} is a {type(module).__name__}, not a LayerScale")
    out[prefix] = _array(scale)
    return True


def _activation(prefix: str, module: Any) -> bool:
    """True for exact GELU (erf), False for ReLU."""
    if (isinstance(module, nn.GELU) and module.approximate == "none") or module is F.gelu:
        return True
    if isinstance(module, nn.ReLU) or module is F.relu:
        return False
    raise _unsupported(f"{prefix} uses the activation {module!r}")


def _dconv(prefix: str, dconv: Any, out: Weights) -> DConvSpec:
    """demucs.demucs.DConv: each layer must be conv, norm, act, 1x1 conv, norm, GLU, scale."""
    layers, gelu = [], True
    for i, seq in enumerate(dconv.layers):
        mods = list(seq)
        if len(mods) != 7 or not isinstance(mods[5], nn.GLU) or mods[5].dim != 1:
            raise _unsupported(f"{prefix}.layers.{i} has LSTM or attention layers")
        p = f"{prefix}.layers.{i}"
        gelu = _activation(f"{p}.2", mods[2])
        layers.append((_conv(f"{p}.conv1", mods[0], out), _norm(f"{p}.norm1", mods[1], out),
                       _conv(f"{p}.conv2", mods[3], out), _norm(f"{p}.norm2", mods[4], out)))
        if not _layer_scale(f"{p}.scale", mods[6], out):
            raise _unsupported(f"{p} has no LayerScale")
    return DConvSpec(layers=tuple(layers), gelu=gelu)


def _check_layer(prefix: str, layer: Any) -> None:
    if type(layer).__name__ not in ("HEncLayer", "HDecLayer"):
        raise _unsupported(f"{prefix} is a {type(layer).__name__} (frequency bands, "
                           f"multi_freqs)")
    if layer.empty:
        raise _unsupported(f"{prefix} merges the time and frequency branches (depth > 4)")
    if not getattr(layer, "context_freq", True):
        raise _unsupported(f"{prefix} has a time-only rewrite context")


def _enc_layer(prefix: str, layer: Any, out: Weights) -> LayerSpec:
    _check_layer(prefix, layer)
    rewrite = norm2 = None
    if layer.rewrite is not None:
        rewrite = _conv(f"{prefix}.rewrite", layer.rewrite, out)
        norm2 = _norm(f"{prefix}.norm2", layer.norm2, out)
    dconv = _dconv(f"{prefix}.dconv", layer.dconv, out) if layer.dconv is not None else None
    return LayerSpec(freq=bool(layer.freq), conv=_conv(f"{prefix}.conv", layer.conv, out),
                     norm1=_norm(f"{prefix}.norm1", layer.norm1, out),
                     norm2=norm2 or NormSpec("none"), rewrite=rewrite, dconv=dconv,
                     pad=int(layer.pad))


def _dec_layer(prefix: str, layer: Any, out: Weights) -> LayerSpec:
    _check_layer(prefix, layer)
    rewrite = norm1 = None
    if layer.rewrite is not None:
        rewrite = _conv(f"{prefix}.rewrite", layer.rewrite, out)
        norm1 = _norm(f"{prefix}.norm1", layer.norm1, out)
    dconv = _dconv(f"{prefix}.dconv", layer.dconv, out) if layer.dconv is not None else None
    return LayerSpec(freq=bool(layer.freq), conv=_conv(f"{prefix}.conv", layer.conv_tr, out),
                     norm1=norm1 or NormSpec("none"),
                     norm2=_norm(f"{prefix}.norm2", layer.norm2, out), rewrite=rewrite,
                     dconv=dconv, pad=int(layer.pad), last=bool(layer.last))


def _attention(prefix: str, mha: Any, out: Weights) -> None:
    """torch's nn.MultiheadAttention with packed q/k/v projections, batch first."""
    if not isinstance(mha, nn.MultiheadAttention):
        raise _unsupported(f"{prefix} is a {type(mha).__name__} (sparse attention)")
    if (not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn
            or mha.in_proj_bias is None or not mha.batch_first):
        raise _unsupported(f"{prefix} is an attention with extra biases or dimensions")
    out[f"{prefix}.in_proj.weight"] = _array(mha.in_proj_weight)
    out[f"{prefix}.in_proj.bias"] = _array(mha.in_proj_bias)
    _linear(f"{prefix}.out_proj", mha.out_proj, out)


def _linear(prefix: str, lin: Any, out: Weights) -> int:
    if lin.bias is None:
        raise _unsupported(f"{prefix} is a linear layer without bias")
    out[f"{prefix}.weight"] = _array(lin.weight)
    out[f"{prefix}.bias"] = _array(lin.bias)
    return int(lin.weight.shape[0])


def _tlayer(prefix: str, layer: Any, out: Weights) -> TLayerSpec:
    cross = type(layer).__name__ == "CrossTransformerEncoderLayer"
    if not cross and type(layer).__name__ != "MyTransformerEncoderLayer":
        raise _unsupported(f"{prefix} is a {type(layer).__name__}")
    if getattr(layer, "sparse", False):
        raise _unsupported(f"{prefix} uses sparse attention")
    _attention(f"{prefix}.attn", layer.cross_attn if cross else layer.self_attn, out)
    hidden = _linear(f"{prefix}.linear1", layer.linear1, out)
    _linear(f"{prefix}.linear2", layer.linear2, out)
    names = ("norm1", "norm2", "norm3") if cross else ("norm1", "norm2")
    norms = tuple(_norm(f"{prefix}.norms.{i}", getattr(layer, n), out)
                  for i, n in enumerate(names))
    norm_out = (_norm(f"{prefix}.norm_out", layer.norm_out, out)
                if layer.norm_out is not None else NormSpec("none"))
    scales = [_layer_scale(f"{prefix}.gamma_{i}", getattr(layer, f"gamma_{i}"), out)
              for i in (1, 2)]
    if scales[0] != scales[1]:
        raise _unsupported(f"{prefix} has LayerScale on one residual only")
    return TLayerSpec(cross=cross, norm_first=bool(layer.norm_first), norms=norms,
                      norm_out=norm_out, layer_scale=scales[0],
                      gelu=_activation(f"{prefix}.activation", layer.activation),
                      hidden=hidden)


def _transformer(prefix: str, ct: Any, out: Weights) -> TransformerSpec:
    if ct.emb != "sin" or ct.sin_random_shift:
        raise _unsupported(f"the transformer's positional embedding '{ct.emb}' "
                           f"(random shift {ct.sin_random_shift})")
    layers = []
    for idx in range(ct.num_layers):
        spec = _tlayer(f"{prefix}.layers.{idx}", ct.layers[idx], out)
        if _tlayer(f"{prefix}.layers_t.{idx}", ct.layers_t[idx], out) != spec:
            raise _unsupported(f"transformer layer {idx} differs between the branches")
        if spec.cross != (idx % 2 != ct.classic_parity):
            raise _unsupported(f"transformer layer {idx} is not where its parity puts it")
        layers.append(spec)
    attn = ct.layers[0].cross_attn if layers[0].cross else ct.layers[0].self_attn
    return TransformerSpec(dim=int(attn.embed_dim), heads=int(attn.num_heads),
                           norm_in=_norm(f"{prefix}.norm_in", ct.norm_in, out),
                           norm_in_t=_norm(f"{prefix}.norm_in_t", ct.norm_in_t, out),
                           layers=tuple(layers), max_period=float(ct.max_period),
                           weight_pos_embed=float(ct.weight_pos_embed))


def _check_model(model: Any) -> None:
    if type(model).__name__ != "HTDemucs":
        raise _unsupported(f"it is a {type(model).__name__}, not an HTDemucs")
    if not model.cac:
        raise _unsupported("it does not use complex-as-channels spectrograms (cac=False)")
    if len(model.tencoder) != len(model.encoder) or len(model.tdecoder) != len(model.decoder):
        raise _unsupported("its time and frequency branches merge (depth > 4)")


def _bottom(model: Any, out: Weights) -> int:
    if not model.bottom_channels or not model.crosstransformer:
        return 0
    for name in ("channel_upsampler", "channel_downsampler", "channel_upsampler_t",
                 "channel_downsampler_t"):
        spec = _conv(name, getattr(model, name), out)
        if spec.kernel != (1,) or spec.stride != (1,) or spec.padding != (0,) or not spec.bias:
            raise _unsupported(f"{name} is not a 1x1 convolution")
        out[f"{name}.weight"] = out[f"{name}.weight"][:, 0, :]  # a linear map: (out, in)
    return int(model.bottom_channels)


def _native_segment(model: Any) -> str:
    """The checkpoint's own training length (a bag's override is applied at load time)."""
    kwargs: dict[str, Any] = getattr(model, "_init_args_kwargs", ((), {}))[1]
    segment = kwargs.get("segment", model.segment)
    return str(Fraction(segment).limit_denominator(10**9))


def describe(model: Any) -> tuple[CoreSpec, Weights]:
    """The architecture and float32 weights of an `HTDemucs` (a bag member)."""
    _check_model(model)
    out: Weights = {}
    enc = tuple(_enc_layer(f"encoder.{i}", m, out) for i, m in enumerate(model.encoder))
    tenc = tuple(_enc_layer(f"tencoder.{i}", m, out) for i, m in enumerate(model.tencoder))
    dec = tuple(_dec_layer(f"decoder.{i}", m, out) for i, m in enumerate(model.decoder))
    tdec = tuple(_dec_layer(f"tdecoder.{i}", m, out) for i, m in enumerate(model.tdecoder))
    emb_scale, emb_inner, emb_shape = 0.0, 1.0, (0, 0)
    if model.freq_emb is not None:
        weight = model.freq_emb.embedding.weight
        out["freq_emb"] = _array(weight)
        emb_scale, emb_inner = float(model.freq_emb_scale), float(model.freq_emb.scale)
        emb_shape = (int(weight.shape[0]), int(weight.shape[1]))
    bottom = _bottom(model, out)
    transformer = (_transformer("crosstransformer", model.crosstransformer, out)
                   if model.crosstransformer else None)
    spec = CoreSpec(sources=tuple(model.sources), audio_channels=int(model.audio_channels),
                    samplerate=int(model.samplerate),
                    segment=_native_segment(model),
                    nfft=int(model.nfft), hop=int(model.hop_length), encoder=enc,
                    tencoder=tenc, decoder=dec, tdecoder=tdec, freq_emb_scale=emb_scale,
                    freq_emb_inner=emb_inner, freq_emb_shape=emb_shape,
                    bottom_channels=bottom, transformer=transformer)
    return spec, out
