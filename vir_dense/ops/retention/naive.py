"""Reference retention: the decay mask written out from its definition, computed in float64.

Slow and quadratic on purpose; every other form is tested against it.
"""
import torch

from .decay import make_layout, mask_spec


def naive_decay_mask(gamma, layout, causal):
    """(H, N, N) float64 mask from token positions: gamma^(|dx|+|dy|), zero where not visible."""
    x, y = layout.positions()
    dx = (x[:, None] - x[None, :]).double()
    dy = (y[:, None] - y[None, :]).double()
    mask = gamma.double().cpu()[:, None, None] ** (dx.abs() + dy.abs())[None]
    if causal:
        mask = torch.where(((dx >= 0) & (dy >= 0))[None], mask, torch.zeros_like(mask))
    return mask


def retention_naive(q, k, v, gamma, mask='causal_1d', grid=None, cls_token=False,
                    normalize=False):
    """Ret(X) = (Q K^T ⊙ D) V for (B, H, N, d) inputs; the result has q's dtype.

    normalize: divide each row of D by its sum (the reference for `retention(normalize=True)`).
    """
    mask = mask_spec(mask)
    causal = mask.causal
    layout = make_layout(mask, q.shape[-2], grid, cls_token)
    decay = naive_decay_mask(gamma, layout, causal).to(q.device)
    if normalize:
        decay = decay / decay.sum(-1, keepdim=True)
    scores = q.double() @ k.double().transpose(-1, -2) * decay
    return (scores @ v.double()).to(q.dtype)
