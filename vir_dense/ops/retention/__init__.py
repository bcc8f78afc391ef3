"""Multi-head retention (ViR / RetNet without softmax, gate or norm), in three forms.

`retention(q, k, v, mask=..., mode=...)` takes (B, H, N, d) tensors (q already scaled) and knows
nothing of images: 2D masks only need the patch grid. Every form equals `retention_naive`.
`stream_pieces` + `retention_stream` run a causal sequence through a stack of layers piece by
piece (streaming.py), with the same outputs.
"""
from .chunkwise import chunk_step, retention_chunkwise, rows_per_chunk
from .decay import (DEFAULT_CHUNK, MASKS, MODES, PAPER_DECAY_EXPONENTS, PARALLEL_MAX_TOKENS,
                    MaskSpec, TokenLayout, check_memory_budget, check_mode, compute_dtype,
                    decay_gammas, decay_row_sums, make_layout, mask_spec, resolve_mode)
from .naive import retention_naive
from .parallel import retention_parallel
from .recurrent import RecurrentState, recurrent_step, retention_recurrent
from .streaming import STREAM_MODES, StreamPiece, retention_stream, stream_pieces
from .workspace import reused_buffers


def retention(q, k, v, mask='causal_1d', mode='parallel', grid=None, cls_token=False,
              chunk_size=DEFAULT_CHUNK, gamma=None, normalize=False, memory_budget=None):
    """Retention of (B, H, N, d) q, k, v under `mask` computed in `mode`.

    mask: a name in MASKS or its MaskSpec (`mask_spec(name)`, parsed once by the caller);
    grid: (rows, cols) of the patch tokens (2D masks); cls_token: the last token is a class
    token at the virtual position (cols-1, rows); mode: 'parallel', 'recurrent', 'chunkwise'
    or 'auto' (`resolve_mode`); chunk_size: cells per tile (chunkwise mode; 2D masks: about
    sqrt(chunk_size) square, 16 x 16 by default); memory_budget: bytes the chunkwise form may
    hold at once (None: no limit; else heads and tiles are processed in slices, same result;
    'auto' then runs the parallel form only where its scores fit; an explicit 'parallel' or
    'recurrent' mode does not look at it);
    gamma: per-head decay (default: ViR's schedule);
    normalize: divide each token's output by the sum of its decay-mask row, making it a
    decay-weighted mean whose scale does not grow with the number of tokens (not in the paper;
    a per-token constant, so every form stays exact).
    """
    mask = mask_spec(mask)
    if q.dim() != 4 or q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f'q, k, v must be (batch, heads, tokens, dim); got {tuple(q.shape)}, '
                         f'{tuple(k.shape)}, {tuple(v.shape)}')
    mode = resolve_mode(mode, q.shape[-2], chunk_size, memory_budget, q.shape[0] * q.shape[1],
                        compute_dtype(q.dtype).itemsize)
    if gamma is None:
        gamma = decay_gammas(q.shape[1], device=q.device)
    if mode == 'parallel':
        out = retention_parallel(q, k, v, gamma, mask, grid, cls_token)
    elif mode == 'recurrent':
        out = retention_recurrent(q, k, v, gamma, mask, grid, cls_token)
    else:
        out = retention_chunkwise(q, k, v, gamma, mask, grid, cls_token, chunk_size,
                                  memory_budget)
    if normalize:
        layout = make_layout(mask, q.shape[-2], grid, cls_token)
        out = out / decay_row_sums(gamma, layout, mask.causal).to(out)[:, :, None]
    return out


__all__ = ['DEFAULT_CHUNK', 'MASKS', 'MODES', 'PAPER_DECAY_EXPONENTS', 'PARALLEL_MAX_TOKENS',
           'STREAM_MODES', 'MaskSpec', 'RecurrentState', 'StreamPiece', 'TokenLayout',
           'check_memory_budget', 'check_mode', 'chunk_step', 'compute_dtype', 'decay_gammas',
           'decay_row_sums', 'make_layout', 'mask_spec', 'recurrent_step', 'resolve_mode',
           'retention', 'retention_chunkwise', 'retention_naive', 'retention_parallel',
           'retention_recurrent', 'retention_stream', 'reused_buffers', 'rows_per_chunk',
           'stream_pieces']
