"""Decay rates and token geometry shared by every form of retention.

Every mask is defined from token positions. Patches sit in raster order on a (rows, cols) grid;
an optional class token comes last and sits at the virtual position (cols-1, rows), one row
below the last patch, so that under a causal mask it sees every patch. A 1D mask is the same
machinery on a (num_patches, 1) grid: position = index, class token at index num_patches.

Because all four masks factor as D = Dy ⊗ Dx (rows times columns), the forms work on an
"extended grid" (rows + 1 when there is a class token) where the empty cells of the class-token
row hold zeros: a zero key/value adds nothing to any state, so the extra row is exact.
"""
from dataclasses import dataclass

import torch

@dataclass(frozen=True)
class MaskSpec:
    """A parsed mask name: built once (when a model's mask is set) and passed to the ops in
    place of the name, so no call parses it again. Every op accepts the name or the spec."""
    name: str
    causal: bool
    two_d: bool


MASKS = {spec.name: spec for spec in (
    MaskSpec('causal_1d', causal=True, two_d=False),
    MaskSpec('bidirectional_1d', causal=False, two_d=False),
    MaskSpec('causal_2d', causal=True, two_d=True),
    MaskSpec('bidirectional_2d', causal=False, two_d=True),
)}
MODES = ('parallel', 'recurrent', 'chunkwise', 'auto')
DEFAULT_CHUNK = 256  # cells per chunkwise tile: 16 x 16 balances scores and states (d = 64)
PARALLEL_MAX_TOKENS = 2048  # 'auto' runs the parallel form up to this many tokens


def mask_spec(mask):
    """The MaskSpec of a mask name (a spec is returned as it is); fails naming the valid ones."""
    if isinstance(mask, MaskSpec):
        return mask
    if mask not in MASKS:
        raise ValueError(f'unknown retention mask {mask!r}; choose one of {sorted(MASKS)}')
    return MASKS[mask]


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f'unknown retention mode {mode!r}; choose one of {list(MODES)}')


def resolve_mode(mode, num_tokens, chunk_size=None, memory_budget=None, batch_heads=1,
                 element_bytes=4):
    """'auto' is 'parallel' up to PARALLEL_MAX_TOKENS (one masked matmul, and autograd keeps
    its scores: the fastest backward), else 'chunkwise' (linear memory, a fixed number of ops,
    a backward that recomputes instead of keeping scores). chunk_size is not used (kept for
    callers that pass it). With a memory_budget (bytes), 'auto' takes the parallel form only
    where its batch_heads x N x N scores fit the budget.

    Measured (docs/benchmarks.md, ViR-S): parallel is the faster form at 512² (1,025 tokens);
    from 1024² (4,097 tokens) chunkwise wins.
    """
    check_mode(mode)
    if mode != 'auto':
        return mode
    fits = (memory_budget is None or
            batch_heads * num_tokens * num_tokens * element_bytes <= memory_budget)
    return 'parallel' if num_tokens <= PARALLEL_MAX_TOKENS and fits else 'chunkwise'


def check_memory_budget(budget, name='memory_budget'):
    """A memory budget is None (no limit) or a positive whole number of bytes."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int)
                               or budget < 1):
        raise ValueError(f'{name} must be a positive number of bytes or None, got {budget!r}')


PAPER_DECAY_EXPONENTS = (5.0, 9.0)


def decay_gammas(num_heads, dtype=torch.float64, device=None,
                 exponents=PAPER_DECAY_EXPONENTS):
    """Fixed per-head decay: 1 - gamma log-uniform from 2^-first to 2^-last over the heads.

    ViR's schedule is exponents (5, 9): 1 - gamma from 1/32 to 1/512, nearly global on the
    grids of dense prediction. Smaller exponents give local heads, e.g. (1, 5): gamma 0.5 ...
    0.97 (a choice for dense tasks trained from scratch; see docs/detection.md).
    """
    first, last = (float(e) for e in exponents)
    if not 0 < first <= last:
        raise ValueError(f'decay exponents must satisfy 0 < first <= last, got {exponents}')
    steps = torch.arange(num_heads, dtype=torch.float64) / max(num_heads - 1, 1)
    return (1.0 - torch.pow(2.0, -first - (last - first) * steps)).to(dtype=dtype,
                                                                      device=device)


@dataclass(frozen=True)
class TokenLayout:
    """Where each of a sequence's tokens sits (see the module docstring)."""
    rows: int
    cols: int
    cls_token: bool = False

    @property
    def num_patches(self):
        return self.rows * self.cols

    @property
    def num_tokens(self):
        return self.num_patches + int(self.cls_token)

    @property
    def grid_rows(self):
        """Rows of the extended grid (the class token gets a row of its own)."""
        return self.rows + int(self.cls_token)

    def positions(self):
        """(x, y) of every token, as int64 tensors of length num_tokens."""
        index = torch.arange(self.num_patches)
        x, y = index % self.cols, index // self.cols
        if self.cls_token:
            x = torch.cat([x, torch.tensor([self.cols - 1])])
            y = torch.cat([y, torch.tensor([self.rows])])
        return x, y


