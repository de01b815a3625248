"""Faster CPU forms of demucs layers; the same arithmetic up to fp32 rounding (or bf16's own).

- DConv: the residual branches squeeze 48-384 channels down to 6-48 and back. oneDNN runs
  those thin convolutions at a fraction of its speed on the wide ones: in one real-architecture
  segment the 6 -> 96 pointwise conv over (512, 6, 336) took 24 ms a call where one batched
  GEMM takes 5 ms. Each such `nn.Conv1d` gets a forward that is one GEMM (plus, for a k-tap
  conv, k-1 shifted adds of a small tensor). Only sums are reordered: outputs move by about
  1e-7 relative, and fp32 stays >= 70 dB from demucs (tests/engine/test_parity.py).
- Decoder transposed convs (frequency side): kernel (8, 1), stride (4, 1) as one GEMM of all
  taps and an overlap-add of two halves; torch's own copies its whole output once more
  (numbers at `_gemm_conv_transpose`).
- Attention in bf16: blocked GEMM + softmax + GEMM instead of SDPA's flash kernel (numbers at
  `ATTENTION_BLOCK`). fp32 still goes to torch's own (SDPA), the faster exact path.

Only the torch backend installs these (`use_fast_kernels`); conversion to CoreML traces
demucs's own layers.
"""

from __future__ import annotations

import types

import torch
from demucs.demucs import DConv
from torch import nn


def use_fast_kernels(model: nn.Module) -> int:
    """Install the faster forwards on `model`'s layers; returns how many layers changed.

    DConv convolutions and frequency-side transposed convs get a GEMM forward; attention
    gets one that blocks bf16 attention and
    leaves fp32 to SDPA (see `_attention_forward`). Parameters stay where they are (same
    tensors, same state_dict); only the instances' `forward` changes.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, DConv):
            for conv in module.modules():
                if isinstance(conv, nn.Conv1d) and _gemm_friendly(conv):
                    conv.forward = types.MethodType(_gemm_conv1d, conv)  # type: ignore[method-assign]
                    count += 1
        elif isinstance(module, nn.ConvTranspose2d) and _gemm_friendly_transpose(module):
            module.forward = types.MethodType(_gemm_conv_transpose, module)  # type: ignore[method-assign]
            count += 1
        elif isinstance(module, nn.MultiheadAttention) and _plain_mha(module):
            module.forward = types.MethodType(_attention_forward, module)  # type: ignore[method-assign]
            count += 1
    return count


def _gemm_friendly(conv: nn.Conv1d) -> bool:
    """Stride 1, 'same'-style symmetric padding, no groups: what DConv builds."""
    k, d = conv.kernel_size[0], conv.dilation[0]
    return (conv.stride == (1,) and conv.groups == 1 and conv.bias is not None
            and isinstance(conv.padding, tuple) and conv.padding[0] == d * (k // 2)
            and k % 2 == 1 and conv.padding_mode == "zeros")


def _gemm_conv1d(self: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """Conv1d over (N, Cin, T) as one GEMM of all k taps, then the taps' shifted sum."""
    k, d = self.kernel_size[0], self.dilation[0]
    out_ch = self.out_channels
    weight, bias = self.weight, self.bias
    assert bias is not None
    if k == 1:
        # (N, Cout, T) = bias + W (Cout, Cin) @ x (N, Cin, T), one batched GEMM
        return torch.baddbmm(bias[None, :, None].expand(x.shape[0], out_ch, x.shape[-1]),
                             weight[:, :, 0].expand(x.shape[0], out_ch, -1), x)
    # all taps in one GEMM: rows j*Cout .. (j+1)*Cout hold tap j
    taps = torch.matmul(weight.permute(2, 0, 1).reshape(k * out_ch, -1), x)
    taps = taps.view(x.shape[0], k, out_ch, x.shape[-1])
    c = k // 2
    y = taps[:, c] + bias[:, None]
    length = x.shape[-1]
    for j in range(k):
        s = (j - c) * d  # output t reads input t + s through tap j
        if s < 0 and -s < length:
            y[..., -s:] += taps[:, j, :, :length + s]
        elif 0 < s < length:
            y[..., :length - s] += taps[:, j, :, s:]
    return y


def _gemm_friendly_transpose(conv: nn.ConvTranspose2d) -> bool:
    """What HDecLayer's frequency side builds: kernel (K, 1), stride (s, 1), K a multiple of s,
    no padding (the layer trims afterwards), no groups or dilation. (The time side's
    ConvTranspose1d is already as fast in torch: 14 ms either way.)"""
    k, s = conv.kernel_size[0], conv.stride[0]
    return (conv.kernel_size[1] == conv.stride[1] == 1 and k % s == 0 and conv.groups == 1
            and conv.bias is not None
            and all(p == 0 for p in conv.padding) and all(d == 1 for d in conv.dilation)
            and all(p == 0 for p in conv.output_padding))


