"""Chunkwise retention in tiles: exact, with memory and FLOPs per token that do not grow.

The (extended) grid (decay.py) is cut into bands of R rows and each band into tiles of R x T
cells (`tile_shape`: about `chunk_size` cells, 16 x 16 by default; 1D masks use chunks of R
tokens in one column). Tokens are gathered into tile-major order once per call (one index per
layout; the class token keeps its cell, empty and padding cells read a zero token). A query in
tile (band b, tile column t) at in-tile row r, column c reads three disjoint sets of keys:
- its own tile: one batched masked matmul over all tiles, (Q K^T ⊙ D_tile) V;
- the other tiles of its band (row family): the x-factor of D is rank 1 across tiles, so each
  tile row keeps one state sum_c' gamma^(T-1-c') k^T v (mirrored for tiles on the right);
  states are carried along the band (a strict decay sum over tile columns, gamma^T per tile),
  mixed over the band's rows by the R x R row decay and read with gamma^(c+1);
- the other bands (column family): the y-factor is rank 1 across bands, so each column of a
  band keeps one state sum_r' gamma^(R-1-r') k^T v (mirrored for bands below); states are
  carried down the bands (strict decay sum, gamma^R per band), mixed across the full width by
  the column decay (`DecaySum`, blocked for wide grids) and read with gamma^(r+1).
Every sum is a `DecaySum` or a batched matmul: the ops per call do not depend on the image.

Cost per token and head (d head dim, L = R T, s = 1 causal / 2 bidirectional): intra-tile
4 L d FLOPs; each family ~8 d^2 per side plus its carry and mix; ~190k FLOPs at d = 64 on every
grid from 512² to 4096² (tools/analysis_tools/benchmark_backbone.py prints them).

Transient memory per call (`transient_elements`, checked against
tools/analysis_tools/measure_retention_memory.py), in elements of the compute dtype, for B
batch, H heads, N_p padded cells, d head dim, split into `head_groups` slices for the state path
and `query_groups` slices of tiles for the intra scores:
    B H N_p (6 d + max(L / query_groups, 2 d^2 / (min(R, T) head_groups)))
that is: q, k, v in tile order, the output and two temporaries of q's size; then either the
intra-tile scores or two copies of one side's states (sides run one after the other).
`memory_budget` (bytes) picks the fewest slices that fit.

Training saves only q, k, v: the backward pass is three more chunkwise retentions (the gradient
of (Q K^T ⊙ D) V is retention with D or D^T; D^T is D on the grid flipped in both axes, which
in tile order is the reversed cell order), so no N-sized intermediate is kept.

`chunk_step` streams whole grid rows of a causal mask through a model (one state per layer).
"""
import math

import torch
import torch.nn.functional as F

from .decay import DEFAULT_CHUNK, TokenLayout, compute_dtype, decay_matrix, decay_powers, \
    make_layout, mask_spec
from .decay_sum import DecaySum


