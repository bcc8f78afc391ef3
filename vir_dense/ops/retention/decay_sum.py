"""Decay-weighted sums along one axis, y_i = sum_j w(i, j) x_j, as a few batched matmuls.

The weights are per head, w = gamma^|i-j| over all j ('symmetric'), over j <= i ('causal') or
j >= i ('anticausal'); the 'strict' kinds skip j = i and count one step less,
gamma^(i-1-j) over j < i ('causal_strict') and gamma^(j-1-i) over j > i ('anticausal_strict').
These are the 1D factors of every retention mask: the chunkwise form carries states from tile
to tile with the strict kinds (what enters a tile from the tiles before it) and mixes them over
rows or columns with the others.

A short axis is one matmul with the (H, L, L) Toeplitz matrix. A long one is cut into blocks
(`block`, 16 by default): the matrix inside each block, plus a carry between blocks (a strict
decay sum of each block's summary, decay gamma^block, both directions in one matmul) spread
back in place. Work is O(L * block) per element instead of O(L^2), with a fixed number of ops
(three matmuls). Every power of gamma has a non-negative exponent (no gamma^-x).

Inputs are (B, h, M, L, K): h of the H heads (`heads`, a slice), M independent groups. The
per-head matrices are expanded once per (B, M, heads) and kept, so a call is a few views and
`bmm`s.

`DecaySum.inplace` computes the non-strict kinds in place (no second tensor of x's size): the
causal sum is the solution of the bidiagonal system (I - gamma S) y = x (S shifts by one), one
triangular solve that LAPACK does in place, i.e. the recurrence y_i = x_i + gamma y_(i-1); the
anticausal sum is the transposed system; the symmetric one, gamma^|i-j| = P D P^T with P the
causal sum and D = diag(1, 1 - gamma^2, ...), is an anticausal solve and a causal solve whose
matrix takes D in. Compiled and exported graphs take the matmul form instead (same values;
triangular solves have no ONNX translation).
"""
import torch
import torch.nn.functional as F

from .decay import decay_powers
from .workspace import view_of

KINDS = ('causal', 'anticausal', 'symmetric', 'causal_strict', 'anticausal_strict')
DIRECT_MAX = 64  # axes up to this length (by default): one Toeplitz matmul or solve
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


def of_heads(constant, heads):
    """A (1, H, ...) per-head constant for the heads of a call (a slice): itself for all
    heads, without a slice op (calls are counted in ops)."""
    return constant if heads == slice(None) else constant[:, heads]


class _Batched:
    """(H, a, b) per-head matrices laid out for `bmm` against (B, h, M, b, K) inputs."""

    def __init__(self, matrix):
        self.matrix = matrix
        self.cache = {}

    def __call__(self, batch, groups, heads):
        if torch.compiler.is_compiling():  # traced into the graph, not cached
            return self._expand(batch, groups, heads)
        key = (batch, groups, heads.start, heads.stop)
        if key not in self.cache:
            with torch.inference_mode(False):  # kept: must serve training calls later
                self.cache[key] = self._expand(batch, groups, heads)
        return self.cache[key]

    def _expand(self, batch, groups, heads):
        matrix = self.matrix[heads]
        shape = (batch, matrix.shape[0], groups) + tuple(matrix.shape[1:])
        return matrix[None, :, None].expand(shape).reshape(-1, *matrix.shape[1:])


def _bidiagonal(gamma, length, dtype):
    """(H, L, L) I - gamma S: the lower bidiagonal system whose solution is the causal sum."""
    eye = torch.eye(length, dtype=torch.float64, device=gamma.device)
    shift = torch.diag(torch.ones(length - 1, dtype=torch.float64, device=gamma.device), -1)
    return (eye[None] - gamma.double()[:, None, None] * shift[None]).to(dtype)