def _gemm_conv_transpose(self: nn.ConvTranspose2d, x: torch.Tensor,
                         output_size: list[int] | None = None) -> torch.Tensor:
    """Transposed conv along dim 2 as one GEMM of all taps, then an overlap-add of K/s parts.

    Measured on the first decoder layer's (1, 48, 512, 336) -> (1, 24, 2052, 336): 68 ms for
    torch's (which copies its whole output once more), 42 ms here.
    """
    assert output_size is None and self.bias is not None
    k, s = self.kernel_size[0], self.stride[0]
    parts = k // s
    batch, _, length, width = x.shape
    out_ch = self.out_channels
    # weight (Cin, Cout, K, 1) -> rows ordered (part, phase, Cout), tap = part * s + phase
    w = self.weight.reshape(self.in_channels, out_ch, k).permute(2, 1, 0).reshape(k * out_ch, -1)
    y = torch.matmul(w, x.reshape(batch, self.in_channels, length * width))
    y = y.view(batch, parts, s, out_ch, length, width).permute(0, 1, 3, 4, 2, 5)
    # input step f, tap part*s + phase lands on output (f + part) * s + phase
    out = torch.empty(batch, out_ch, length + parts - 1, s, width, dtype=y.dtype,
                      device=y.device)
    out[:, :, :length] = y[:, 0]
    out[:, :, length:] = 0
    for part in range(1, parts):
        out[:, :, part:part + length] += y[:, part]
    out = out.view(batch, out_ch, (length + parts - 1) * s, width)
    out += self.bias.to(out.dtype)[:, None, None]
    return out


ATTENTION_BLOCK = 512  # query rows per block: (heads, 512, keys) scores stay ~20 MB
# On this AVX-512 BF16 CPU, SDPA's flash kernel runs bf16 no faster than fp32 (94 vs 91 ms for
# 8 heads x 2688 tokens); the same attention as two bf16 GEMMs per block of queries takes 65 ms.


def _plain_mha(mha: nn.MultiheadAttention) -> bool:
    """What demucs builds: packed q/k/v projection with biases, no extra k/v rows, no dropout."""
    return (mha._qkv_same_embed_dim and mha.in_proj_bias is not None and mha.bias_k is None
            and not mha.add_zero_attn and mha.dropout == 0.0)


def _attention_forward(self: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                       value: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                       need_weights: bool = True, attn_mask: torch.Tensor | None = None,
                       average_attn_weights: bool = True, is_causal: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """bf16 (under autocast or not) and no masks: blocked attention; otherwise torch's own."""
    bf16 = query.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled(query.device.type)
        and torch.get_autocast_dtype(query.device.type) == torch.bfloat16)
    if not bf16 or key_padding_mask is not None or attn_mask is not None or is_causal:
        return nn.MultiheadAttention.forward(
            self, query, key, value, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
    if not self.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    e, h = self.embed_dim, self.num_heads
    w, b = self.in_proj_weight, self.in_proj_bias
    assert b is not None
    q = _heads(nn.functional.linear(query, w[:e], b[:e]), h)
    if key is value:  # cross-attention passes the same tensor twice: one projection
        kv = nn.functional.linear(key, w[e:], b[e:])
        k, v = _heads(kv[..., :e], h), _heads(kv[..., e:], h)
    else:
        k = _heads(nn.functional.linear(key, w[e:2 * e], b[e:2 * e]), h)
        v = _heads(nn.functional.linear(value, w[2 * e:], b[2 * e:]), h)
    out = _attention(q, k, v)  # (B, heads, Lq, head_dim)
    out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], e)
    out = self.out_proj(out)
    if not self.batch_first:
        out = out.transpose(0, 1)
    return out, None


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, E) -> (B, heads, L, E / heads)"""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, one block of queries at a time, in q's dtype.

    Autocast is off inside: it would run softmax in fp32, a third slower here, while the
    CPU softmax kernel already accumulates bf16 input in fp32.
    """
    dtype = q.dtype
    batch, heads, length, dim = q.shape
    with torch.autocast(q.device.type, enabled=False):
        # (B*heads, L, dim), and k^T as (B*heads, dim, L), contiguous once: bmm would copy a
        # strided operand again for every block
        q = (q * dim ** -0.5).reshape(batch * heads, length, dim)
        kt = k.to(dtype).reshape(batch * heads, -1, dim).transpose(1, 2).contiguous()
        v = v.to(dtype).reshape(batch * heads, -1, dim)
        out = torch.empty_like(q)
        for i in range(0, length, ATTENTION_BLOCK):
            scores = torch.bmm(q[:, i:i + ATTENTION_BLOCK], kt)
            torch.bmm(torch.softmax(scores, -1), v, out=out[:, i:i + ATTENTION_BLOCK])
    return out.view(batch, heads, length, dim)
