"""The HTDemucs network core in MLX: `engine.core.HTDemucsCore`'s function, ported.

`MLXCore(spec)` builds the network from a `CoreSpec` (engine.mlx_spec); `load_weights` fills
it with the arrays of `engine.mlx_convert.describe`. Calling it:
    spec (B, 2C, F, T) float32, wave (B, C, L) float32   (mx.array)
    -> spec_out (B, S, 2C, F, T), time_out (B, S, C, L)   (float32)
the same inputs and outputs as the torch core, batch >= 1.

Inside, tensors are channels-last, MLX's convolution layout: the frequency branch is
(B, F, T, C) and the time branch (B, L, C). Two conveniences follow: demucs's DConv over time
on every frequency row is a free reshape to (B*F, T, C), and the 1x1 convolutions around the
transformer are plain matrix products.

Precision (`MLXCore(spec, attention_dtype=...)`): everything runs in float32, except that the
attention products (q k^T, softmax, times v) may run in float16 or bfloat16; the projections
and everything else stay float32 (see engine.mlx_backend for the measured effect).
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from engine.mlx_spec import (
    ConvSpec,
    CoreSpec,
    DConvSpec,
    LayerSpec,
    NormSpec,
    TLayerSpec,
    TransformerSpec,
)

_BLOCK = 1024  # values per partial sum in `mean_over`


def _sum_axis(x: mx.array, axis: int) -> mx.array:
    """Sum over `axis` (kept, as size 1) in blocks of at most _BLOCK values, then over the
    blocks. MLX's CPU build adds a long reduction one value after another in float32 (8 M
    values: 1e-3 relative error, the same in mx.var and mx.fast.layer_norm); blocks keep it
    near 1e-7."""
    while x.shape[axis] > _BLOCK:
        n = x.shape[axis]
        blocks = -(-n // _BLOCK)
        if blocks * _BLOCK != n:
            widths = [(0, 0)] * x.ndim
            widths[axis] = (0, blocks * _BLOCK - n)
            x = mx.pad(x, widths)  # zeros: the sum is unchanged
        x = mx.sum(x.reshape(*x.shape[:axis], blocks, _BLOCK, *x.shape[axis + 1:]),
                   axis=axis + 1)
    return mx.sum(x, axis=axis, keepdims=True)


def mean_over(x: mx.array, axes: tuple[int, ...]) -> mx.array:
    """Accurate mean over `axes` (kept): the innermost axis first, so that a long reduction
    meets small partial results (see `_sum_axis`)."""
    count = math.prod(x.shape[a] for a in axes)
    for axis in sorted(axes, reverse=True):
        x = _sum_axis(x, axis)
    return x / count


def mean_var(x: mx.array, axes: tuple[int, ...], ddof: int = 0) -> tuple[mx.array, mx.array]:
    """Mean and variance over `axes` (kept), two-pass: torch's accuracy, not E[x^2]-E[x]^2."""
    mean = mean_over(x, axes)
    d = x - mean
    var = mean_over(d * d, axes)
    if ddof:
        count = math.prod(x.shape[a] for a in axes)
        var = var * (count / (count - ddof))
    return mean, var


def gelu(x: mx.array) -> mx.array:
    """torch's nn.GELU(): the exact (erf) form, not the tanh approximation."""
    return x * (1 + mx.erf(x * (1 / math.sqrt(2)))) / 2


def glu(x: mx.array) -> mx.array:
    """torch's F.glu(x, dim=1) on channels-last data: first half times sigmoid(second half)."""
    a, b = mx.split(x, 2, axis=-1)
    return a * mx.sigmoid(b)


def activation(x: mx.array, use_gelu: bool) -> mx.array:
    return gelu(x) if use_gelu else mx.maximum(x, 0)


