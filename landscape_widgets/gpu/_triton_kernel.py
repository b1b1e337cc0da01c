"""The Triton kernel of :mod:`~landscape_widgets.gpu.triton` (imported only when that rule runs: it imports
Triton).  Left undecorated: ``gpu.triton`` decorates it with ``triton.jit`` or Triton's interpreter."""
import triton.language as tl


def conv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, C: tl.constexpr, H, W, COUT, HO, WO,
                 sxb, sxn, sxc, sxh, sxw, syb, syn, syc, syh, syw, sbb,
                 KH: tl.constexpr, KW: tl.constexpr, STRIDE_H: tl.constexpr, STRIDE_W: tl.constexpr,
                 PAD_H: tl.constexpr, PAD_W: tl.constexpr, DIL_H: tl.constexpr, DIL_W: tl.constexpr,
                 HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, FLAT: tl.constexpr):
    """Program (m, n, p): output pixels m*BLOCK_M.., channels n*BLOCK_N.. of point p.  x: [B, N, C, H, W] and
    y: [B, N, COUT, HO, WO] with any strides (NCHW or channels-last), w: [B, KH, KW, C, COUT] contiguous,
    bias: [B, COUT] (sbb = COUT) or one [COUT] shared (sbb = 0)."""
    pid_m, pid_n, p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok, n_ok = offs_m < M, offs_n < COUT
    ow = offs_m % WO
    oh = (offs_m // WO) % HO
    img = (offs_m // (WO * HO)).to(tl.int64)  # B*N images of a chunk pass 2**31 elements: 64-bit offsets
    x_p = x_ptr + p.to(tl.int64) * sxb
    w_p = w_ptr + p.to(tl.int64) * (KH * KW * C * COUT)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT:  # taps and channel blocks as one loop, which Triton software-pipelines over num_stages
        KCOUNT: tl.constexpr = (C + BLOCK_K - 1) // BLOCK_K
        for ijk in range(KH * KW * KCOUNT):
            c0 = (ijk % KCOUNT) * BLOCK_K
            kh = (ijk // KCOUNT) // KW
            kw = (ijk // KCOUNT) % KW
            ih = oh * STRIDE_H - PAD_H + kh * DIL_H
            iw = ow * STRIDE_W - PAD_W + kw * DIL_W
            ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)  # outside the image: the zero padding
            offs_k = c0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < C
            a = tl.load(x_p + (img * sxn + ih * sxh + iw * sxw)[:, None] + offs_k[None, :] * sxc,
                        mask=ok[:, None] & k_ok[None, :], other=0.0)
            wt = tl.load(w_p + ((kh * KW + kw) * C + offs_k[:, None]) * COUT + offs_n[None, :],
                         mask=k_ok[:, None] & n_ok[None, :], other=0.0)
            acc = tl.dot(a, wt, acc, input_precision=PRECISION)
    else:  # taps unrolled (inductor's UNROLL form)
        for kh in tl.static_range(KH):
            ih = oh * STRIDE_H - PAD_H + kh * DIL_H
            h_ok = m_ok & (ih >= 0) & (ih < H)
            for kw in tl.static_range(KW):
                iw = ow * STRIDE_W - PAD_W + kw * DIL_W
                ok = h_ok & (iw >= 0) & (iw < W)  # outside the image: the zero padding
                rows = img * sxn + ih * sxh + iw * sxw
                for c0 in range(0, C, BLOCK_K):
                    offs_k = c0 + tl.arange(0, BLOCK_K)
                    k_ok = offs_k < C
                    a = tl.load(x_p + rows[:, None] + offs_k[None, :] * sxc, mask=ok[:, None] & k_ok[None, :],
                                other=0.0)
                    wt = tl.load(w_p + ((kh * KW + kw) * C + offs_k[:, None]) * COUT + offs_n[None, :],
                                 mask=k_ok[:, None] & n_ok[None, :], other=0.0)
                    acc = tl.dot(a, wt, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + p * sbb + offs_n, mask=n_ok, other=0.0)[None, :]
    out = p.to(tl.int64) * syb + img * syn + oh * syh + ow * syw
    tl.store(y_ptr + out[:, None] + offs_n[None, :] * syc, acc, mask=m_ok[:, None] & n_ok[None, :])
