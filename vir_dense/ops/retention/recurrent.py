"""Recurrent retention: one token at a time, states of size d x d, no N x N tensor.

Column states carry the vertical recurrence and a running row state the horizontal one
(2D retention as a recurrence): C_x <- gamma C_x + k^T v, S <- gamma S + C_x, o = q S.
A 1D mask is the same on a one-column grid (then S = C_0). Bidirectional masks add a backward
pass along each row and a bottom-up sweep over rows, each excluding what the other counted.

For causal masks, `RecurrentState` + `recurrent_step` stream tokens through a whole model (one
state per layer); `retention_recurrent` runs a full sequence for any mask.
"""
import torch

from .decay import compute_dtype, make_layout, mask_spec, to_grid, from_grid


class RecurrentState:
    """Causal streaming state of one retention layer: column states and the running row state."""

    def __init__(self, batch, heads, cols, head_dim, gamma, dtype, device):
        self.gamma = gamma.to(device=device, dtype=dtype)[None, :, None, None]
        zeros = torch.zeros(batch, heads, head_dim, head_dim, dtype=dtype, device=device)
        self.columns = [zeros] * cols  # one (B, H, d, d) state per column, replaced not mutated
        self.row = zeros


def recurrent_step(state, x, q=None, k=None, v=None):
    """Advance `state` by the grid cell in column x (cells come in raster order).

    q, k, v are (B, H, d) or None for an empty cell (the class token's row), which still
    decays the states. Returns o (B, H, d) when q is given.
    """
    with torch.autocast(state.row.device.type, enabled=False):  # states stay float32+
        column = state.gamma * state.columns[x]
        if k is not None:
            column = column + k.to(column.dtype)[..., :, None] * v.to(column.dtype)[..., None, :]
        state.columns[x] = column
        state.row = column if x == 0 else state.gamma * state.row + column
        if q is not None:
            return torch.einsum('bhd,bhde->bhe', q.to(column.dtype), state.row)
    return None


def _row_scan(q_row, columns, gamma, causal):
    """o[x] = q[x] . sum_x' Kx(x, x') columns[x'], scanned token by token along the row."""
    cols = q_row.shape[2]
    out = [None] * cols
    running = torch.zeros_like(columns[:, :, 0])
    for x in range(cols):  # left to right, own column included
        running = gamma * running + columns[:, :, x]
        out[x] = torch.einsum('bhd,bhde->bhe', q_row[:, :, x], running)
    if not causal:
        running = torch.zeros_like(running)
        for x in reversed(range(cols)):  # right to left, own column excluded
            out[x] = out[x] + torch.einsum('bhd,bhde->bhe', q_row[:, :, x], running)
            running = gamma * (running + columns[:, :, x])
    return torch.stack(out, dim=2)


def retention_recurrent(q, k, v, gamma, mask='causal_1d', grid=None, cls_token=False):
    with torch.autocast(q.device.type, enabled=False):  # states stay float32+
        return _retention_recurrent(q, k, v, gamma, mask, grid, cls_token)


def _retention_recurrent(q, k, v, gamma, mask, grid, cls_token):
    mask = mask_spec(mask)
    causal = mask.causal
    layout = make_layout(mask, q.shape[-2], grid, cls_token)
    dtype = compute_dtype(q.dtype)
    qg, kg, vg = (to_grid(t, layout).to(dtype) for t in (q, k, v))
    batch, heads, rows, cols, dim = qg.shape
    g = gamma.to(device=q.device, dtype=dtype)[None, :, None, None]

    def cell_kv(y):  # k^T v of every cell of row y, (B, H, cols, d, d)
        return kg[:, :, y, :, :, None] * vg[:, :, y, :, None, :]

    # Top-down: rows above and this row. The column recurrences of one row advance together
    # (they are independent); the row scan then goes token by token.
    out_rows = []
    columns = qg.new_zeros(batch, heads, cols, dim, dim)
    for y in range(rows):
        columns = g[:, :, None] * columns + cell_kv(y)
        out_rows.append(_row_scan(qg[:, :, y], columns, g, causal))
    if not causal:  # bottom-up: rows strictly below
        columns = torch.zeros_like(columns)
        for y in reversed(range(rows)):
            out_rows[y] = out_rows[y] + _row_scan(qg[:, :, y], columns, g, causal)
            columns = g[:, :, None] * (columns + cell_kv(y))
    return from_grid(torch.stack(out_rows, dim=2), layout).to(q.dtype)
