"""Decay-weighted sums along one axis, y_i = sum_j w(i, j) x_j, as a few large matmuls.

The weights are per head, w = gamma^|i-j| over all j ('symmetric'), over j <= i ('causal') or
j >= i ('anticausal'); the 'strict' kinds skip j = i and count one step less,
gamma^(i-1-j) over j < i ('causal_strict') and gamma^(j-1-i) over j > i ('anticausal_strict').
These are the 1D factors of every retention mask: the chunkwise form carries states from tile
to tile with the strict kinds (what enters a tile from the tiles before it) and mixes them
across the columns with the others.

A short axis is one matmul with the (H, L, L) Toeplitz matrix. A long one is cut into blocks of
`BLOCK`: the matrix inside each block, plus a carry between blocks, a strict decay sum of one
summary per block with decay gamma^BLOCK; a long strict sum is the non-strict one shifted by one
step. Work is O(L * BLOCK) per element instead of O(L^2), with a fixed number of ops. Every
power of gamma has a non-negative exponent (no gamma^-x).
"""
import torch
import torch.nn.functional as F

from .decay import decay_powers

KINDS = ('causal', 'anticausal', 'symmetric', 'causal_strict', 'anticausal_strict')
DIRECT_MAX = 64  # non-strict axes up to this length: one Toeplitz matmul
BLOCK = 16


def toeplitz(gamma, length, kind, dtype):
    """(H, L, L) matrix of the 1D decay weights of `kind` (built in float64, then cast)."""
    steps = torch.arange(length, device=gamma.device)
    distance = steps[:, None] - steps[None, :]  # i - j
    if kind.startswith('anticausal'):
        distance = -distance
    if kind.endswith('strict'):
        distance = distance - 1
    exponent = distance.abs() if kind == 'symmetric' else distance
    log_gamma = torch.log(gamma.double())[:, None, None]
    weights = torch.exp(exponent.clamp(min=0).double()[None] * log_gamma)
    if kind != 'symmetric':
        weights = weights * (exponent >= 0)[None]
    return weights.to(dtype)


class DecaySum:
    """The decay sum of `kind` over an axis of `length`, for (B, H, M, length, K) inputs.

    Built once per geometry (the matrices and powers are constants of the forward pass).
    """

    def __init__(self, gamma, length, kind, dtype):
        if kind not in KINDS:
            raise ValueError(f'unknown decay sum {kind!r}; choose one of {KINDS}')
        self.length = length
        self.blocks = 0
        self.shifted = None
        if length <= DIRECT_MAX:
            self.matrix = toeplitz(gamma, length, kind, dtype)[None, :, None]
            return
        if kind.endswith('strict'):  # y_i = (non-strict sum)_(i-1), or _(i+1) if anticausal
            self.shifted = DecaySum(gamma, length, kind[:-len('_strict')], dtype)
            self.causal = kind.startswith('causal')
            return
        self.blocks = -(-length // BLOCK)
        self.matrix = toeplitz(gamma, BLOCK, kind, dtype)[None, :, None]
        powers = decay_powers(gamma, BLOCK + 1, dtype)  # gamma^0 .. gamma^BLOCK
        block_gamma = gamma.double() ** BLOCK
        gather, spread, self.carries = [], [], []
        if kind != 'anticausal':  # blocks on the left, summarised at their last cell
            gather.append(powers[:, :BLOCK].flip(-1))
            spread.append(powers[:, 1:])  # gamma^(i+1)
            self.carries.append(DecaySum(block_gamma, self.blocks, 'causal_strict', dtype))
        if kind != 'causal':  # blocks on the right, summarised at their first cell
            gather.append(powers[:, :BLOCK])
            spread.append(powers[:, 1:].flip(-1))  # gamma^(BLOCK-i)
            self.carries.append(DecaySum(block_gamma, self.blocks, 'anticausal_strict', dtype))
        self.gather = torch.stack(gather, 1)[None, :, None]  # (1, H, 1, sides, BLOCK)
        self.spread = torch.stack(spread, 2)[None, :, None, None]  # (1, H, 1, 1, BLOCK, sides)

    def __call__(self, x, heads=slice(None)):
        """x: (B, h, M, length, K); heads: which of the H heads x holds (a slice)."""
        if self.shifted is not None:
            y = self.shifted(x, heads)
            if self.causal:
                return F.pad(y[:, :, :, :-1], (0, 0, 1, 0))
            return F.pad(y[:, :, :, 1:], (0, 0, 0, 1))
        if not self.blocks:
            return self.matrix[:, heads] @ x
        batch, heads_in, groups, length, width = x.shape
        padded = self.blocks * BLOCK
        if padded != length:  # zero cells at the end add nothing and are cut off again
            x = F.pad(x, (0, 0, 0, padded - length))
        cells = x.reshape(batch, heads_in, groups * self.blocks, BLOCK, width)
        out = (self.matrix[:, heads] @ cells).view(batch, heads_in, groups, self.blocks, BLOCK,
                                                   width)
        summaries = (self.gather[:, heads] @ cells).view(batch, heads_in, groups, self.blocks,
                                                         -1, width)
        carries = torch.stack([carry(summaries[:, :, :, :, side], heads)
                               for side, carry in enumerate(self.carries)], 4)
        # out += spread @ carries, accumulated in place (no second output-sized tensor)
        spread = self.spread[:, heads].expand(batch, heads_in, groups, self.blocks, -1, -1)
        out.view(-1, BLOCK, width).baddbmm_(spread.reshape(-1, *spread.shape[-2:]),
                                            carries.view(-1, *carries.shape[-2:]))
        out = out.view(batch, heads_in, groups, padded, width)
        return out if padded == length else out[:, :, :, :length]


def decay_sum(x, gamma, kind):
    """Decay-weighted sum along dim 3 of x (B, H, M, L, K) with per-head gamma (H,)."""
    return DecaySum(gamma.to(x.device), x.shape[3], kind, x.dtype)(x)
