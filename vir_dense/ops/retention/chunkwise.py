"""Chunkwise retention: all chunks of whole grid rows at once, in a fixed number of large ops.

The sequence is laid out on its (extended) grid (decay.py) and cut into G chunks of R whole rows
(`rows_per_chunk`), so every mask stays separable at chunk borders. For a query at row r of
chunk g, column x:
- inside its chunk: one batched masked matmul over all chunks, (Q K^T ⊙ D_chunk) V;
- from the chunks above: gamma^(r+1) q . sum_x' Dx(x, x') T_g[x'], with the per-column states
  T_g = sum_(g' < g) gamma^(R (g-g'-1)) S_g' and S_g' = sum_r' gamma^(R-1-r') k^T v (one matmul
  for all chunks). Both sums (down the chunks, across the columns) are `decay_sum`s: Toeplitz
  matmuls, blocked for long axes.
- bidirectional masks add the chunks below, mirrored (gamma^(R-r), S with gamma^r').
No loop depends on the image size: the ops per call are constant (log-growing for long axes).

Transient memory per call (`transient_elements`, measured by tools/measure_retention_memory.py
and in docs/benchmarks.md), in elements of the compute dtype, for B batch, H heads, G chunks of
R rows and C columns (N = G R C grid cells), d head dim, s = 1 (causal) or 2 (bidirectional):
    B H N (4 d + max(R C, 3 s d^2 / R))
at most: q, k, v and the output on the padded grid; then either the chunk scores, or the column
states (at most three state-sized tensors alive at once). Both terms are linear in N; 1024-token
chunks balance them on the grids of dense prediction. Measured at 2048² (ViR-S, 6 heads, one
call): 1,171 MiB live (formula 1,326) for bidirectional_2d, 646 MiB (714) for causal_2d.

Training saves only q, k, v: the backward pass is three more chunkwise retentions (the gradient
of (Q K^T ⊙ D) V is itself retention with D or D^T; D^T is D on the grid flipped in both axes),
so no N-sized intermediate is kept between forward and backward.

`chunk_step` streams one chunk of a causal mask through a whole model (one state per layer).
"""
import torch
import torch.nn.functional as F

from .decay import (DEFAULT_CHUNK, TokenLayout, compute_dtype, decay_powers, from_grid,
                    make_layout, mask_spec, to_grid)
from .decay_sum import DecaySum, toeplitz
from .parallel import parallel_decay_mask