def make_layout(mask, num_tokens, grid=None, cls_token=False):
    """The TokenLayout of a sequence of num_tokens under `mask` (grid=(rows, cols) for 2D)."""
    mask = mask_spec(mask)
    num_patches = num_tokens - int(cls_token)
    if not mask.two_d:
        return TokenLayout(num_patches, 1, cls_token)
    if grid is None:
        raise ValueError(f'mask {mask.name!r} needs grid=(rows, cols) of the patch tokens')
    rows, cols = grid
    if rows * cols != num_patches:
        raise ValueError(f'grid {rows}x{cols} holds {rows * cols} patches but the sequence has '
                         f'{num_patches} (+{int(cls_token)} class token); pass the patch grid')
    return TokenLayout(rows, cols, cls_token)


def compute_dtype(dtype):
    """Every form computes in at least float32, with autocast off inside the operator.

    Measured (docs/benchmarks.md): unnormalized retention sums thousands of terms whose
    magnitude grows with the token count; in bf16 the scores, states and sums lose the
    small terms and the error grows with the image (3.4% at 512², 19% at 1024² through
    ViR-S), and fp16 overflows. In float32 the error stays at the level of the bf16 linear
    layers around the operator, whatever the size.
    """
    return torch.promote_types(dtype, torch.float32)


def decay_powers(gamma, length, dtype):
    """gamma[h] ** [0, 1, ..., length-1] as an (H, length) tensor."""
    steps = torch.arange(length, dtype=torch.float64, device=gamma.device)
    return torch.exp(steps[None, :] * torch.log(gamma.double())[:, None]).to(dtype)


def decay_matrix(gamma, length, causal, dtype):
    """(H, L, L) 1D decay: gamma^(i-j) for i >= j (causal) or gamma^|i-j| (bidirectional)."""
    steps = torch.arange(length, device=gamma.device)
    distance = steps[:, None] - steps[None, :]
    weights = torch.exp(distance.abs().double()[None] * torch.log(gamma.double())[:, None, None])
    if causal:
        weights = weights.masked_fill(distance[None] < 0, 0.0)
    return weights.to(dtype)


def _axis_sums(gamma, query, length, causal):
    """(H, Q) sums over keys p' = 0..length-1 of the 1D weight at each query position p.

    Closed form (no length x length matrix): left part sum_{p' <= min(p, length-1)}
    gamma^(p-p'), plus, when bidirectional, the right part sum_{p < p' < length} gamma^(p'-p).
    """
    g = gamma.double()[:, None]
    p = query.double()[None, :]
    nearest = torch.clamp(p, max=length - 1)  # the key closest to p from the left
    left = g ** (p - nearest) * (1 - g ** (nearest + 1)) / (1 - g)
    if causal:
        return left
    right = torch.where(p < length - 1, g * (1 - g ** (length - 1 - p)) / (1 - g),
                        torch.zeros_like(left))
    return left + right


def decay_row_sums(gamma, layout, causal):
    """(H, num_tokens) float64: the sum of each token's row of the decay mask.

    Dividing a token's retention output by it turns the sum over visible tokens into a
    decay-weighted mean (see `retention(normalize=True)`). Every mask factors into columns x
    rows, so a patch's row sum is a product of two 1D sums; the class token adds its own cell.
    """
    x, y = (t.to(gamma.device) for t in layout.positions())
    sums = (_axis_sums(gamma, x, layout.cols, causal) *
            _axis_sums(gamma, y, layout.rows, causal))
    if layout.cls_token:
        g = gamma.double()[:, None]
        cls_x, cls_y = layout.cols - 1, layout.rows
        if causal:  # patches never see the class token below them; it sees itself
            sums[:, -1] += 1.0
        else:  # every token sees it, at distance |x - cls_x| + (cls_y - y); itself at 0
            sums += g ** ((x - cls_x).abs() + (cls_y - y).abs()).double()[None]
    return sums


def to_grid(x, layout):
    """(B, H, N, d) token sequence -> (B, H, grid_rows, cols, d), zeros in empty cells."""
    batch, heads, _, dim = x.shape
    if layout.cls_token:  # cols - 1 empty cells in front of the class token
        empty = x.new_zeros(batch, heads, layout.cols - 1, dim)
        x = torch.cat([x[:, :, :-1], empty, x[:, :, -1:]], dim=2)
    return x.reshape(batch, heads, layout.grid_rows, layout.cols, dim)


def from_grid(grid_tensor, layout):
    """Inverse of to_grid: drop the empty cells, back to a (B, H, N, d) sequence."""
    batch, heads, _, _, dim = grid_tensor.shape
    sequence = grid_tensor.reshape(batch, heads, layout.grid_rows * layout.cols, dim)
    if not layout.cls_token:
        return sequence
    return torch.cat([sequence[:, :, :layout.num_patches], sequence[:, :, -1:]], dim=2)
