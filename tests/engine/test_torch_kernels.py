"""The torch backend's faster layer forms (engine.torch_kernels) and allocator setting."""

from __future__ import annotations

import copy
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from demucs.pretrained import get_model
from torch import nn

from engine import stft, torch_kernels
from engine.core import HTDemucsCore, core_shapes
from engine.torch_kernels import _gemm_conv1d, _gemm_conv_transpose, use_fast_kernels


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize(("cin", "cout", "k", "dilation", "shape"), [
    (48, 6, 3, 1, (64, 48, 336)),
    (48, 6, 3, 2, (64, 48, 336)),
    (6, 96, 1, 1, (64, 6, 336)),
    (96, 12, 3, 2, (1, 96, 5000)),
    (8, 4, 5, 3, (2, 8, 40)),
    (8, 4, 3, 4, (2, 8, 3)),  # shorter than the dilation: only the centre tap sees data
])
def test_gemm_conv1d_equals_conv1d(cin: int, cout: int, k: int, dilation: int,
                                   shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    conv = nn.Conv1d(cin, cout, k, dilation=dilation, padding=dilation * (k // 2))
    x = torch.randn(shape)
    with torch.inference_mode():
        want, got = conv(x), _gemm_conv1d(conv, x)
    assert got.shape == want.shape
    assert _rel(got, want) < 1e-6


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "shape"), [
    (48, 24, 8, 4, (1, 48, 64, 336)),  # HDecLayer's frequency side
    (16, 8, 8, 4, (2, 16, 5, 7)),
    (8, 4, 6, 2, (1, 8, 9, 3)),  # three overlapping parts
    (8, 4, 4, 4, (1, 8, 9, 3)),  # no overlap
])
def test_gemm_conv_transpose_equals_conv_transpose(cin: int, cout: int, k: int, stride: int,
                                                   shape: tuple[int, int, int, int]) -> None:
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(cin, cout, (k, 1), (stride, 1))
    x = torch.randn(shape)
    with torch.inference_mode():
        want, got = conv(x), _gemm_conv_transpose(conv, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want16, got16 = conv(x), _gemm_conv_transpose(conv, x)
    assert got.shape == want.shape
    assert _rel(got, want) < 1e-6
    assert got16.dtype == want16.dtype == torch.bfloat16
    assert _rel(got16, want) < 1e-2


def _core_output(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    spec = torch.from_numpy(stft.to_cac(stft.spec(x.numpy(), core_shapes(model).nfft)))
    with torch.inference_mode():
        out: tuple[torch.Tensor, torch.Tensor] = HTDemucsCore(model).eval()(spec, x)
        return out


def test_fast_kernels_change_forwards_not_parameters_or_results(tiny_repo: Path) -> None:
    model = get_model("htdemucs_6s", repo=tiny_repo).models[0].eval()
    pristine = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changed = use_fast_kernels(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)
             and isinstance(m.__dict__.get("forward"), types.MethodType)]
    assert changed > 0 and convs, "nothing was switched to the GEMM form"
    assert all(c.forward.__func__ is _gemm_conv1d for c in convs)  # type: ignore[attr-defined]
    tconvs = [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert tconvs and all(m.forward.__func__ is _gemm_conv_transpose  # type: ignore[attr-defined]
                          for m in tconvs)
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    torch.manual_seed(1)
    x = torch.randn(1, 2, core_shapes(model).segment_samples)
    for got, want in zip(_core_output(model, x), _core_output(pristine, x), strict=True):
        assert _rel(got, want) < 1e-5


def _mha_pair(batch_first: bool) -> tuple[nn.MultiheadAttention, nn.MultiheadAttention]:
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(64, 4, batch_first=batch_first).eval()
    fast = copy.deepcopy(mha)
    assert use_fast_kernels(fast) == 1
    return mha, fast


@pytest.mark.parametrize("batch_first", [True, False])
def test_bf16_attention_is_blocked_and_close(batch_first: bool,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    mha, fast = _mha_pair(batch_first)
    monkeypatch.setattr(torch_kernels, "ATTENTION_BLOCK", 128)  # 300 queries: 3 blocks
    calls: list[int] = []
    blocked = torch_kernels._attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        calls.append(q.shape[2])
        return blocked(q, k, v)

    monkeypatch.setattr(torch_kernels, "_attention", spy)
    q = torch.randn(2, 300, 64) if batch_first else torch.randn(300, 2, 64)
    kv = torch.randn(2, 170, 64) if batch_first else torch.randn(170, 2, 64)
    with torch.inference_mode():
        exact_self = mha(q, q, q, need_weights=False)[0]
        exact_cross = mha(q, kv, kv, need_weights=False)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got_self = fast(q, q, q, need_weights=False)[0]
            got_cross = fast(q, kv, kv, need_weights=False)[0]
    assert calls == [300, 300], "bf16 attention did not take the blocked path"
    assert got_self.shape == exact_self.shape and got_cross.shape == exact_cross.shape
    assert _rel(got_self, exact_self) < 2e-2
    assert _rel(got_cross, exact_cross) < 2e-2


def test_fp32_and_masked_attention_stay_torchs_own() -> None:
    mha, fast = _mha_pair(batch_first=True)
    q = torch.randn(1, 50, 64)
    mask = torch.zeros(50, 50, dtype=torch.bool)
    mask[:, 40:] = True
    with torch.inference_mode():
        assert torch.equal(fast(q, q, q, need_weights=False)[0],
                           mha(q, q, q, need_weights=False)[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fast(q, q, q, attn_mask=mask, need_weights=False)[0]
            want = mha(q, q, q, attn_mask=mask, need_weights=False)[0]
    assert torch.equal(got, want)


ALLOC_PROBE = """
import ctypes, sys
import numpy as np
from engine.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
a = np.ones(6 * 2**20, np.float32)  # 24 MB: above glibc's default mmap threshold
mapped = libc.mallinfo2().hblkhd // 2**20
del a  # freed: a tuned heap keeps it for the next tensor instead of trimming it
print(mapped, libc.mallinfo2().arena // 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_large_tensors_stay_on_the_heap_for_reuse_once_tuned() -> None:
    def mapped_and_kept_mb(mode: str) -> tuple[int, int]:
        run = subprocess.run([sys.executable, "-c", ALLOC_PROBE, mode], capture_output=True,
                             text=True, check=True)
        mapped, heap = run.stdout.split()
        return int(mapped), int(heap)

    mapped, heap = mapped_and_kept_mb("default")
    assert mapped >= 24 and heap < 24  # glibc's default: a fresh mmap, unmapped on free
    mapped, heap = mapped_and_kept_mb("tuned")
    assert mapped < 24 and heap >= 24


def test_torch_backend_installs_the_fast_forms(tiny_repo: Path) -> None:
    from engine.backends import TorchBackend

    model = get_model("htdemucs", repo=tiny_repo).models[0]
    TorchBackend(model)
    patched = [m for m in model.modules() if "forward" in m.__dict__]
    assert any(isinstance(m, nn.Conv1d) for m in patched)
    assert any(isinstance(m, nn.MultiheadAttention) for m in patched)
