"""Causal streaming: a sequence fed through a stack of retention layers piece by piece.

Under a causal mask a token only reads what came before it, so a model can run one piece of
the sequence through *all* its layers before the next piece, keeping one state per layer:
memory then no longer depends on the number of tokens. `stream_pieces` cuts a sequence into
pieces (whole rows of the grid for 'chunkwise', single tokens for 'recurrent');
`retention_stream` is one layer's retention of one piece, with the layer's state in and out
(flash-linear-attention's `initial_state` / final-state habit). The outputs equal
`retention(...)` of the whole sequence.
"""
from dataclasses import dataclass, replace
from typing import Optional

import torch

from .chunkwise import chunk_step, rows_per_chunk
from .decay import (DEFAULT_CHUNK, TokenLayout, compute_dtype, decay_gammas, decay_row_sums,
                    from_grid, make_layout, mask_spec, to_grid)
from .recurrent import RecurrentState, recurrent_step

STREAM_MODES = ('chunkwise', 'recurrent')


@dataclass(frozen=True)
class StreamPiece:
    """A run of consecutive tokens that every layer processes before the next run."""
    start: int                # first token index in the sequence
    layout: TokenLayout       # geometry of this piece (rows of patches, or the class-token row)
    column: Optional[int] = None   # recurrent: the grid column of the piece's single token
    skip_columns: tuple = ()       # recurrent: empty cells to decay through first
    last: bool = False             # no state is needed after the last piece
    row_sums: Optional[torch.Tensor] = None  # (H, num_tokens) divisors when normalizing

    @property
    def num_tokens(self):
        return 1 if self.column is not None else self.layout.num_tokens

    @property
    def stop(self):
        return self.start + self.num_tokens


def stream_pieces(mask, num_tokens, grid=None, cls_token=False, mode='chunkwise',
                  chunk_size=DEFAULT_CHUNK, normalize=False, gamma=None):
    """The pieces of a causal sequence of `num_tokens` (arguments as for `retention`).

    mode: 'chunkwise' (pieces of whole grid rows, about chunk_size tokens; the class token
    rides with the last) or 'recurrent' (one token each). normalize: give each piece the
    divisors of `retention(normalize=True)`, computed once for the per-head decay `gamma` (H,)
    that every layer of the stack shares.
    """
    mask = mask_spec(mask)
    if not mask.causal:
        raise ValueError(f'only causal masks stream; {mask.name!r} needs the whole sequence '
                         '(use retention(..., mode="chunkwise"))')
    if mode not in STREAM_MODES:
        raise ValueError(f'streaming mode must be one of {STREAM_MODES}, got {mode!r}')
    layout = make_layout(mask, num_tokens, grid, cls_token)
    rows, cols = layout.rows, layout.cols
    pieces = []
    if mode == 'chunkwise':
        chunk_rows = rows_per_chunk(chunk_size, cols)
        for start_row in range(0, rows, chunk_rows):
            num_rows = min(chunk_rows, rows - start_row)
            with_cls = cls_token and start_row + num_rows == rows
            pieces.append(StreamPiece(start_row * cols, TokenLayout(num_rows, cols, with_cls)))
    else:
        for index in range(rows * cols):
            pieces.append(StreamPiece(index, TokenLayout(1, cols), column=index % cols))
        if cls_token:  # its row is empty up to the last column
            pieces.append(StreamPiece(rows * cols, TokenLayout(1, cols), column=cols - 1,
                                      skip_columns=tuple(range(cols - 1))))
    pieces[-1] = replace(pieces[-1], last=True)
    if normalize:
        if gamma is None:
            raise ValueError('stream_pieces(normalize=True) needs the layers\' gamma (H,)')
        row_sums = decay_row_sums(gamma, layout, causal=True)
        pieces = [replace(p, row_sums=row_sums[:, p.start:p.stop]) for p in pieces]
    return pieces


def retention_stream(q, k, v, piece, initial_state=None, gamma=None):
    """Causal retention of one piece's (B, H, piece.num_tokens, d) q, k, v (q already scaled)
    given the layer's state after the previous pieces (None before the first).

    Returns (output with q's dtype, final state: pass it with the next piece; None after the
    last piece). States stay in at least float32 (see `compute_dtype`), also under autocast.
    """
    if gamma is None:
        gamma = decay_gammas(q.shape[1], device=q.device)
    if piece.column is not None:  # recurrent: one grid cell, after some empty ones
        state = initial_state
        if state is None:
            state = RecurrentState(q.shape[0], q.shape[1], piece.layout.cols, q.shape[-1],
                                   gamma, compute_dtype(q.dtype), q.device)
        for empty_column in piece.skip_columns:
            recurrent_step(state, empty_column)
        out = recurrent_step(state, piece.column, q[:, :, 0], k[:, :, 0], v[:, :, 0])[:, :, None]
    else:
        grids = [to_grid(t, piece.layout) for t in (q, k, v)]
        out, state = chunk_step(*grids, initial_state, gamma, causal=True,
                                update_state=not piece.last)
        out = from_grid(out, piece.layout)
    if piece.row_sums is not None:
        out = out / piece.row_sums.to(out)[:, :, None]
    return out.to(q.dtype), (None if piece.last else state)