def rows_per_chunk(chunk_size, cols):
    """Whole grid rows per streamed piece of about chunk_size tokens."""
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive number of tokens, got {chunk_size}')
    return max(1, chunk_size // cols)


def balanced_chunks(length, chunk):
    """(pieces, length of each): as many pieces as `chunk` asks for, of balanced size."""
    pieces = -(-length // min(max(chunk, 1), length))
    return pieces, -(-length // pieces)


def tile_shape(chunk_size, rows, cols):
    """(bands, R, tile columns, T) for tiles of about chunk_size cells on a rows x cols grid:
    square where the grid is wide enough, balanced so padding stays below one row/column."""
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive number of tokens, got {chunk_size}')
    side = min(cols, max(1, math.isqrt(chunk_size)))
    tile_cols, width = balanced_chunks(cols, side)
    bands, height = balanced_chunks(rows, max(1, chunk_size // side))
    return bands, height, tile_cols, width


class _Family:
    """Constants of one state family, per side: key weights, strict carry, query weights."""

    def __init__(self, gamma, length, steps, causal, dtype):
        shape = (1, gamma.shape[0], 1, 1, 1, length, 1)  # over dim 5 of (B, H, Gy, Gx, ., ., d)
        powers = decay_powers(gamma, length + 1, dtype)  # gamma^0 .. gamma^length
        # Before (above / left): keys weigh gamma^(length-1-i), queries read gamma^(i+1);
        # after (below / right): gamma^i and gamma^(length-i).
        keys = [powers[:, :-1].flip(-1)] + ([] if causal else [powers[:, :-1]])
        queries = [powers[:, 1:]] + ([] if causal else [powers[:, 1:].flip(-1)])
        kinds = ['causal_strict'] + ([] if causal else ['anticausal_strict'])
        self.key_weights = [w.view(shape) for w in keys]
        self.query_weights = [w.view(shape) for w in queries]
        step_gamma = gamma.double() ** length
        self.carries = [DecaySum(step_gamma, steps, kind, dtype) for kind in kinds]


class TilePlan:
    """The constants of one tiled geometry: gather indices, masks, weights, decay sums."""

    def __init__(self, gamma, layout, chunk_size, causal, dtype):
        heads = gamma.shape[0]
        rows, cols = layout.grid_rows, layout.cols
        self.bands, self.height, self.tile_cols, self.width = tile_shape(chunk_size, rows, cols)
        bands, height, tile_cols, width = self.bands, self.height, self.tile_cols, self.width
        self.cells = bands * height * tile_cols * width
        self.num_tokens = layout.num_tokens
        self.causal = causal
        self.intra_mask = _tile_mask(gamma, height, width, causal, dtype)[None, :, None]
        # Token index of every cell (num_tokens: the zero token), in both in-tile orders.
        x, y = layout.positions()
        x, y = x.to(gamma.device), y.to(gamma.device)
        band, tile = y // height, x // width
        base = (band * tile_cols + tile) * height * width
        row_major = base + (y % height) * width + x % width
        col_major = base + (x % width) * height + y % height
        token = torch.arange(layout.num_tokens, device=gamma.device)
        self.token_cells = row_major  # where each token's output is, in row-major tiles
        self.rm_tokens = _cell_tokens(row_major, token, self.cells)
        self.cm_tokens = _cell_tokens(col_major, token, self.cells) if bands > 1 else None
        self.col_cells = col_major
        # Column family (other bands): per-column states, carried down, mixed across.
        self.columns = None
        if bands > 1:
            self.columns = _Family(gamma, height, bands, causal, dtype)
            self.mix = (DecaySum(gamma, tile_cols * width, 'causal' if causal else 'symmetric',
                                 dtype) if cols > 1 else None)
        # Row family (other tiles of the band): per-row states, carried along, mixed over rows.
        self.rows = None
        if tile_cols > 1:
            self.rows = _Family(gamma, width, tile_cols, causal, dtype)
            self.row_mix = decay_matrix(gamma, height, causal, dtype)[None, :, None, None]


def _tile_mask(gamma, height, width, causal, dtype):
    """(H, L, L) decay mask inside one R x T tile (row-major cells)."""
    from .parallel import parallel_decay_mask
    return parallel_decay_mask(gamma, TokenLayout(height, width), causal, dtype)


def _cell_tokens(cells, token, num_cells):
    """Inverse of token -> cell: the token of each cell, the zero token where there is none."""
    index = torch.full((num_cells,), token.numel(), dtype=torch.long, device=token.device)
    return index.scatter(0, cells, token)


def transient_elements(batch, heads, rows, cols, dim, chunk_size, causal, head_groups=1,
                       query_groups=1):
    """The docstring's transient-memory formula, for a (rows, cols) extended grid."""
    bands, height, tile_cols, width = tile_shape(chunk_size, rows, cols)
    cells = bands * height * tile_cols * width
    shortest = min(height if bands > 1 else width, width if tile_cols > 1 else height)
    states = 2 * dim * dim / shortest / head_groups if bands > 1 or tile_cols > 1 else 0
    scores = height * width / query_groups
    return int(batch * heads * cells * (6 * dim + max(scores, states)))


def slices_for_budget(budget_bytes, batch, heads, rows, cols, dim, chunk_size, causal,
                      element_bytes=4):
    """(head_groups, query_groups): the fewest slices whose transient memory fits the budget."""
    tiles = math.prod(tile_shape(chunk_size, rows, cols)[::2])
    options = sorted(((h, q) for h in range(1, heads + 1) for q in range(1, tiles + 1)
                      if heads % h == 0 and q <= 64), key=lambda hq: (hq[0] * hq[1], hq))
    for head_groups, query_groups in options:
        need = element_bytes * transient_elements(batch, heads, rows, cols, dim, chunk_size,
                                                  causal, head_groups, query_groups)
        if need <= budget_bytes:
            return head_groups, query_groups
    least = element_bytes * transient_elements(batch, heads, rows, cols, dim, chunk_size, causal,
                                               heads, min(tiles, 64))
    raise ValueError(f'memory_budget={budget_bytes / 2**20:.1f} MiB is below what retention '
                     f'needs on this grid ({least / 2**20:.1f} MiB one head at a time); raise '
                     'it or pass memory_budget=None')


_PLANS = {}


def tile_plan(gamma, layout, chunk_size, causal, dtype):
    if torch.compiler.is_compiling():  # traced into the graph instead
        return TilePlan(gamma, layout, chunk_size, causal, dtype)
    key = (tuple(gamma.tolist()), layout, chunk_size, causal, dtype, gamma.device)
    if key not in _PLANS:
        if len(_PLANS) >= 16:
            _PLANS.clear()
        with torch.no_grad():
            _PLANS[key] = TilePlan(gamma, layout, chunk_size, causal, dtype)
    return _PLANS[key]


def _gather(x, cell_tokens):
    """(B, H, N, d) tokens -> (B, H, cells, d) in tile order, zeros in empty cells."""
    return F.pad(x, (0, 0, 0, 1)).index_select(2, cell_tokens)


def _tiled(q, k, v, plan, head_groups=1, query_groups=1, flip=False):
    """Retention of (B, H, N, d) q, k, v in the compute dtype (no autograd inside).

    flip: under D^T (the grid flipped in both axes: reversed cell order), for the backward.
    """
    batch, heads, _, dim = q.shape
    bands, height, tile_cols, width = plan.bands, plan.height, plan.tile_cols, plan.width
    tiles = (batch, heads, bands, tile_cols)
    out = None
    if plan.columns is not None:  # other bands, in column-major tiles
        cm_tokens = plan.cm_tokens.flip(0) if flip else plan.cm_tokens
        qc, kc, vc = (_gather(t, cm_tokens).view(*tiles, width, height, dim) for t in (q, k, v))
        out = _column_family(qc, kc, vc, plan, head_groups)
        del qc, kc, vc
    rm_tokens = plan.rm_tokens.flip(0) if flip else plan.rm_tokens
    qr, kr, vr = (_gather(t, rm_tokens).view(*tiles, height, width, dim) for t in (q, k, v))
    intra = _intra_tiles(qr, kr, vr, plan, query_groups)
    if out is None:
        out = intra
    else:  # column-major out + row-major intra, into a row-major tensor
        out = intra.add_(out.transpose(4, 5))
    if plan.rows is not None:
        _row_family(qr, kr, vr, out, plan, head_groups)
    del qr, kr, vr
    cells = out.view(batch, heads, plan.cells, dim)
    token_cells = plan.token_cells
    if flip:
        token_cells = plan.cells - 1 - token_cells
    return cells.index_select(2, token_cells)


def _intra_tiles(q, k, v, plan, query_groups):
    """Masked attention inside every tile: (B, H, Gy, Gx, R, T, d)."""
    shape = q.shape
    size = plan.height * plan.width
    q, k, v = (t.view(shape[0], shape[1], -1, size, shape[-1]) for t in (q, k, v))
    if query_groups == 1:
        scores = (q @ k.transpose(-1, -2)).mul_(plan.intra_mask)
        return (scores @ v).view(shape)
    out = torch.empty_like(q)
    step = -(-q.shape[2] // query_groups)
    for lo in range(0, q.shape[2], step):
        part = slice(lo, lo + step)
        scores = (q[:, :, part] @ k[:, :, part].transpose(-1, -2)).mul_(plan.intra_mask)
        out[:, :, part] = scores @ v[:, :, part]
    return out.view(shape)


def _head_slices(heads, head_groups):
    step = heads // head_groups
    return [slice(h, h + step) for h in range(0, heads, step)]


def _column_family(q, k, v, plan, head_groups):
    """What each query reads from the other bands; q, k, v (B, H, Gy, Gx, T, R, d) in
    column-major tiles; returns the same layout."""
    batch, heads, bands, tile_cols, width, height, dim = q.shape
    family, out = plan.columns, torch.zeros_like(q)
    for hs in _head_slices(heads, head_groups):
        h = hs.stop - hs.start
        qs, ks, vs = q[:, hs], k[:, hs], v[:, hs]
        for side in range(len(family.carries)):
            # Per band and column, sum_r w_r k^T v: (B, h, 1, Gy, C * d * d).
            sums = (ks * family.key_weights[side][:, hs]).transpose(-1, -2) @ vs
            sums = sums.view(batch, h, 1, bands, -1)
            states = family.carries[side](sums, hs)  # entering each band from above (below)
            del sums
            states = states.view(batch, h, bands, tile_cols * width, dim * dim)
            if plan.mix is not None:
                states = plan.mix(states, hs)  # mixed across the columns by the column decay
            read = qs @ states.view(batch, h, bands, tile_cols, width, dim, dim)
            del states
            out[:, hs].addcmul_(read, family.query_weights[side][:, hs])
    return out


def _row_family(q, k, v, out, plan, head_groups):
    """Adds what each query reads from the other tiles of its band to `out`; q, k, v and out
    (B, H, Gy, Gx, R, T, d) in row-major tiles."""
    batch, heads, bands, tile_cols, height, width, dim = q.shape
    family = plan.rows
    for hs in _head_slices(heads, head_groups):
        h = hs.stop - hs.start
        qs, ks, vs = q[:, hs], k[:, hs], v[:, hs]
        for side in range(len(family.carries)):
            # Per tile row, sum_c w_c k^T v: (B, h, Gy, Gx, R * d * d).
            sums = (ks * family.key_weights[side][:, hs]).transpose(-1, -2) @ vs
            states = family.carries[side](sums.view(batch, h, bands, tile_cols, -1), hs)
            del sums
            states = plan.row_mix[:, hs] @ states.view(batch, h, bands, tile_cols, height, -1)
            read = qs @ states.view(batch, h, bands, tile_cols, height, dim, dim)
            del states
            out[:, hs].addcmul_(read, family.query_weights[side][:, hs])


class _ChunkwiseRetention(torch.autograd.Function):
    """Tiled retention that recomputes in backward instead of saving scores or states."""

    @staticmethod
    def forward(ctx, q, k, v, plan, head_groups, query_groups):
        ctx.save_for_backward(q, k, v)
        ctx.plan, ctx.slices = plan, (head_groups, query_groups)
        return _tiled(q, k, v, plan, head_groups, query_groups)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        plan, slices = ctx.plan, ctx.slices
        grad_out = grad_out.to(q.dtype)
        transposed = plan.causal  # a bidirectional D is symmetric: D^T = D
        grad_q = _tiled(grad_out, v, k, plan, *slices)
        grad_k = _tiled(v, grad_out, q, plan, *slices, flip=transposed)
        grad_v = _tiled(k, q, grad_out, plan, *slices, flip=transposed)
        return grad_q, grad_k, grad_v, None, None, None


def retention_chunkwise(q, k, v, gamma, mask='causal_1d', grid=None, cls_token=False,
                        chunk_size=DEFAULT_CHUNK, memory_budget=None):
    """Tiled chunkwise retention of (B, H, N, d) tokens; the result has q's dtype.

    chunk_size: cells per tile (2D: about sqrt(chunk_size) square). memory_budget: bytes the
    operator may hold at once (None: no slicing); heads and tiles are then processed in slices.
    Computes in at least float32 with autocast off: bf16/fp16 sums over thousands of tokens
    lose the small terms (float32 and float64 inputs give exactly what they did before).
    """
    mask = mask_spec(mask)
    layout = make_layout(mask, q.shape[-2], grid, cls_token)
    dtype = compute_dtype(q.dtype)
    gamma = gamma.to(device=q.device, dtype=torch.float64)
    plan = tile_plan(gamma, layout, chunk_size, mask.causal, dtype)
    slices = (1, 1)
    if memory_budget is not None:
        slices = slices_for_budget(memory_budget, q.shape[0], q.shape[1], layout.grid_rows,
                                   layout.cols, q.shape[-1], chunk_size, mask.causal,
                                   torch.finfo(dtype).bits // 8)
    with torch.autocast(q.device.type, enabled=False):
        out = _ChunkwiseRetention.apply(q.to(dtype), k.to(dtype), v.to(dtype), plan, *slices)
    return out.to(q.dtype)


def chunk_step(q, k, v, columns, gamma, causal=True, update_state=True,
               chunk_size=DEFAULT_CHUNK):
    """One piece of R full rows of a causal stream: q, k, v (B, H, R, C, d); columns
    (B, H, C, d, d) float32+ column states of the rows above, or None at the start.

    Returns the piece's output (compute dtype) and the column states after it (None if not
    `update_state`, e.g. for the last piece). A fixed number of ops per piece.
    """
    if not causal:
        raise ValueError('only causal masks stream piece by piece; a bidirectional mask needs '
                         'the whole sequence (use retention(..., mode="chunkwise"))')
    batch, heads, rows, cols, dim = q.shape
    dtype = compute_dtype(q.dtype)
    gamma = gamma.to(device=q.device, dtype=torch.float64)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (t.to(dtype) for t in (q, k, v))
        plan = tile_plan(gamma, TokenLayout(rows, cols), chunk_size, True, dtype)
        out = _tiled(*(t.reshape(batch, heads, rows * cols, dim) for t in (q, k, v)), plan)
        out = out.view(batch, heads, rows, cols, dim)
        stream = stream_plan(gamma, rows, cols, dtype)
        if columns is not None:
            mixed = stream.mix(columns.reshape(batch, heads, 1, cols, dim * dim))
            queries = q.permute(0, 1, 3, 2, 4) * stream.query_weights
            read = queries @ mixed.view(batch, heads, cols, dim, dim)
            out = out + read.permute(0, 1, 3, 2, 4)
        if not update_state:
            return out, None
        keys = k.permute(0, 1, 3, 4, 2) * stream.key_weights  # (B, H, C, d, R)
        sums = keys @ v.permute(0, 1, 3, 2, 4)
        if columns is None:
            return out, sums
        return out, columns * stream.piece_decay + sums


class _StreamPlan:
    """Constants of a streamed piece of R rows: key/query weights, decay, column mix."""

    def __init__(self, gamma, rows, cols, dtype):
        powers = decay_powers(gamma, rows + 1, dtype)
        self.key_weights = powers[:, :-1].flip(-1)[None, :, None, None, :]  # gamma^(R-1-r)
        self.query_weights = powers[:, 1:][None, :, None, :, None]  # gamma^(r+1)
        self.piece_decay = (gamma.double() ** rows).to(dtype)[None, :, None, None, None]
        self.mix = DecaySum(gamma, cols, 'causal', dtype)


def stream_plan(gamma, rows, cols, dtype):
    if torch.compiler.is_compiling():
        return _StreamPlan(gamma, rows, cols, dtype)
    key = ('stream', tuple(gamma.tolist()), rows, cols, dtype, gamma.device)
    if key not in _PLANS:
        with torch.no_grad():
            _PLANS[key] = _StreamPlan(gamma, rows, cols, dtype)
    return _PLANS[key]
