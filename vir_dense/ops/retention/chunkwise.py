"""Chunkwise retention in tiles: exact, with memory and FLOPs per token that do not grow.

The (extended) grid (decay.py) is cut into bands of R rows and each band into tiles of R x T
cells (`tile_shape`: about `chunk_size` cells, 16 x 16 by default; 1D masks use chunks of R
tokens in one column). Tokens are gathered into tile order once per call (one index per
layout; the class token keeps its cell; empty and padding cells read token 0, with a zero
value in the tile products and a zero key weight in the states). A query in
tile (band b, tile column t) at in-tile row r, column c reads three disjoint sets of keys:
- its own tile: one batched masked matmul over all tiles, (Q K^T ⊙ D_tile) V;
- the other tiles of its band (row family): the x-factor of D is rank 1 across tiles, so each
  tile row keeps one state sum_c' gamma^(T-1-c') k^T v (mirrored for tiles on the right),
  carried along the band (gamma^T per tile), mixed over the band's rows by the R x R row
  decay and read with gamma^(c+1);
- the other bands (column family): the y-factor is rank 1 across bands, so each column of a
  band keeps one state sum_r' gamma^(R-1-r') k^T v (mirrored for bands below), carried down
  the bands (gamma^R per band), mixed across the full width by the column decay (blocked per
  tile column) and read with gamma^(r+1).
Each side of a family gathers its keys and values one tile step away, so its carry is a
non-strict decay sum; carries and mixes then run in place on the one state tensor
(`DecaySum.inplace`). No loop depends on the image: the ops per call do not grow with it
(132; 116 in a workspace, which keeps its views, so that writing into a buffer is one op, as
a fresh product is). Gathers, states and scores are written into a few buffers reused phase
after phase (`_Reuse`), and in inference handed on to the next call (workspace.py).

Cost per token and head (d head dim, L = R T): intra-tile 4 L d FLOPs, each side of each family
about 4 d^2 (build and read) plus its carry and mix, ~190k FLOPs at d = 64 on every grid from
512² to 4096² (tools/analysis_tools/benchmark_backbone.py counts them).

Transient memory per call (`transient_elements`, checked against
tools/analysis_tools/measure_retention_memory.py), in elements of the compute dtype, for B
batch, H heads, N_p padded cells, d head dim, L = R T, split into g head groups and s query
slices:
    B H N_p ((4 d + max(L / s, d^2 / T, d^2 / R)) / g  +  d [if g > 1])
held through the call are the queries, keys and values gathered into cells and the output in
cells (4 d); beside them one buffer, sized for the largest, holds in turn the tile scores and
the two families' states; the column family's mix across the width (blocked per tile column)
writes two summaries per tile column and side into the keys' and values' buffer, idle by then
(`transient_elements` has every case). k and v that are not slices of one tensor (the
model's are: one projection) are stacked first, 2 d more.
`memory_budget` (bytes) picks the fewest slices that fit (same result, more ops): each head
group is a whole call on its heads, written into one output.

Training saves only q, k, v: the backward pass is three more chunkwise retentions (the gradient
of (Q K^T ⊙ D) V is retention with D or D^T; D^T is D on the grid flipped in both axes, which
in tile order is the reversed cell order), so no N-sized intermediate is kept.

`chunk_step` streams whole grid rows of a causal mask through a model (one state per layer).
"""
import math

import torch

from .decay import DEFAULT_CHUNK, TokenLayout, compute_dtype, decay_powers, make_layout, \
    mask_spec
from .decay_sum import BLOCK, DIRECT_MAX, DecaySum, of_heads
from .parallel import parallel_decay_mask
from .workspace import SCRATCH, TOKENS, active_workspace, view_of


