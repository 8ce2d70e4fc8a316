"""The Triton kernels of :mod:`reverso.nn.fused_steer` (imported on first use: Triton is only
needed, and only imported, where a fused layer meets a CUDA tensor)."""

import triton
import triton.language as tl


@triton.jit
def _turned_responses(
    x_ptr,
    table_ptr,
    base,
    yo,
    xo,
    pm,
    h,
    w,
    stride,
    padding,
    S: tl.constexpr,
    MP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``(BLOCK, MP)``: ``sum_tap x[tap] table[tap]`` at output pixels ``(yo, xo)`` of the
    channel that starts at ``base``: the frame responses for the taps, ``A_k z`` for the
    turned taps of ``A_k``."""
    cols = tl.arange(0, MP)
    z = tl.zeros((BLOCK, MP), tl.float32)
    rows0, cols0 = yo * stride - padding, xo * stride - padding
    for tap in tl.static_range(S * S):
        yi, xi = rows0 + tap // S, cols0 + tap % S
        ok = pm & (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
        v = tl.load(x_ptr + base + yi * w + xi, mask=ok, other=0.0).to(tl.float32)
        z += v[:, None] * tl.load(table_ptr + tap * MP + cols)[None, :]
    return z


@triton.jit
def _power(base, e, K: tl.constexpr):
    """``(BLOCK, MP)``: ``base[p] ** e[a]`` for exponents up to K (1 where e <= 0)."""
    out = tl.full((base.shape[0], e.shape[0]), 1.0, tl.float32)
    for j in tl.static_range(K):
        out = out * tl.where((j < e)[None, :], base[:, None], 1.0)
    return out


@triton.jit
def _scalar_power(base, k: tl.constexpr):
    out = tl.full(base.shape, 1.0, tl.float32)
    for _ in tl.static_range(k):
        out = out * base
    return out


@triton.jit
def _gate(c, s, rows, k: tl.constexpr, K: tl.constexpr):
    """``(BLOCK, MP)``: ``c^(n-k) s^k`` for each row of order n (0 where k > n)."""
    e = rows - k
    gate = _power(c, e, K) * _scalar_power(s, k)[:, None]
    return tl.where((e >= 0)[None, :], gate, 0.0)


@triton.jit
def _gate_slope(c, s, rows, k: tl.constexpr, K: tl.constexpr):
    """``(BLOCK, MP)``: d/dtheta of the gate, ``-(n-k) c^(n-k-1) s^(k+1) + k c^(n-k+1) s^(k-1)``."""
    e = rows - k
    slope = -e.to(tl.float32)[None, :] * _power(c, e - 1, K) * _scalar_power(s, k + 1)[:, None]
    if k > 0:
        slope += k * _power(c, e + 1, K) * _scalar_power(s, k - 1)[:, None]
    return tl.where((e >= 0)[None, :], slope, 0.0)


@triton.jit
def _column(a_ptr, k: tl.constexpr, b: tl.constexpr, MP: tl.constexpr):
    """``(MP,)``: column b of ``A_k``."""
    return tl.load(a_ptr + k * MP * MP + tl.arange(0, MP) * MP + b)


@triton.jit
def _angle(theta_ptr, bc, c_count, p, pm, n_pix, PER_CHANNEL: tl.constexpr):
    if PER_CHANNEL:  # noqa: SIM108 (a statement: resolved when the kernel is compiled)
        group = bc
    else:
        group = bc // c_count
    return tl.load(theta_ptr + group * n_pix + p, mask=pm, other=0.0).to(tl.float32)


@triton.jit
def _forward_kernel(
    x_ptr,
    theta_ptr,
    turned_ptr,
    rows_ptr,
    out_ptr,
    c_count,
    h,
    w,
    ho,
    wo,
    stride,
    padding,
    PER_CHANNEL: tl.constexpr,
    S: tl.constexpr,
    M: tl.constexpr,
    MP: tl.constexpr,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``out = sum_k gate_k * (A_k z)``, each ``A_k z`` from the input and the turned taps."""
    bc = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pm = p < ho * wo
    yo, xo = p // wo, p % wo
    cols = tl.arange(0, MP)
    theta = _angle(theta_ptr, bc, c_count, p, pm, ho * wo, PER_CHANNEL)
    c, s = tl.cos(theta), tl.sin(theta)
    rows = tl.load(rows_ptr + cols)
    out = tl.zeros((BLOCK, MP), tl.float32)
    for k in tl.static_range(K):
        az = _turned_responses(
            x_ptr,
            turned_ptr + k * S * S * MP,
            bc * h * w,
            yo,
            xo,
            pm,
            h,
            w,
            stride,
            padding,
            S,
            MP,
            BLOCK,
        )
        out += _gate(c, s, rows, k, K) * az
    where = out_ptr + (bc * M + cols[None, :]) * (ho * wo) + p[:, None]
    mask = pm[:, None] & (cols < M)[None, :]
    tl.store(where, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    x_ptr,
    theta_ptr,
    grad_ptr,
    a_ptr,
    turned_ptr,
    rows_ptr,
    grad_z_ptr,
    grad_theta_ptr,
    c_count,
    h,
    w,
    ho,
    wo,
    stride,
    padding,
    PER_CHANNEL: tl.constexpr,
    S: tl.constexpr,
    M: tl.constexpr,
    MP: tl.constexpr,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``grad_z[b] = sum_k <gate_k g, A_k[:, b]>`` and the angle's gradient
    ``sum_k <gate_k' g, A_k z>`` (per channel)."""
    bc = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pm = p < ho * wo
    yo, xo = p // wo, p % wo
    cols = tl.arange(0, MP)
    mask = pm[:, None] & (cols < M)[None, :]
    where = (bc * M + cols[None, :]) * (ho * wo) + p[:, None]
    g = tl.load(grad_ptr + where, mask=mask, other=0.0).to(tl.float32)
    theta = _angle(theta_ptr, bc, c_count, p, pm, ho * wo, PER_CHANNEL)
    c, s = tl.cos(theta), tl.sin(theta)
    rows = tl.load(rows_ptr + cols)
    grad_z = tl.zeros((BLOCK, MP), tl.float32)
    grad_theta = tl.zeros((BLOCK,), tl.float32)
    for k in tl.static_range(K):
        az = _turned_responses(
            x_ptr,
            turned_ptr + k * S * S * MP,
            bc * h * w,
            yo,
            xo,
            pm,
            h,
            w,
            stride,
            padding,
            S,
            MP,
            BLOCK,
        )
        grad_theta += tl.sum(_gate_slope(c, s, rows, k, K) * g * az, axis=1)
        gated = _gate(c, s, rows, k, K) * g
        for b in tl.static_range(M):
            into_b = tl.sum(gated * _column(a_ptr, k, b, MP)[None, :], axis=1)
            grad_z += tl.where(cols[None, :] == b, into_b[:, None], 0.0)
    tl.store(grad_z_ptr + where, grad_z, mask=mask)
    tl.store(grad_theta_ptr + bc * ho * wo + p, grad_theta, mask=pm)


@triton.jit
def _transpose_kernel(
    grad_z_ptr,
    taps_ptr,
    grad_x_ptr,
    h,
    w,
    ho,
    wo,
    stride,
    padding,
    S: tl.constexpr,
    M: tl.constexpr,
    MP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The frame conv's transpose: ``grad_x[q] = sum_taps sum_m phi_m[tap] grad_z[m, q - tap]``."""
    bc = tl.program_id(0).to(tl.int64)
    q = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    qm = q < h * w
    yi, xi = q // w, q % w
    acc = tl.zeros((BLOCK,), tl.float32)
    for tap in tl.static_range(S * S):
        ny = yi + padding - tap // S
        nx = xi + padding - tap % S
        ok = qm & (ny >= 0) & (nx >= 0) & (ny % stride == 0) & (nx % stride == 0)
        yo, xo = ny // stride, nx // stride
        ok = ok & (yo < ho) & (xo < wo)
        for m in tl.static_range(M):  # 1-D loads: a (BLOCK, MP) tile spills at 5x5
            where = (bc * M + m) * (ho * wo) + yo * wo + xo
            gz = tl.load(grad_z_ptr + where, mask=ok, other=0.0)
            acc += gz * tl.load(taps_ptr + tap * MP + m)
    tl.store(grad_x_ptr + bc * h * w + q, acc.to(grad_x_ptr.dtype.element_ty), mask=qm)
