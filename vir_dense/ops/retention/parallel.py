"""Parallel retention: (Q K^T ⊙ D) V in one shot, quadratic in the number of tokens.

The mask factors into a row mask times a column mask (decay.py): D[n, m] = Dy[y_n, y_m] *
Dx[x_n, x_m]. It is cached per geometry because building it costs as much as the retention
itself at small sizes.
"""
import torch

from .decay import compute_dtype, decay_matrix, make_layout, mask_spec

_MASK_CACHE = {}
_MASK_CACHE_SIZE = 16


def parallel_decay_mask(gamma, layout, causal, dtype):
    """(H, N, N) decay mask for `layout`, in `dtype`, on gamma's device."""
    if torch.compiler.is_compiling():  # traced into the graph, not cached
        return _build_mask(gamma, layout, causal, dtype)
    key = (tuple(gamma.tolist()), layout, causal, dtype, gamma.device)
    mask = _MASK_CACHE.get(key)
    if mask is None:
        with torch.inference_mode(False), torch.no_grad():  # kept: normal tensors
            mask = _build_mask(gamma, layout, causal, dtype)
        if len(_MASK_CACHE) >= _MASK_CACHE_SIZE:
            _MASK_CACHE.pop(next(iter(_MASK_CACHE)))
        _MASK_CACHE[key] = mask
    return mask


def _build_mask(gamma, layout, causal, dtype):
    x, y = (p.to(gamma.device) for p in layout.positions())
    row_mask = decay_matrix(gamma, layout.grid_rows, causal, dtype)
    col_mask = decay_matrix(gamma, layout.cols, causal, dtype)
    return row_mask[:, y][:, :, y] * col_mask[:, x][:, :, x]


def retention_parallel(q, k, v, gamma, mask='causal_1d', grid=None, cls_token=False):
    """The result has q's dtype; computed in at least float32 with autocast off (see
    `compute_dtype`), so float32/float64 inputs give what they always did."""
    mask = mask_spec(mask)
    causal = mask.causal
    layout = make_layout(mask, q.shape[-2], grid, cls_token)
    in_dtype, dtype = q.dtype, compute_dtype(q.dtype)
    decay = parallel_decay_mask(gamma, layout, causal, dtype)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (t.to(dtype) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2)).mul_(decay)  # in place: one N x N buffer, not two
        out = scores @ v
    return out.to(in_dtype)