def rows_per_chunk(chunk_size, cols):
    """Whole grid rows per streamed piece of about chunk_size tokens."""
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive number of tokens, got {chunk_size}')
    return max(1, chunk_size // cols)


def balanced_chunks(length, chunk):
    """(pieces, length of each): as many pieces as `chunk` asks for, of balanced size."""
    pieces = -(-length // min(max(chunk, 1), length))
    return pieces, -(-length // pieces)


def tile_shape(chunk_size, rows, cols):
    """(bands, R, tile columns, T) for tiles of about chunk_size cells on a rows x cols grid:
    square where the grid is wide enough, balanced so padding stays below one row/column."""
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive number of tokens, got {chunk_size}')
    side = min(cols, max(1, math.isqrt(chunk_size)))
    tile_cols, width = balanced_chunks(cols, side)
    bands, height = balanced_chunks(rows, max(1, chunk_size // side))
    return bands, height, tile_cols, width


class _Family:
    """One state family: lines of tile cells (tile rows for the row family, tile columns for
    the column family) summed into d x d states per side, carried from tile to tile, mixed
    over the lines, read by the queries of the same line.

    A side's keys and values are gathered one tile step back (before-side) or ahead
    (after-side), zeros where there is no such tile, so that a non-strict carry of their
    states is the strict carry the mask needs: every step of the state path then runs in place
    on one state tensor (`DecaySum.inplace`).
    """

    def __init__(self, gamma, length, steps, causal, dtype, mix_length, mix_block, gather,
                 step_of_cell, cells_per_step):
        heads = gamma.shape[0]
        shape = (1, heads, 1, 1, 1, length, 1)  # over dim 5 of (B, H, Gy, Gx, ., ., d)
        powers = decay_powers(gamma, length + 1, dtype)  # gamma^0 .. gamma^length
        # Before (above / left): keys weigh gamma^(length-1-i), queries read gamma^(i+1);
        # after (below / right): gamma^i and gamma^(length-i).
        keys = [powers[:, :-1].flip(-1)] + ([] if causal else [powers[:, :-1]])
        queries = [powers[:, 1:]] + ([] if causal else [powers[:, 1:].flip(-1)])
        kinds = ['causal'] + ([] if causal else ['anticausal'])
        self.query_weights = [w.view(shape) for w in queries]
        step_gamma = gamma.double() ** length
        self.carries = [DecaySum(step_gamma, steps, kind, dtype) for kind in kinds]
        self.mix = None
        if mix_length > 1:
            # blocked past one block: an in-place solve costs its length per element and runs
            # far below matmul speed (64-column solves took 55% of a call at 1024²)
            self.mix = DecaySum(gamma, mix_length, 'causal' if causal else 'symmetric', dtype,
                                block=mix_block, direct_max=mix_block)
        # [side][flipped]: the cells' tokens one tile step away, and the weight of each
        # gathered key (B, H, N_p, d): the line weight of its cell, 0 where the step leaves
        # the grid or reaches an empty cell (so that any token can stand in there)
        self.shifted, self.key_weights = [], []
        position = torch.arange(gather.num_cells, device=gamma.device) % length
        for offset, weights in zip([cells_per_step, -cells_per_step], keys):
            pairs = [gather.shifted(flip, offset, step_of_cell, steps) for flip in (0, 1)]
            self.shifted.append([index for index, _ in pairs])
            self.key_weights.append([(weights[:, position] * valid).to(dtype)[None, :, :, None]
                                     for _, valid in pairs])


class TilePlan:
    """The constants of one tiled geometry: gather indices, masks, weights, decay sums."""

    def __init__(self, gamma, layout, chunk_size, causal, dtype):
        rows, cols = layout.grid_rows, layout.cols
        self.bands, self.height, self.tile_cols, self.width = tile_shape(chunk_size, rows, cols)
        bands, height, tile_cols, width = self.bands, self.height, self.tile_cols, self.width
        self.cells = bands * height * tile_cols * width
        self.causal = causal
        self.intra_mask = _tile_mask(gamma, height, width, causal, dtype)[None, :, None]
        x, y = (p.to(gamma.device) for p in layout.positions())
        base = (y // height * tile_cols + x // width) * height * width
        row_major = base + (y % height) * width + x % width
        col_major = base + (x % width) * height + y % height
        self.gathers = [_Gather(row_major, self.cells)]
        # [flipped]: zero for the values of empty cells in the intra-tile products, laid out
        # as the tiles (Gy, Gx, R, T, 1)
        self.value_masks = [self.gathers[0].value_mask(flip, dtype).view(
            bands, tile_cols, height, width, 1) for flip in (0, 1)]
        cell = torch.arange(self.cells, device=gamma.device)
        tile_cells = height * width
        # Column family (other bands): per-column states carried down the bands, mixed
        # across the full width (blocked per tile column).
        self.columns = None
        if bands > 1:
            self.gathers.append(_Gather(col_major, self.cells))
            self.columns = _Family(gamma, height, bands, causal, dtype, tile_cols * width,
                                   width, self.gathers[1], cell // (tile_cols * tile_cells),
                                   tile_cols * tile_cells)
        # Row family (other tiles of the band): per-row states carried along the band,
        # mixed over the band's rows.
        self.rows = None
        if tile_cols > 1:
            self.rows = _Family(gamma, width, tile_cols, causal, dtype, height, BLOCK,
                                self.gathers[0], cell // tile_cells % tile_cols, tile_cells)

    def buffer_elements(self, batch, heads, dim, query_groups=1):
        """Elements of the call's one reused buffer (`_Reuse.bmm`): the largest of the tile
        scores (unless sliced) and the families' states."""
        tiles = batch * heads * self.bands * self.tile_cols
        needs = [tiles * (self.height * self.width) ** 2 if query_groups == 1 else 0]
        if self.rows is not None:
            needs.append(tiles * self.height * dim * dim)
        if self.columns is not None:
            needs.append(tiles * self.width * dim * dim)
        return max(needs)


class _Gather:
    """Token <-> cell indices of one tile layout, and of the grid flipped in both axes
    (reversed cell order), which the backward pass uses for D^T. An empty cell reads token 0
    (a gather needs some index) and is marked invalid: its value or key weight is then 0."""

    def __init__(self, cells, num_cells):
        self.num_cells = num_cells
        tokens = cells.numel()
        token = torch.arange(tokens, device=cells.device)
        owner = torch.full((num_cells,), tokens, dtype=torch.long, device=cells.device)
        owner = owner.scatter(0, cells, token)  # tokens marks an empty cell
        owners = [owner, owner.flip(0)]
        self.index = [o.masked_fill(o == tokens, 0) for o in owners]
        self.valid = [o < tokens for o in owners]
        self.cells = [cells, num_cells - 1 - cells]

    def value_mask(self, flip, dtype):
        """(N_p,) 1 for the cells that hold a token, 0 for empty ones."""
        return self.valid[flip].to(dtype)

    def shifted(self, flip, offset, step_of_cell, steps):
        """(index, valid) of the cell one tile step back (offset > 0) or ahead; invalid where
        the step leaves the grid. The flipped grid has the same cell structure."""
        index, valid = self.index[flip].roll(offset), self.valid[flip].roll(offset)
        outside = step_of_cell < 1 if offset > 0 else step_of_cell > steps - 2
        return index, valid & ~outside


def _tile_mask(gamma, height, width, causal, dtype):
    """(H, L, L) decay mask inside one R x T tile (row-major cells)."""
    return parallel_decay_mask(gamma, TokenLayout(height, width), causal, dtype)


def transient_elements(batch, heads, rows, cols, dim, chunk_size, causal, head_groups=1,
                       query_groups=1, packed=True):
    """The docstring's transient-memory formula, for a (rows, cols) extended grid. Held
    through a `_tiled` call: the queries, the gathered keys and values and the output, all in
    cells (4 d; 2 d more for k and v stacked when they are not `packed`, i.e. slices of one
    tensor). Beside them one buffer (`_Reuse`) holds in turn the tile scores (L; with s > 1
    slices each slice's L / s scores and d / s output are fresh instead), the row family's
    states (d^2 / T) and the column family's (d^2 / R), sized for the largest; a blocked decay
    sum over a family's states writes two summaries per block and side into the gathered
    keys' and values' buffer, idle by then, or next to it where they do not fit (2 sides d^2 /
    (R T) > 2 d, i.e. sides d > R T: not for 16 x 16 tiles at d = 64)."""
    bands, height, tile_cols, width = tile_shape(chunk_size, rows, cols)
    cells = bands * height * tile_cols * width
    sides = 1 if causal else 2

    def summaries(length, block=BLOCK, direct_max=DIRECT_MAX):  # per element summed
        return 2 * sides / block if length > max(direct_max, block) else 0

    buffer = height * width if query_groups == 1 else 0
    phases = [height * width / query_groups + (dim / query_groups if query_groups > 1 else 0)]
    families = [(tile_cols > 1, dim * dim / width, max(summaries(tile_cols),
                                                       summaries(height, BLOCK, BLOCK))),
                (bands > 1, dim * dim / height, max(summaries(bands),
                                                    summaries(tile_cols * width, width, width)))]
    for present, states, extra in families:
        if present:
            buffer = max(buffer, states)
            # summaries go into the gathered keys' and values' buffer (2 d) where they fit
            phases.append(buffer + (states * extra if states * extra > 2 * dim else 0))
    held = (4 if packed else 6) * dim
    output = dim if head_groups > 1 else 0  # the groups' results, gathered in one tensor
    return int(batch * heads * cells * ((held + max(phases)) / head_groups + output))


def least_budget(batch, heads, rows, cols, dim, chunk_size, causal, element_bytes=4,
                 packed=True):
    """The smallest memory_budget (bytes) `slices_for_budget` accepts: one head at a time,
    the tile scores in the most slices it considers."""
    tiles = math.prod(tile_shape(chunk_size, rows, cols)[::2])
    return element_bytes * transient_elements(batch, heads, rows, cols, dim, chunk_size, causal,
                                              heads, min(tiles, 64), packed)


def slices_for_budget(budget_bytes, batch, heads, rows, cols, dim, chunk_size, causal,
                      element_bytes=4, packed=True):
    """(head_groups, query_groups): the fewest slices whose transient memory fits the budget."""
    tiles = math.prod(tile_shape(chunk_size, rows, cols)[::2])
    options = sorted(((h, q) for h in range(1, heads + 1) for q in range(1, tiles + 1)
                      if heads % h == 0 and q <= 64), key=lambda hq: (hq[0] * hq[1], hq))
    for head_groups, query_groups in options:
        need = element_bytes * transient_elements(batch, heads, rows, cols, dim, chunk_size,
                                                  causal, head_groups, query_groups, packed)
        if need <= budget_bytes:
            return head_groups, query_groups
    least = least_budget(batch, heads, rows, cols, dim, chunk_size, causal, element_bytes,
                         packed)
    raise ValueError(f'memory_budget={budget_bytes / 2**20:.1f} MiB is below what retention '
                     f'needs on this grid ({least / 2**20:.1f} MiB one head at a time); raise '
                     'it or pass memory_budget=None')


_PLANS = {}


def tile_plan(gamma, layout, chunk_size, causal, dtype):
    if torch.compiler.is_compiling():  # traced into the graph instead
        return TilePlan(gamma, layout, chunk_size, causal, dtype)
    key = (tuple(gamma.tolist()), layout, chunk_size, causal, dtype, gamma.device)
    if key not in _PLANS:
        if len(_PLANS) >= 16:
            _PLANS.clear()
        with torch.inference_mode(False), torch.no_grad():  # kept: normal tensors
            _PLANS[key] = TilePlan(gamma, layout, chunk_size, causal, dtype)
    return _PLANS[key]


class _Reuse:
    """The large tensors of one `_tiled` call that are rewritten phase after phase: gathered
    keys and values, queries in tile order, states and tile scores. In eager mode each is
    allocated once and later results are written into it (`out=`): on a CPU a fresh large
    tensor costs about ten times its writing (the kernel maps and zeroes its pages on first
    touch, and unmaps them when it is freed), measured as ~35% of a call at 2048² and 4096².
    Compiled and exported graphs take the functional ops (same values). Inside
    `reused_buffers()` (workspace.py) the states/scores buffer and the gathered keys and
    values come from the workspace and go back to it when the call ends; so does the TOKENS
    buffer, whose halves hold the queries in cells (then the output in token order) and the
    output in cells, except that it is lent with the output until the caller hands it back.

    Keys and values sit side by side so that one gather serves both: a view where k and v
    are slices of one storage a fixed offset apart (the model's: one projection; the
    backward's first call passes them in the other order), else a stacked copy (2 d per
    cell more for the whole call)."""

    def __init__(self, k, v, buffer_elements):
        self.eager = not torch.compiler.is_compiling()
        self.pair = self.queries = self.square = self.pair_buffer = None
        self.buffer_elements = buffer_elements
        self.workspace = active_workspace() if self.eager else None
        self.taken = {}
        first, step = _packed(k, v) if self.eager else (None, None)
        self.swapped = first is v
        if first is None:
            self.keys_values = torch.stack((k, v))
        else:
            self.keys_values = first.as_strided((2,) + tuple(first.shape),
                                                (step,) + first.stride())

    def _flat(self, name, numel, like):
        """A flat buffer of at least `numel` elements: the workspace's when there is one
        (results are written into it through `view_of` views)."""
        if self.workspace is None:
            return like.new_empty(numel)
        self.taken[name] = self.workspace.take(name, numel, like.dtype, like.device)
        return self.taken[name]

    def pair_of(self, index, shape):
        """(keys, values) gathered into cells, in one buffer, each viewed as `shape`."""
        if not self.eager:
            self.pair = self.keys_values.index_select(3, index)
        else:
            if self.pair is None:
                size = (2,) + tuple(self.keys_values.shape[1:3]) + (index.numel(),
                                                                     self.keys_values.shape[4])
                self.pair_buffer = self._flat('pair', math.prod(size), self.keys_values)
                self.pair = view_of(self.pair_buffer, size)
            torch.index_select(self.keys_values, 3, index, out=self.pair)
        first, second = self.pair.view((2,) + tuple(shape)).unbind(0)
        return (second, first) if self.swapped else (first, second)

    def release(self):
        """Drops the call's buffers but the output in cells (the workspace keeps them)."""
        self.keys_values = self.pair = self.queries = self.square = self.pair_buffer = None

    def finish(self):
        """The output in cells has been read: every buffer goes back to the workspace."""
        for name, buffer in self.taken.items():
            self.workspace.give(name, buffer)
        self.taken = {}

    def _cells(self, numel, like):
        """The workspace's TOKENS buffer: two halves of `numel` (one tensor over glibc's mmap
        threshold rather than two under it, which would stay in its heap): the queries
        gathered into cells, then the output in token order; the output in cells."""
        if TOKENS not in self.taken:
            self._flat(TOKENS, 2 * numel, like)
        return self.taken[TOKENS]

    def queries_of(self, q, index):
        """q gathered into cells; in the workspace's TOKENS buffer where there is one."""
        if self.eager and self.queries is None and self.workspace is not None:
            size = tuple(q.shape[:2]) + (index.numel(), q.shape[3])
            self.queries = view_of(self._cells(math.prod(size), q), size)
        if self.eager and self.queries is not None:
            return torch.index_select(q, 2, index, out=self.queries)
        self.queries = q.index_select(2, index)
        return self.queries

    def token_order(self, out, index):
        """(B, h, N_p, d) cells -> (B, h, N, d) tokens, laid out as (B, N, h, d) in memory so
        that merging the heads afterwards is a view rather than a copy. In a workspace the
        result goes into the queries' TOKENS buffer (the queries are read by then), lent to
        the caller (`Workspace.hand_back`)."""
        if not self.eager:
            return out.index_select(2, index)
        batch, heads, _, dim = out.shape
        tokens = index.numel()
        if TOKENS not in self.taken:
            fresh = out.new_empty(batch, tokens, heads, dim).transpose(1, 2)
            return torch.index_select(out, 2, index, out=fresh)
        buffer = self.taken.pop(TOKENS)
        self.workspace.lend(TOKENS, buffer)
        result = view_of(buffer, (batch, heads, tokens, dim),
                         (tokens * heads * dim, dim, heads * dim, 1))
        return torch.index_select(out, 2, index, out=result)

    @staticmethod
    def _bmm_into(buffer, a, b, offset=0):
        """a @ b written into `buffer` from `offset`, viewed as the (n, rows, cols) result."""
        return torch.bmm(a, b, out=view_of(buffer, (a.shape[0], a.shape[1], b.shape[2]),
                                            offset=offset))

    def cells_out(self, a, b):
        """a @ b for the output in cells: into the second half of the TOKENS buffer when a
        workspace is open."""
        if self.workspace is None:
            return torch.bmm(a, b)
        numel = a.shape[0] * a.shape[1] * b.shape[2]
        return self._bmm_into(self._cells(numel, a), a, b, numel)

    def read(self, a, b):
        """a @ b, (n, l, d) like the queries: into the pair buffer (free once the states are
        built)."""
        if not self.eager:
            return torch.bmm(a, b)
        return self._bmm_into(self.pair, a, b)

    def bmm(self, a, b):
        """a @ b into the states/scores buffer, allocated once for the largest product of the
        call (R < T makes the scores L = R T smaller than the row states d^2 / T and those
        smaller than the column states d^2 / R) or taken from the workspace."""
        if not self.eager:
            return torch.bmm(a, b)
        if self.square is None:
            self.square = self._flat(SCRATCH, self.buffer_elements, a)
        return self._bmm_into(self.square, a, b)


def _tiled(q, k, v, plan, heads=slice(None), query_groups=1, flip=False):
    """Retention of (B, h, N, d) q, k, v in the compute dtype (no autograd inside); they hold
    the plan's heads `heads` (a slice). The result is (B, h, N, d) in (B, N, h, d) memory.

    flip: under D^T (the grid flipped in both axes: reversed cell order), for the backward.
    """
    batch, num_heads, _, dim = q.shape
    tiles = (batch, num_heads, plan.bands, plan.tile_cols)
    side = int(flip)
    reuse = _Reuse(k, v, plan.buffer_elements(batch, num_heads, dim, query_groups))
    cells = plan.gathers[0]
    shape = tiles + (plan.height, plan.width, dim)
    queries = reuse.queries_of(q, cells.index[side]).view(shape)
    keys, values = reuse.pair_of(cells.index[side], shape)
    values.mul_(plan.value_masks[side])  # empty cells add nothing
    out = _intra_tiles(queries, keys, values, of_heads(plan.intra_mask, heads), query_groups,
                       reuse)
    del keys, values
    if plan.rows is not None:  # other tiles of the band
        _family(queries, plan.rows, heads, side, 3, reuse, out)
    if plan.columns is not None:  # other bands, read in column-major tiles
        queries = reuse.queries_of(q, plan.gathers[1].index[side])
        _family(queries.view(tiles + (plan.width, plan.height, dim)), plan.columns, heads,
                side, 2, reuse, out.transpose(4, 5))
    del queries
    reuse.release()  # before the token-order output is allocated
    tokens = reuse.token_order(out.view(batch, num_heads, plan.cells, dim), cells.cells[side])
    reuse.finish()
    return tokens


def _packed(k, v):
    """(the one of k, v that comes first in their storage, the offset to the other) where
    they are slices of one storage a fixed offset apart (same shape and strides), else
    (None, None)."""
    if k.shape != v.shape or k.stride() != v.stride() or k.dtype != v.dtype or \
            k.untyped_storage().data_ptr() != v.untyped_storage().data_ptr():
        return None, None
    step = v.storage_offset() - k.storage_offset()
    if step == 0:
        return None, None
    return (k, step) if step > 0 else (v, -step)


def _is_packed(k, v):
    """Whether `_tiled` will read k and v through a view (eager only, as `_Reuse`)."""
    return not torch.compiler.is_compiling() and _packed(k, v)[0] is not None


def _in_head_groups(q, k, v, plan, head_groups=1, query_groups=1, flip=False):
    """`_tiled` on all heads at once, or group by group into one output (memory_budget)."""
    if head_groups == 1:
        return _tiled(q, k, v, plan, slice(None), query_groups, flip)
    batch, heads, tokens, dim = q.shape
    out = q.new_empty(batch, tokens, heads, dim).transpose(1, 2)  # as token_order's
    step = heads // head_groups
    for start in range(0, heads, step):
        group = slice(start, start + step)
        out[:, group] = _tiled(q[:, group], k[:, group], v[:, group], plan, group,
                               query_groups, flip)
    return out


def _intra_tiles(q, k, v, mask, query_groups, reuse):
    """Masked attention inside every tile: (B, h, Gy, Gx, R, T, d); mask (1, h, 1, L, L)."""
    shape = q.shape
    size = shape[4] * shape[5]
    if query_groups == 1:
        q, k, v = (t.view(-1, size, shape[-1]) for t in (q, k, v))
        scores = reuse.bmm(q, k.transpose(1, 2))
        scores.view(shape[0], shape[1], -1, size, size).mul_(mask)
        return reuse.cells_out(scores, v).view(shape)
    q, k, v = (t.view(shape[0], shape[1], -1, size, shape[-1]) for t in (q, k, v))
    out = torch.empty_like(q)
    step = -(-q.shape[2] // query_groups)
    for lo in range(0, q.shape[2], step):
        part = slice(lo, lo + step)
        scores = (q[:, :, part] @ k[:, :, part].transpose(-1, -2)).mul_(mask)
        out[:, :, part] = scores @ v[:, :, part]
    return out.view(shape)


def _family(q, family, heads, flip, carry_axis, reuse, out):
    """What each query reads from the family's other tiles, added to `out` (in place). q and
    out: (B, h, A, Bt, lines, cells per line, d) tiles of the plan's heads `heads`; the keys
    and values (`reuse`) are gathered per side one tile step away. The states of a line's
    tile are carried along dim `carry_axis` (2: down the bands, then mixed across the full
    width; 3: along the band, then mixed over the tile's rows)."""
    batch, num_heads, first, second, lines, length, dim = q.shape
    if carry_axis == 2:  # along A (bands), the rest of a band's tiles as width
        carried, mixed_groups = (1, first), first
    else:  # along Bt (tile columns), one group per band
        carried, mixed_groups = (first, second), first * second
    lines_of_q = q.reshape(-1, length, dim)  # the queries of each line, for both sides
    for side, carry in enumerate(family.carries):
        ks, vs = reuse.pair_of(family.shifted[side][flip], (batch, num_heads, -1, dim))
        ks.mul_(of_heads(family.key_weights[side][flip], heads))
        states = reuse.bmm(ks.view(-1, length, dim).transpose(1, 2),
                           vs.view(-1, length, dim))  # (lines, d, d) per tile
        del ks, vs
        # the blocked sums write their summaries into the pair buffer, idle until the read
        states = carry.inplace(states.view(batch, num_heads, *carried, -1), heads,
                               reuse.pair_buffer)
        if family.mix is not None:
            states = family.mix.inplace(
                states.view(batch, num_heads, mixed_groups, -1, dim * dim), heads,
                reuse.pair_buffer)
        read = reuse.read(lines_of_q, states.reshape(-1, dim, dim))
        del states
        out.addcmul_(read.view(q.shape), of_heads(family.query_weights[side], heads))


class _ChunkwiseRetention(torch.autograd.Function):
    """Tiled retention that recomputes in backward instead of saving scores or states."""

    @staticmethod
    def forward(ctx, q, k, v, plan, head_groups, query_groups):
        ctx.save_for_backward(q, k, v)
        ctx.plan, ctx.slices = plan, (head_groups, query_groups)
        return _in_head_groups(q, k, v, plan, head_groups, query_groups)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v = ctx.saved_tensors
        plan, slices = ctx.plan, ctx.slices
        grad_out = grad_out.to(q.dtype)
        transposed = plan.causal  # a bidirectional D is symmetric: D^T = D
        grad_q = _in_head_groups(grad_out, v, k, plan, *slices)
        grad_k = _in_head_groups(v, grad_out, q, plan, *slices, flip=transposed)
        grad_v = _in_head_groups(k, q, grad_out, plan, *slices, flip=transposed)
        return grad_q, grad_k, grad_v, None, None, None


def retention_chunkwise(q, k, v, gamma, mask='causal_1d', grid=None, cls_token=False,
                        chunk_size=DEFAULT_CHUNK, memory_budget=None):
    """Tiled chunkwise retention of (B, H, N, d) tokens; the result has q's dtype.

    chunk_size: cells per tile (2D: about sqrt(chunk_size) square). memory_budget: bytes the
    operator may hold at once (None: no slicing); heads and tiles are then processed in slices.
    Computes in at least float32 with autocast off: bf16/fp16 sums over thousands of tokens
    lose the small terms (float32 and float64 inputs give exactly what they did before).
    """
    mask = mask_spec(mask)
    layout = make_layout(mask, q.shape[-2], grid, cls_token)
    dtype = compute_dtype(q.dtype)
    gamma = gamma.to(device=q.device, dtype=torch.float64)
    plan = tile_plan(gamma, layout, chunk_size, mask.causal, dtype)
    with torch.autocast(q.device.type, enabled=False):
        inputs = q.to(dtype), k.to(dtype), v.to(dtype)
        slices = (1, 1)
        if memory_budget is not None:
            slices = slices_for_budget(memory_budget, q.shape[0], q.shape[1], layout.grid_rows,
                                       layout.cols, q.shape[-1], chunk_size, mask.causal,
                                       torch.finfo(dtype).bits // 8, _is_packed(*inputs[1:]))
        out = _ChunkwiseRetention.apply(*inputs, plan, *slices)
    return out.to(q.dtype)


def chunk_step(q, k, v, columns, gamma, causal=True, update_state=True,
               chunk_size=DEFAULT_CHUNK):
    """One piece of R full rows of a causal stream: q, k, v (B, H, R, C, d); columns
    (B, H, C, d, d) float32+ column states of the rows above, or None at the start.

    Returns the piece's output (compute dtype) and the column states after it (None if not
    `update_state`, e.g. for the last piece). A fixed number of ops per piece.
    """
    if not causal:
        raise ValueError('only causal masks stream piece by piece; a bidirectional mask needs '
                         'the whole sequence (use retention(..., mode="chunkwise"))')
    batch, heads, rows, cols, dim = q.shape
    dtype = compute_dtype(q.dtype)
    gamma = gamma.to(device=q.device, dtype=torch.float64)
    with torch.autocast(q.device.type, enabled=False):
        q, k, v = (t.to(dtype) for t in (q, k, v))
        plan = tile_plan(gamma, TokenLayout(rows, cols), chunk_size, True, dtype)
        # through the recompute Function: _tiled writes in place and runs without autograd
        out = _ChunkwiseRetention.apply(
            *(t.reshape(batch, heads, rows * cols, dim) for t in (q, k, v)), plan, 1, 1)
        out = out.view(batch, heads, rows, cols, dim)
        stream = stream_plan(gamma, rows, cols, dtype)
        if columns is not None:
            mixed = stream.mix(columns.reshape(batch, heads, 1, cols, dim * dim))
            queries = q.permute(0, 1, 3, 2, 4) * stream.query_weights
            read = queries @ mixed.view(batch, heads, cols, dim, dim)
            out = out + read.permute(0, 1, 3, 2, 4)
        if not update_state:
            return out, None
        keys = k.permute(0, 1, 3, 4, 2) * stream.key_weights  # (B, H, C, d, R)
        sums = keys @ v.permute(0, 1, 3, 2, 4)
        if columns is None:
            return out, sums
        return out, columns * stream.piece_decay + sums


class _StreamPlan:
    """Constants of a streamed piece of R rows: key/query weights, decay, column mix."""

    def __init__(self, gamma, rows, cols, dtype):
        powers = decay_powers(gamma, rows + 1, dtype)
        self.key_weights = powers[:, :-1].flip(-1)[None, :, None, None, :]  # gamma^(R-1-r)
        self.query_weights = powers[:, 1:][None, :, None, :, None]  # gamma^(r+1)
        self.piece_decay = (gamma.double() ** rows).to(dtype)[None, :, None, None, None]
        self.mix = DecaySum(gamma, cols, 'causal', dtype)


def stream_plan(gamma, rows, cols, dtype):
    if torch.compiler.is_compiling():
        return _StreamPlan(gamma, rows, cols, dtype)
    key = ('stream', tuple(gamma.tolist()), rows, cols, dtype, gamma.device)
    if key not in _PLANS:
        if len(_PLANS) >= 16:
            _PLANS.clear()
        with torch.inference_mode(False), torch.no_grad():  # kept: normal tensors
            _PLANS[key] = _StreamPlan(gamma, rows, cols, dtype)
    return _PLANS[key]