class _Scans:
    """In-place causal / anticausal / symmetric decay sums along dim -2 of (n, L, K) views."""

    def __init__(self, gamma, length, kind, dtype):
        self.kind = kind
        system = _bidiagonal(gamma, length, dtype)  # A
        # y^T A^T = x^T (causal) and y^T A = x^T (anticausal), solved on the transposed view
        causal = system.transpose(1, 2)
        if kind == 'symmetric':
            # gamma^|i-j| = P D P^T: the causal solve takes D in, A^T D^-1 for A^T (no pass
            # of its own); D = diag(1, 1 - gamma^2, ...)
            scale = torch.full((gamma.shape[0], length), 1.0, dtype=torch.float64,
                               device=gamma.device)
            scale[:, 1:] = 1 - gamma.double()[:, None] ** 2
            causal = causal.double() / scale[:, None, :]
        self.causal = _Batched(causal.to(dtype).contiguous())
        self.anticausal = _Batched(system)

    def __call__(self, x, heads):
        """x: (B, h, M, L, K) contiguous, overwritten with its decay sum."""
        if not x.is_contiguous():
            raise ValueError('an in-place decay sum needs a contiguous tensor')
        batch, _, groups, length, width = x.shape
        # (n, K, L): LAPACK's column-major, one view
        rows = x.as_strided((x.numel() // (length * width), width, length),
                            (length * width, 1, width))
        # LAPACK's threads pay here (2 threads: the 2048² call's solves 208 -> 128 ms)
        if self.kind != 'causal':
            torch.linalg.solve_triangular(self.anticausal(batch, groups, heads), rows,
                                          upper=False, left=False, out=rows)
        if self.kind != 'anticausal':
            torch.linalg.solve_triangular(self.causal(batch, groups, heads), rows,
                                          upper=True, left=False, out=rows)
        return x


class DecaySum:
    """The decay sum of `kind` over an axis of `length`, for (B, h, M, length, K) inputs.

    Built once per geometry (the matrices and powers are constants of the forward pass).
    """

    def __init__(self, gamma, length, kind, dtype, block=BLOCK, direct_max=DIRECT_MAX):
        if kind not in KINDS:
            raise ValueError(f'unknown decay sum {kind!r}; choose one of {KINDS}')
        self.length = length
        self.blocks = 0
        self.scans = None
        if not kind.endswith('strict'):
            direct = length <= max(direct_max, block)
            self.scans = _Scans(gamma, length if direct else block, kind, dtype)
        if length <= max(direct_max, block):
            self.matrix = _Batched(toeplitz(gamma, length, kind, dtype))
            return
        strict = kind.endswith('strict')
        base = kind[:-len('_strict')] if strict else kind
        self.block = block
        self.blocks = -(-length // block)
        powers = decay_powers(gamma, block + 1, dtype)  # gamma^0 .. gamma^block
        block_gamma = gamma.double() ** block
        inside = toeplitz(gamma, block, kind, dtype)
        gather, spread, carries = [], [], []
        if base != 'anticausal':  # blocks on the left, summarised at their last cell
            gather.append(powers[:, :block].flip(-1))
            # cell i of a block sees the summary carried from the left at distance i + 1
            # (strict: i), since the summary sits one step before the block's first cell
            spread.append(powers[:, :block] if strict else powers[:, 1:])
            carries.append(toeplitz(block_gamma, self.blocks, 'causal_strict', dtype))
        if base != 'causal':  # blocks on the right, summarised at their first cell
            gather.append(powers[:, :block])
            spread.append(powers[:, :block].flip(-1) if strict else powers[:, 1:].flip(-1))
            carries.append(toeplitz(block_gamma, self.blocks, 'anticausal_strict', dtype))
        sides = len(carries)
        # Both sides' carries as one block-diagonal matmul over (blocks, sides) rows.
        carry = torch.zeros(gamma.shape[0], self.blocks, sides, self.blocks, sides, dtype=dtype,
                            device=gamma.device)
        for side, matrix in enumerate(carries):
            carry[:, :, side, :, side] = matrix
        self.inside = _Batched(inside)
        self.gather = _Batched(torch.stack(gather, 1))  # (H, sides, block)
        self.carry = _Batched(carry.view(gamma.shape[0], self.blocks * sides, -1))
        self.spread = _Batched(torch.stack(spread, 2))  # (H, block, sides)
        self.sides = sides

    def __call__(self, x, heads=slice(None)):
        """x: (B, h, M, length, K); heads: which of the H heads x holds (a slice)."""
        batch, num_heads, groups, length, width = x.shape
        if not self.blocks:
            out = torch.bmm(self.matrix(batch, groups, heads), x.reshape(-1, length, width))
            return out.view(x.shape)
        padded = self.blocks * self.block
        if padded != length:  # zero cells at the end add nothing and are cut off again
            x = F.pad(x, (0, 0, 0, padded - length))
        cells = x.reshape(-1, self.block, width)
        blocks = groups * self.blocks
        out = torch.bmm(self.inside(batch, blocks, heads), cells)
        summaries = torch.bmm(self.gather(batch, blocks, heads), cells)
        carried = torch.bmm(self.carry(batch, groups, heads),
                            summaries.view(-1, self.blocks * self.sides, width))
        # out += spread @ carried, in place (no second output-sized tensor)
        out.baddbmm_(self.spread(batch, blocks, heads), carried.view(-1, self.sides, width))
        out = out.view(batch, num_heads, groups, padded, width)
        return out if padded == length else out[:, :, :, :length]


    def inplace(self, x, heads=slice(None), scratch=None):
        """The same sum, written into x (B, h, M, length, K), which must be contiguous; for
        the non-strict kinds. Returns x (or a new tensor where the matmul form runs).

        scratch: a flat tensor the call may write the blocks' summaries and their carries
        into (two (blocks, sides, K) products) where it is large enough; else they are new.
        """
        padded = self.blocks * self.block if self.blocks else self.length
        if self.scans is None or torch.compiler.is_compiling() or padded != self.length:
            return self(x, heads)
        if not self.blocks:
            return self.scans(x, heads)
        batch, num_heads, groups, length, width = x.shape
        blocks = groups * self.blocks
        cells = x.view(-1, self.block, width)
        gather, carry = self.gather(batch, blocks, heads), self.carry(batch, groups, heads)
        numel = cells.shape[0] * self.sides * width
        shape = (numel // (self.blocks * self.sides * width), self.blocks * self.sides, width)
        fits = scratch is not None and scratch.numel() >= 2 * numel
        if not fits:
            summaries = torch.bmm(gather, cells).view(shape)
        else:  # summaries, then their carries
            summaries = view_of(scratch, shape)
            torch.bmm(gather, cells, out=view_of(scratch, (cells.shape[0], self.sides, width)))
        self.scans(x.view(batch, num_heads, blocks, self.block, width), heads)  # inside
        if not fits:
            carried = torch.bmm(carry, summaries)
        else:
            carried = torch.bmm(carry, summaries, out=view_of(scratch, shape, offset=numel))
        cells.baddbmm_(self.spread(batch, blocks, heads), carried.view(-1, self.sides, width))
        return x


def decay_sum(x, gamma, kind):
    """Decay-weighted sum along dim 3 of x (B, H, M, L, K) with per-head gamma (H,)."""
    return DecaySum(gamma.to(x.device), x.shape[3], kind, x.dtype)(x)