def rows_per_chunk(chunk_size, cols):
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive number of tokens, got {chunk_size}')
    return max(1, chunk_size // cols)


def balanced_chunks(rows, chunk_rows):
    """(chunks, rows per chunk): as many chunks as `chunk_rows` asks for, of balanced size
    (less padding)."""
    chunks = -(-rows // min(max(chunk_rows, 1), rows))
    return chunks, -(-rows // chunks)


class ChunkPlan:
    """The constants of one chunked geometry: masks, powers and decay sums (cached)."""

    def __init__(self, gamma, rows, cols, chunk_rows, causal, dtype, stream=False):
        self.chunks, self.chunk_rows = balanced_chunks(rows, chunk_rows)
        layout = TokenLayout(self.chunk_rows, cols)
        self.intra_mask = parallel_decay_mask(gamma, layout, causal, dtype)[None, :, None]
        if self.chunks == 1 and not stream:
            return
        # Key row r weighs gamma^(R-1-r) for the chunks below (its distance to the chunk's
        # last row), gamma^r for the chunks above; a query row reads gamma^(r+1) from above,
        # gamma^(R-r) from below.
        powers = decay_powers(gamma, self.chunk_rows + 1, dtype)  # gamma^0 .. gamma^R
        key_weights = [powers[:, :-1].flip(-1)] + ([] if causal else [powers[:, :-1]])
        self.key_weights = torch.stack(key_weights, 1)[None, :, :, None, None, None]
        self.query_weights = [powers[:, 1:][None, :, None, None, :, None],
                              powers[:, 1:].flip(-1)[None, :, None, None, :, None]]
        chunk_gamma = gamma.double() ** self.chunk_rows
        self.chunk_decay = chunk_gamma.to(dtype)[None, :, None, None, None]
        kinds = ['causal_strict'] + ([] if causal else ['anticausal_strict'])
        self.carry = torch.stack([toeplitz(chunk_gamma, self.chunks, kind, dtype)
                                  for kind in kinds], 1)[None]  # (1, H, sides, G, G)
        self.mix_columns = DecaySum(gamma, cols, 'causal' if causal else 'symmetric', dtype)


def transient_elements(batch, heads, rows, cols, dim, chunk_rows, causal):
    """The docstring's transient-memory formula, for a (rows, cols) grid."""
    chunks, chunk_rows = balanced_chunks(rows, chunk_rows)
    cells = chunks * chunk_rows * cols
    states = 3 * (1 if causal else 2) * dim * dim / chunk_rows if chunks > 1 else 0
    return int(batch * heads * cells * (4 * dim + max(chunk_rows * cols, states)))


_PLANS = {}


def chunk_plan(gamma, rows, cols, chunk_rows, causal, dtype, stream=False):
    if torch.compiler.is_compiling():  # traced into the graph instead
        return ChunkPlan(gamma, rows, cols, chunk_rows, causal, dtype, stream)
    key = (tuple(gamma.tolist()), rows, cols, chunk_rows, causal, dtype, gamma.device, stream)
    if key not in _PLANS:
        if len(_PLANS) >= 16:
            _PLANS.clear()
        with torch.no_grad():
            _PLANS[key] = ChunkPlan(gamma, rows, cols, chunk_rows, causal, dtype, stream)
    return _PLANS[key]


def _grid_chunkwise(q, k, v, gamma, causal, chunk_rows):
    """Retention of (B, H, Y, C, d) grids in the compute dtype (no autograd inside)."""
    batch, heads, rows, cols, dim = q.shape
    plan = chunk_plan(gamma, rows, cols, chunk_rows, causal, q.dtype)
    chunks, chunk_rows = plan.chunks, plan.chunk_rows
    pad = chunks * chunk_rows - rows  # zero rows at the bottom: no keys, outputs cut off
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
    flat = [t.reshape(batch, heads, chunks, chunk_rows * cols, dim) for t in (q, k, v)]
    scores = (flat[0] @ flat[1].transpose(-1, -2)).mul_(plan.intra_mask)
    out = (scores @ flat[2]).view(batch, heads, chunks, chunk_rows, cols, dim)
    del scores
    if chunks > 1:
        shape = (batch, heads, chunks, chunk_rows, cols, dim)
        out.add_(_from_other_chunks(*(t.view(shape) for t in flat), plan))
    out = out.view(batch, heads, chunks * chunk_rows, cols, dim)
    return out[:, :, :rows] if pad else out


def _from_other_chunks(q, k, v, plan):
    """What each query reads from the chunks above (and below): (B, H, G, R, C, d)."""
    batch, heads, chunks, rows, cols, dim = q.shape
    # Per chunk and column, sum_r w_r k^T v, one per side: (B, H, sides, G, C, d, d).
    keys = k.permute(0, 1, 2, 4, 5, 3)[:, :, None]  # (B, H, 1, G, C, d, R)
    sums = (keys * plan.key_weights) @ v.permute(0, 1, 2, 4, 3, 5)[:, :, None]
    sides = sums.shape[2]
    # States entering chunk g: decayed sums of the chunks strictly above (below) it...
    states = plan.carry @ sums.view(batch, heads, sides, chunks, -1)
    del sums
    # ... mixed across the columns by the column mask.
    mixed = plan.mix_columns(states.view(batch, heads, sides * chunks, cols, dim * dim))
    del states
    mixed = mixed.view(batch, heads, sides, chunks, cols, dim, dim)
    queries = q.permute(0, 1, 2, 4, 3, 5)  # (B, H, G, C, R, d)
    read = (queries * plan.query_weights[0]) @ mixed[:, :, 0]
    if sides == 2:
        read.add_((queries * plan.query_weights[1]) @ mixed[:, :, 1])
    return read.permute(0, 1, 2, 4, 3, 5)


def _flip(t):
    return t.flip(2, 3)


class _ChunkwiseRetention(torch.autograd.Function):
    """Chunkwise retention of grids that recomputes in backward instead of saving scores."""

    @staticmethod
    def forward(ctx, q, k, v, gamma, causal, chunk_rows):
        ctx.save_for_backward(q, k, v)
        ctx.gamma, ctx.causal, ctx.chunk_rows = gamma, causal, chunk_rows
        return _grid_chunkwise(q, k, v, gamma, causal, chunk_rows)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        gamma, causal, chunk_rows = ctx.gamma, ctx.causal, ctx.chunk_rows
        grad_out = grad_out.to(q.dtype)

        def transposed(a, b, c):  # retention under D^T: D on the grid flipped in both axes
            if not causal:
                return _grid_chunkwise(a, b, c, gamma, causal, chunk_rows)
            return _flip(_grid_chunkwise(_flip(a), _flip(b), _flip(c), gamma, causal,
                                         chunk_rows))
        grad_q = _grid_chunkwise(grad_out, v, k, gamma, causal, chunk_rows)
        grad_k = transposed(v, grad_out, q)
        grad_v = transposed(k, q, grad_out)
        return grad_q, grad_k, grad_v, None, None, None


def grid_retention_chunkwise(q, k, v, gamma, causal, chunk_rows):
    """Chunkwise retention of (B, H, Y, C, d) grids; the result has q's dtype.

    Computes in at least float32 with autocast off: bf16/fp16 sums over thousands of tokens
    lose the small terms (float32 and float64 inputs give exactly what they did before).
    """
    dtype = compute_dtype(q.dtype)
    gamma = gamma.to(device=q.device, dtype=torch.float64)
    with torch.autocast(q.device.type, enabled=False):
        out = _ChunkwiseRetention.apply(q.to(dtype), k.to(dtype), v.to(dtype), gamma, causal,
                                        chunk_rows)
    return out.to(q.dtype)


def retention_chunkwise(q, k, v, gamma, mask='causal_1d', grid=None, cls_token=False,
                        chunk_size=DEFAULT_CHUNK):
    mask = mask_spec(mask)
    causal = mask.causal
    layout = make_layout(mask, q.shape[-2], grid, cls_token)
    grids = (to_grid(t, layout) for t in (q, k, v))
    out = grid_retention_chunkwise(*grids, gamma, causal,
                                   rows_per_chunk(chunk_size, layout.cols))
    return from_grid(out, layout)


def chunk_step(q, k, v, columns, gamma, causal=True, update_state=True):
    """One chunk of R full rows of a causal stream: q, k, v (B, H, R, C, d); columns
    (B, H, C, d, d) float32+ column states of the rows above, or None at the start.

    Returns the chunk's output (compute dtype) and the column states after it (None if not
    `update_state`, e.g. for the last chunk). A fixed number of ops per chunk.
    """
    if not causal:
        raise ValueError('only causal masks stream chunk by chunk; a bidirectional mask needs '
                         'the whole sequence (use retention(..., mode="chunkwise"))')
    batch, heads, rows, cols, dim = q.shape
    dtype = compute_dtype(q.dtype)
    gamma = gamma.to(device=q.device, dtype=torch.float64)
    plan = chunk_plan(gamma, rows, cols, rows, True, dtype, stream=True)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (t.to(dtype) for t in (q, k, v))
        out = _grid_chunkwise(q, k, v, gamma, True, rows)
        if columns is not None:
            mixed = plan.mix_columns(columns.reshape(batch, heads, 1, cols, dim * dim))
            queries = q.permute(0, 1, 3, 2, 4) * plan.query_weights[0][:, :, 0]
            read = queries @ mixed.view(batch, heads, cols, dim, dim)
            out = out + read.permute(0, 1, 3, 2, 4)
        if not update_state:
            return out, None
        keys = k.permute(0, 1, 3, 4, 2) * plan.key_weights[:, :, 0, 0]  # (B, H, C, d, R)
        sums = keys @ v.permute(0, 1, 3, 2, 4)
        if columns is None:
            return out, sums
        return out, columns * plan.chunk_decay + sums