class Conv(nn.Module):
    """A torch (transposed) convolution on channels-last input, geometry as in its spec."""

    def __init__(self, spec: ConvSpec) -> None:
        super().__init__()
        self.spec = spec
        self.weight = mx.zeros((spec.cout, *spec.kernel, spec.cin))
        if spec.bias:
            self.bias = mx.zeros((spec.cout,))

    def __call__(self, x: mx.array) -> mx.array:
        s = self.spec
        if s.transposed:
            fn = mx.conv_transpose1d if len(s.kernel) == 1 else mx.conv_transpose2d
            y = fn(x, self.weight, stride=_arg(s.stride))
        else:
            y = mx.conv_general(x, self.weight, stride=list(s.stride),
                                padding=list(s.padding), kernel_dilation=list(s.dilation))
        return y + self.bias if s.bias else y


def _arg(values: tuple[int, ...]) -> Any:
    """mx.conv_transpose1d takes an int, mx.conv_transpose2d a tuple."""
    return values[0] if len(values) == 1 else tuple(values)


class Norm(nn.Module):
    """GroupNorm / LayerNorm / identity over the last (channel) axis, torch's maths.

    GroupNorm normalises each sample over its whole extent and the channels of each group,
    with the biased variance, as torch's nn.GroupNorm on channels-first data does."""

    def __init__(self, spec: NormSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.kind != "none" and spec.affine:
            self.weight = mx.ones((spec.channels,))
            self.bias = mx.zeros((spec.channels,))

    def __call__(self, x: mx.array) -> mx.array:
        s = self.spec
        if s.kind == "none":
            return x
        dtype = x.dtype  # statistics in float32 whatever the compute precision
        x = x.astype(mx.float32) if dtype != mx.float32 else x
        if s.kind == "layer":
            y = mx.fast.layer_norm(x, self.weight if s.affine else None,
                                   self.bias if s.affine else None, s.eps)
        else:
            shape = x.shape
            g = x.reshape(shape[0], -1, s.groups, shape[-1] // s.groups)
            mean, var = mean_var(g, (1, 3))
            y = ((g - mean) * mx.rsqrt(var + s.eps)).reshape(shape)
            y = y * self.weight + self.bias if s.affine else y
        return y.astype(dtype) if dtype != mx.float32 else y


class DConv(nn.Module):
    """demucs's DConv residual branch on (N, T, C)."""

    def __init__(self, spec: DConvSpec) -> None:
        super().__init__()
        self.spec = spec
        self.layers = [_DConvLayer(*layer) for layer in spec.layers]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = x + layer(x, self.spec.gelu)
        return x


class _DConvLayer(nn.Module):
    def __init__(self, conv1: ConvSpec, norm1: NormSpec, conv2: ConvSpec,
                 norm2: NormSpec) -> None:
        super().__init__()
        self.conv1, self.norm1 = Conv(conv1), Norm(norm1)
        self.conv2, self.norm2 = Conv(conv2), Norm(norm2)
        self.scale = mx.zeros((conv1.cin,))

    def __call__(self, x: mx.array, use_gelu: bool) -> mx.array:
        y = activation(self.norm1(self.conv1(x)), use_gelu)
        return self.scale * glu(self.norm2(self.conv2(y)))


def _dconv_rows(dconv: DConv, y: mx.array) -> mx.array:
    """DConv over time on every row: (B, F, T, C) -> (B*F, T, C), the same view as demucs's
    permute(0, 2, 1, 3).reshape(-1, C, T) on channels-first data."""
    if y.ndim == 3:
        return dconv(y)
    B, Fr, T, C = y.shape
    return dconv(y.reshape(B * Fr, T, C)).reshape(B, Fr, T, C)


class Encoder(nn.Module):
    """HEncLayer: strided conv (+ injected time branch), norm, GELU, DConv, rewrite + GLU."""

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.conv, self.norm1 = Conv(spec.conv), Norm(spec.norm1)
        self.dconv = DConv(spec.dconv) if spec.dconv else None
        self.rewrite = Conv(spec.rewrite) if spec.rewrite else None
        self.norm2 = Norm(spec.norm2)

    def __call__(self, x: mx.array) -> mx.array:
        if not self.spec.freq:  # the time branch pads its end to a multiple of the stride
            stride = self.spec.conv.stride[0]
            if x.shape[1] % stride:
                x = mx.pad(x, [(0, 0), (0, stride - x.shape[1] % stride), (0, 0)])
        y = gelu(self.norm1(self.conv(x)))
        if self.dconv is not None:
            y = _dconv_rows(self.dconv, y)
        if self.rewrite is not None:
            y = glu(self.norm2(self.rewrite(y)))
        return y


class Decoder(nn.Module):
    """HDecLayer: skip add, rewrite + GLU, DConv, transposed conv, crop, GELU."""

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec
        self.rewrite = Conv(spec.rewrite) if spec.rewrite else None
        self.norm1 = Norm(spec.norm1)
        self.dconv = DConv(spec.dconv) if spec.dconv else None
        self.conv, self.norm2 = Conv(spec.conv), Norm(spec.norm2)

    def __call__(self, x: mx.array, skip: mx.array, length: int) -> mx.array:
        y = x + skip
        if self.rewrite is not None:
            y = glu(self.norm1(self.rewrite(y)))
        if self.dconv is not None:
            y = _dconv_rows(self.dconv, y)
        z = self.norm2(self.conv(y))
        pad = self.spec.pad
        if self.spec.freq:
            z = z[:, pad:z.shape[1] - pad] if pad else z
        else:
            z = z[:, pad:pad + length]
        return z if self.spec.last else gelu(z)


class Linear(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = mx.zeros((cout, cin))
        self.bias = mx.zeros((cout,))

    def __call__(self, x: mx.array) -> mx.array:
        return mx.addmm(self.bias, x, self.weight.T)


class Attention(nn.Module):
    """torch's nn.MultiheadAttention (packed in_proj, batch first), no mask, no dropout."""

    def __init__(self, dim: int, heads: int, dtype: mx.Dtype) -> None:
        super().__init__()
        self.heads, self.dtype = heads, dtype
        self.in_proj = Linear(dim, 3 * dim)
        self.out_proj = Linear(dim, dim)

    def __call__(self, q: mx.array, kv: mx.array | None) -> mx.array:
        w, b = self.in_proj.weight, self.in_proj.bias
        dim = w.shape[1]
        if kv is None:  # self-attention: one product for q, k and v
            q, k, v = mx.split(mx.addmm(b, q, w.T), 3, axis=-1)
        else:
            q = mx.addmm(b[:dim], q, w[:dim].T)
            k, v = mx.split(mx.addmm(b[dim:], kv, w[dim:].T), 2, axis=-1)
        B, Lq, _ = q.shape
        heads = [t.reshape(B, t.shape[1], self.heads, -1).transpose(0, 2, 1, 3).astype(self.dtype)
                 for t in (q, k, v)]
        scale = 1 / math.sqrt(dim // self.heads)
        o = mx.fast.scaled_dot_product_attention(*heads, scale=scale)
        o = o.astype(q.dtype).transpose(0, 2, 1, 3).reshape(B, Lq, dim)
        return self.out_proj(o)


class TransformerLayer(nn.Module):
    """demucs's MyTransformerEncoderLayer (self) or CrossTransformerEncoderLayer (cross)."""

    def __init__(self, spec: TLayerSpec, dim: int, heads: int, dtype: mx.Dtype) -> None:
        super().__init__()
        self.spec = spec
        self.attn = Attention(dim, heads, dtype)
        self.linear1, self.linear2 = Linear(dim, spec.hidden), Linear(spec.hidden, dim)
        self.norms = [Norm(n) for n in spec.norms]
        self.norm_out = Norm(spec.norm_out)
        if spec.layer_scale:
            self.gamma_1, self.gamma_2 = mx.zeros((dim,)), mx.zeros((dim,))

    def _scaled(self, x: mx.array, which: int) -> mx.array:
        if not self.spec.layer_scale:
            return x
        return (self.gamma_1 if which == 1 else self.gamma_2) * x

    def _ff(self, x: mx.array) -> mx.array:
        return self.linear2(activation(self.linear1(x), self.spec.gelu))

    def __call__(self, x: mx.array, other: mx.array | None) -> mx.array:
        n = self.norms
        if not self.spec.norm_first:
            x = n[0](x + self._scaled(self.attn(x, other), 1))
            return n[1](x + self._scaled(self._ff(x), 2))
        if other is None:
            x = x + self._scaled(self.attn(n[0](x), None), 1)
        else:
            x = x + self._scaled(self.attn(n[0](x), n[1](other)), 1)
        x = x + self._scaled(self._ff(n[-1](x)), 2)
        return self.norm_out(x)


def sin_embedding_2d(dim: int, height: int, width: int, max_period: float) -> np.ndarray:
    """demucs.transformer.create_2d_sin_embedding in float32 as torch computes it, laid out
    as the transformer's sequence: (width * height, dim), width (time) major."""
    if dim % 4:
        raise ValueError(f"2D sin embedding needs a dimension divisible by 4, got {dim}")
    half = dim // 2
    div = np.exp(np.arange(0, half, 2, dtype=np.float32)
                 * np.float32(-(math.log(max_period) / half)))
    pe = np.zeros((width, height, dim), np.float32)
    w = np.arange(width, dtype=np.float32)[:, None] * div  # (width, half / 2)
    h = np.arange(height, dtype=np.float32)[:, None] * div
    pe[:, :, 0:half:2] = np.sin(w)[:, None, :]
    pe[:, :, 1:half:2] = np.cos(w)[:, None, :]
    pe[:, :, half::2] = np.sin(h)[None, :, :]
    pe[:, :, half + 1::2] = np.cos(h)[None, :, :]
    return pe.reshape(width * height, dim)


def sin_embedding_1d(length: int, dim: int, max_period: float) -> np.ndarray:
    """demucs.transformer.create_sin_embedding (shift 0) in float32: (length, dim)."""
    half = dim // 2
    exponent = np.arange(half, dtype=np.float32) / np.float32(half - 1)
    phase = np.arange(length, dtype=np.float32)[:, None] / np.power(np.float32(max_period),
                                                                    exponent)
    return np.concatenate([np.cos(phase), np.sin(phase)], axis=-1).astype(np.float32)


class CrossTransformer(nn.Module):
    """demucs's CrossTransformerEncoder on x (B, F, T, C) and xt (B, T2, C)."""

    def __init__(self, spec: TransformerSpec, dtype: mx.Dtype) -> None:
        super().__init__()
        self.spec = spec
        self.norm_in, self.norm_in_t = Norm(spec.norm_in), Norm(spec.norm_in_t)
        self.layers = [TransformerLayer(s, spec.dim, spec.heads, dtype) for s in spec.layers]
        self.layers_t = [TransformerLayer(s, spec.dim, spec.heads, dtype) for s in spec.layers]
        # a plain attribute, not part of the module's parameter tree (nn.Module keeps dicts)
        self._pos: dict[tuple[int, ...], tuple[mx.array, mx.array]]
        object.__setattr__(self, "_pos", {})

    def _positions(self, Fr: int, T1: int, T2: int, C: int) -> tuple[mx.array, mx.array]:
        key = (Fr, T1, T2, C)
        if key not in self._pos:  # computed once per shape, outside any compiled graph
            s = self.spec
            self._pos[key] = (mx.array(sin_embedding_2d(C, Fr, T1, s.max_period)),
                              mx.array(sin_embedding_1d(T2, C, s.max_period)))
        return self._pos[key]

    def __call__(self, x: mx.array, xt: mx.array) -> tuple[mx.array, mx.array]:
        B, Fr, T1, C = x.shape
        pos2d, pos1d = self._positions(Fr, T1, xt.shape[1], C)
        w = self.spec.weight_pos_embed
        x = self.norm_in(x.transpose(0, 2, 1, 3).reshape(B, T1 * Fr, C))
        x = x + (w * pos2d).astype(x.dtype)
        xt = self.norm_in_t(xt)
        xt = xt + (w * pos1d).astype(xt.dtype)
        for layer, layer_t in zip(self.layers, self.layers_t, strict=True):
            if layer.spec.cross:
                x, xt = layer(x, xt), layer_t(xt, x)
            else:
                x, xt = layer(x, None), layer_t(xt, None)
        return x.reshape(B, T1, Fr, C).transpose(0, 2, 1, 3), xt


class MLXCore(nn.Module):
    """The whole core (see the module docstring): normalise, encode, transform, decode."""

    def __init__(self, spec: CoreSpec, attention_dtype: mx.Dtype = mx.float32,
                 compute_dtype: mx.Dtype = mx.float32) -> None:
        super().__init__()
        self.spec = spec
        self.compute_dtype = compute_dtype
        self.encoder = [Encoder(s) for s in spec.encoder]
        self.tencoder = [Encoder(s) for s in spec.tencoder]
        self.decoder = [Decoder(s) for s in spec.decoder]
        self.tdecoder = [Decoder(s) for s in spec.tdecoder]
        if spec.freq_emb_scale:
            self.freq_emb = mx.zeros(spec.freq_emb_shape)
        if spec.bottom_channels:  # 1x1 convolutions, i.e. linear maps of the channels
            bottom, inner, inner_t = (spec.bottom_channels, spec.encoder[-1].conv.cout,
                                      spec.tencoder[-1].conv.cout)
            self.channel_upsampler = Linear(inner, bottom)
            self.channel_downsampler = Linear(bottom, inner)
            self.channel_upsampler_t = Linear(inner_t, bottom)
            self.channel_downsampler_t = Linear(bottom, inner_t)
        if spec.transformer is not None:
            self.crosstransformer = CrossTransformer(spec.transformer, attention_dtype)

    def __call__(self, spec: mx.array, wave: mx.array) -> tuple[mx.array, mx.array]:
        B, _, Fq, T = spec.shape
        L = wave.shape[-1]
        # HTDemucs's normalisations; std is the unbiased estimator there too
        mean, var = mean_var(spec, (1, 2, 3), ddof=1)
        meant, vart = mean_var(wave, (1, 2), ddof=1)
        std, stdt = mx.sqrt(var), mx.sqrt(vart)
        x = ((spec - mean) / (1e-5 + std)).transpose(0, 2, 3, 1)  # (B, F, T, 2C)
        xt = ((wave - meant) / (1e-5 + stdt)).transpose(0, 2, 1)  # (B, L, C)
        dt = self.compute_dtype
        x, xt = self._encode_transform_decode(x.astype(dt), xt.astype(dt))
        x, xt = x.astype(mx.float32), xt.astype(mx.float32)
        S = len(self.spec.sources)
        x = x.transpose(0, 3, 1, 2).reshape(B, S, -1, Fq, T) * std[:, None] + mean[:, None]
        xt = xt.transpose(0, 2, 1).reshape(B, S, -1, L) * stdt[:, None] + meant[:, None]
        return x, xt

    def _encode_transform_decode(self, x: mx.array, xt: mx.array) -> tuple[mx.array, mx.array]:
        saved, saved_t, lengths_t = [], [], []
        for idx, encode in enumerate(self.encoder):
            lengths_t.append(xt.shape[1])
            xt = self.tencoder[idx](xt)
            saved_t.append(xt)
            x = encode(x)
            if idx == 0 and self.spec.freq_emb_scale:
                emb = self.freq_emb[: x.shape[1]] * self.spec.freq_emb_inner
                x = x + self.spec.freq_emb_scale * emb[None, :, None, :]
            saved.append(x)
        if self.spec.transformer is not None:
            x, xt = self._cross_transform(x, xt)
        for idx, decode in enumerate(self.decoder):
            x = decode(x, saved.pop(-1), 0)
            xt = self.tdecoder[idx](xt, saved_t.pop(-1), lengths_t.pop(-1))
        return x, xt

    def _cross_transform(self, x: mx.array, xt: mx.array) -> tuple[mx.array, mx.array]:
        if self.spec.bottom_channels:
            x, xt = self.channel_upsampler(x), self.channel_upsampler_t(xt)
        x, xt = self.crosstransformer(x, xt)
        if self.spec.bottom_channels:
            x, xt = self.channel_downsampler(x), self.channel_downsampler_t(xt)
        return x, xt
