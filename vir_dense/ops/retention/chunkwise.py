"""Chunkwise retention: parallel inside a chunk of whole grid rows, recurrent across chunks.

A chunk is `rows_per_chunk(chunk_size, cols)` complete rows (one row at least), so the 2D
masks stay separable at chunk borders. The state is one d x d matrix per column,
C_x = sum over rows above of gamma^(distance to the chunk) k^T v; a query at row r of the chunk
reads gamma^(r+1) q . (Dx @ C) where Dx is the column mask. Memory is O(chunk^2 + cols d^2),
linear in the sequence length. Bidirectional masks add a bottom-up sweep of the same step on
the flipped grid with the same chunk borders, without the intra-chunk part.

For causal masks `chunk_step` streams chunks through a whole model (one state per layer).
"""
import torch

from .decay import (TokenLayout, compute_dtype, decay_matrix, decay_powers, from_grid,
                    make_layout, parse_mask, to_grid)
from .parallel import parallel_decay_mask


def rows_per_chunk(chunk_size, cols):
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive number of tokens, got {chunk_size}')
    return max(1, chunk_size // cols)


def chunk_bounds(rows, chunk_rows):
    """Row borders [0, r1, ..., rows]; the last chunk may be shorter."""
    return list(range(0, rows, chunk_rows)) + [rows]


def chunk_step(q, k, v, columns, gamma, causal, intra=True):
    """One chunk of R full rows: q, k, v (B, H, R, C, d); columns (B, H, C, d, d) or None.

    Returns the chunk's output (intra-chunk part only if `intra`) plus the part read from the
    rows above, and the column states after the chunk.
    """
    batch, heads, rows, cols, dim = q.shape
    dtype = compute_dtype(q.dtype)
    gamma = gamma.to(q.device)
    out = None
    if intra:
        decay = parallel_decay_mask(gamma, TokenLayout(rows, cols), causal, dtype)
        flat = [t.reshape(batch, heads, rows * cols, dim) for t in (q, k, v)]
        scores = (flat[0] @ flat[1].transpose(-1, -2)) * decay
        out = (scores.to(v.dtype) @ flat[2]).reshape(q.shape).to(dtype)
    if columns is not None:  # the rows above this chunk
        mixed = torch.einsum('hxz,bhzde->bhxde', decay_matrix(gamma, cols, causal, dtype), columns)
        row_decay = decay_powers(gamma, rows + 1, dtype)[:, 1:]  # gamma^(r+1)
        cross = torch.einsum('bhrxd,bhxde->bhrxe', q.to(dtype) * row_decay[None, :, :, None, None],
                             mixed)
        out = cross if out is None else out + cross
        columns = columns * decay_powers(gamma, rows + 1, dtype)[None, :, -1, None, None, None]
    else:
        columns = q.new_zeros(batch, heads, cols, dim, dim, dtype=dtype)
    key_decay = decay_powers(gamma, rows, dtype).flip(-1)  # gamma^(R-1-r)
    columns = columns + torch.einsum('bhrxd,bhrxe->bhxde',
                                     k.to(dtype) * key_decay[None, :, :, None, None], v.to(dtype))
    if out is None:
        out = torch.zeros_like(q, dtype=dtype)
    return out, columns


def retention_chunkwise(q, k, v, gamma, mask='causal_1d', grid=None, cls_token=False,
                        chunk_size=256):
    causal, _ = parse_mask(mask)
    layout = make_layout(mask, q.shape[-2], grid, cls_token)
    qg, kg, vg = (to_grid(t, layout) for t in (q, k, v))
    bounds = chunk_bounds(layout.grid_rows, rows_per_chunk(chunk_size, layout.cols))
    spans = list(zip(bounds[:-1], bounds[1:]))

    outs, columns = [], None
    for start, end in spans:  # top-down
        out, columns = chunk_step(qg[:, :, start:end], kg[:, :, start:end], vg[:, :, start:end],
                                  columns, gamma, causal)
        outs.append(out)
    if not causal:  # bottom-up on the flipped grid, same chunk borders, rows below only
        qf, kf, vf = (t.flip(2) for t in (qg, kg, vg))
        rows, columns = layout.grid_rows, None
        for index in reversed(range(len(spans))):
            start, end = rows - spans[index][1], rows - spans[index][0]
            out, columns = chunk_step(qf[:, :, start:end], kf[:, :, start:end],
                                      vf[:, :, start:end], columns, gamma, causal, intra=False)
            outs[index] = outs[index] + out.flip(2)
    return from_grid(torch.cat(outs, dim=2), layout).to(q.dtype)
