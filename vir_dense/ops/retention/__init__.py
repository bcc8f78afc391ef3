"""Multi-head retention (ViR / RetNet without softmax, gate or norm), in three forms.

`retention(q, k, v, mask=..., mode=...)` takes (B, H, N, d) tensors (q already scaled) and knows
nothing of images: 2D masks only need the patch grid. Every form equals `retention_naive`.
"""
from .chunkwise import chunk_step, retention_chunkwise, rows_per_chunk
from .decay import (MASKS, MODES, TokenLayout, check_mode, decay_gammas, make_layout,
                    parse_mask)
from .naive import retention_naive
from .parallel import retention_parallel
from .recurrent import RecurrentState, recurrent_step, retention_recurrent


def retention(q, k, v, mask='causal_1d', mode='parallel', grid=None, cls_token=False,
              chunk_size=256, gamma=None):
    """Retention of (B, H, N, d) q, k, v under `mask` computed in `mode`.

    grid: (rows, cols) of the patch tokens (2D masks); cls_token: the last token is a class
    token at the virtual position (cols-1, rows); chunk_size: tokens per chunk (chunkwise mode,
    rounded to whole rows for 2D masks); gamma: per-head decay (default: ViR's schedule).
    """
    check_mode(mode)
    parse_mask(mask)
    if q.dim() != 4 or q.shape != k.shape or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f'q, k, v must be (batch, heads, tokens, dim); got {tuple(q.shape)}, '
                         f'{tuple(k.shape)}, {tuple(v.shape)}')
    if gamma is None:
        gamma = decay_gammas(q.shape[1], device=q.device)
    if mode == 'parallel':
        return retention_parallel(q, k, v, gamma, mask, grid, cls_token)
    if mode == 'recurrent':
        return retention_recurrent(q, k, v, gamma, mask, grid, cls_token)
    return retention_chunkwise(q, k, v, gamma, mask, grid, cls_token, chunk_size)


__all__ = ['MASKS', 'MODES', 'RecurrentState', 'TokenLayout', 'check_mode', 'chunk_step',
           'decay_gammas', 'make_layout', 'parse_mask', 'recurrent_step', 'retention',
           'retention_chunkwise', 'retention_naive', 'retention_parallel', 'retention_recurrent',
           'rows_per_chunk']
