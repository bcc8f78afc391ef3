"""Every form of retention x every mask equals the naive dense-mask reference."""
import itertools

import pytest
import torch

from vir_dense.ops.retention import (MASKS, decay_gammas, decay_row_sums, mask_spec,
                                     retention, retention_chunkwise, retention_naive,
                                     retention_parallel)
from vir_dense.ops.retention.naive import naive_decay_mask
from vir_dense.ops.retention.decay import TokenLayout, make_layout

# (rows, cols): square, non-square both ways, single row/column, and grids whose last chunk
# is shorter than the chunk.
GRIDS = [(4, 4), (3, 5), (5, 2), (1, 6), (7, 1)]
FORMS = [('parallel', None), ('recurrent', None), ('chunkwise', 1), ('chunkwise', 6),
         ('chunkwise', 10), ('chunkwise', 1000)]


def _qkv(num_tokens, dtype, heads=3, dim=8, batch=2, seed=0, packed=False):
    """Three (B, H, N, d) tensors; packed: views of one (B, N, 3, H, d) projection, as the
    model makes them (the chunkwise form then reads k and v through one view)."""
    gen = torch.Generator().manual_seed(seed)
    if packed:
        projection = torch.randn(batch, num_tokens, 3, heads, dim, generator=gen, dtype=dtype)
        return list(projection.permute(2, 0, 3, 1, 4).unbind(0))
    return [torch.randn(batch, heads, num_tokens, dim, generator=gen, dtype=dtype)
            for _ in range(3)]


def test_decay_schedule_matches_paper():
    gammas = decay_gammas(6)
    assert torch.allclose(1 - gammas, 2.0 ** (-5 - 4 * torch.arange(6.) / 5).double())
    assert gammas[0].item() == pytest.approx(0.96875)
    assert gammas[-1].item() == pytest.approx(1 - 1 / 512)
    assert decay_gammas(1).item() == pytest.approx(0.96875)
    local = decay_gammas(3, exponents=(1, 5))
    assert local.tolist() == pytest.approx([0.5, 0.875, 0.96875])
    with pytest.raises(ValueError, match='decay exponents'):
        decay_gammas(3, exponents=(5, 1))


@pytest.mark.parametrize('mask,grid,cls_token',
                         list(itertools.product(MASKS, GRIDS, [False, True])))
def test_every_form_matches_naive_float64(mask, grid, cls_token):
    q, k, v = _qkv(grid[0] * grid[1] + cls_token, torch.float64)
    gamma = decay_gammas(3)
    reference = retention_naive(q, k, v, gamma, mask, grid, cls_token)
    # Without autograd the chunkwise form updates its states and outputs in place.
    for (mode, chunk_size), grad in itertools.product(FORMS, [True, False]):
        with torch.set_grad_enabled(grad):
            out = retention(q, k, v, mask=mask, mode=mode, grid=grid, cls_token=cls_token,
                            chunk_size=chunk_size or 64)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-10,
                                   msg=f'{mode} chunk={chunk_size} grad={grad}')


@pytest.mark.parametrize('mask,grid,cls_token',
                         list(itertools.product(MASKS, GRIDS, [False, True])))
def test_closed_form_row_sums_equal_the_dense_mask(mask, grid, cls_token):
    causal = mask_spec(mask).causal
    layout = make_layout(mask, grid[0] * grid[1] + cls_token, grid, cls_token)
    for gamma in (decay_gammas(3), torch.tensor([0.5, 0.9, 0.999], dtype=torch.float64)):
        dense = naive_decay_mask(gamma, layout, causal).sum(-1)
        torch.testing.assert_close(decay_row_sums(gamma, layout, causal), dense,
                                   rtol=1e-12, atol=0)


@pytest.mark.parametrize('mask', list(MASKS))
@pytest.mark.parametrize('cls_token', [False, True])
def test_normalized_forms_match_naive_and_do_not_grow_with_tokens(mask, cls_token):
    gamma = decay_gammas(3)
    for grid in [(5, 4), (3, 7)]:
        q, k, v = _qkv(grid[0] * grid[1] + cls_token, torch.float64)
        reference = retention_naive(q, k, v, gamma, mask, grid, cls_token, normalize=True)
        for mode, chunk_size in FORMS:
            out = retention(q, k, v, mask=mask, mode=mode, grid=grid, cls_token=cls_token,
                            chunk_size=chunk_size or 64, normalize=True)
            torch.testing.assert_close(out, reference, rtol=0, atol=1e-12,
                                       msg=f'{mode} chunk={chunk_size}')
    # A decay-weighted mean: with q.k = 1 and v = 1 everywhere every output is exactly 1,
    # at any grid size, where the unnormalized sum grows with the number of tokens.
    for grid in [(4, 4), (32, 32)]:
        ones = torch.ones(1, 3, grid[0] * grid[1] + cls_token, 1, dtype=torch.float64)
        normalized = retention(ones, ones, ones, mask=mask, mode='chunkwise', grid=grid,
                               cls_token=cls_token, chunk_size=64, normalize=True)
        torch.testing.assert_close(normalized, torch.ones_like(normalized))
    plain = retention(ones, ones, ones, mask=mask, grid=grid, cls_token=cls_token)
    assert plain.max() > 30


@pytest.mark.parametrize('mask', list(MASKS))
def test_every_form_matches_naive_float32(mask):
    grid = (6, 7)
    q, k, v = _qkv(grid[0] * grid[1] + 1, torch.float32, heads=4, dim=16)
    reference = retention_naive(q.double(), k.double(), v.double(), decay_gammas(4), mask,
                                grid, True)
    for mode, chunk_size in FORMS:
        out = retention(q, k, v, mask=mask, mode=mode, grid=grid, cls_token=True,
                        chunk_size=chunk_size or 64)
        assert out.dtype == torch.float32
        relative = (out.double() - reference).norm() / reference.norm()
        assert relative < 1e-4, (mode, chunk_size, relative.item())
        assert (out.double() - reference).abs().max() < 1e-4 * reference.abs().max()


def test_naive_mask_values_follow_the_definition():
    gamma = torch.tensor([0.5], dtype=torch.float64)
    layout = TokenLayout(2, 3, cls_token=True)  # patches (x, y), class token at (2, 2)
    causal_2d = naive_decay_mask(gamma, layout, causal=True)[0]
    bidir_2d = naive_decay_mask(gamma, layout, causal=False)[0]
    # patch 4 is at (1, 1); patch 0 at (0, 0): dx = dy = 1
    assert causal_2d[4, 0] == 0.5 ** 2 and causal_2d[0, 4] == 0
    # patch 2 at (2, 0) is not in the upper-left quadrant of patch 4 at (1, 1)
    assert causal_2d[4, 2] == 0 and bidir_2d[4, 2] == 0.5 ** 2
    # the class token (last) sees every patch: patch 0 at distance (2, 2)
    assert causal_2d[-1, 0] == 0.5 ** 4 and (causal_2d[-1] > 0).all()
    assert (causal_2d[:-1, -1] == 0).all()  # and no patch sees it under a causal mask
    one_d = naive_decay_mask(gamma, TokenLayout(4, 1), causal=True)[0]
    assert one_d[3, 1] == 0.25 and one_d[1, 3] == 0


@pytest.mark.parametrize('mask', list(MASKS))
def test_parallel_and_chunkwise_gradients_agree(mask):
    grid = (5, 3)
    tensors = _qkv(grid[0] * grid[1] + 1, torch.float64, heads=2, dim=4)
    grads = {}
    for name, fn in [('parallel', retention_parallel),
                     ('chunkwise', lambda *a: retention_chunkwise(*a, chunk_size=4))]:
        inputs = [t.clone().requires_grad_(True) for t in tensors]
        out = fn(*inputs, decay_gammas(2), mask, grid, True)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[name] = [t.grad for t in inputs]
    for parallel_grad, chunk_grad in zip(grads['parallel'], grads['chunkwise']):
        torch.testing.assert_close(chunk_grad, parallel_grad, rtol=0, atol=1e-10)


@pytest.mark.parametrize('mask', ['causal_1d', 'causal_2d'])
@pytest.mark.parametrize('mode', ['parallel', 'recurrent', 'chunkwise'])
def test_causal_masks_are_causal(mask, mode):
    grid = (4, 5)
    q, k, v = _qkv(grid[0] * grid[1] + 1, torch.float64)
    base = retention(q, k, v, mask=mask, mode=mode, grid=grid, cls_token=True, chunk_size=5)
    token = 12  # (x, y) = (2, 2)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, token] += 1.0
    v2[:, :, token] -= 2.0
    moved = retention(q, k2, v2, mask=mask, mode=mode, grid=grid, cls_token=True, chunk_size=5)
    changed = (moved - base).abs().amax(dim=(0, 1, 3)) > 1e-12
    assert not changed[:token].any(), 'an earlier token saw a later one'
    assert changed[token] and changed[-1]  # itself and the class token see it
    if mask == 'causal_2d':
        # (1, 3) is below but left of (2, 2): outside its upper-left quadrant
        assert not changed[3 * 5 + 1]
        assert changed[3 * 5 + 2] and changed[2 * 5 + 3]  # below it and right of it see it


@pytest.mark.parametrize('mode', ['parallel', 'chunkwise'])
@pytest.mark.parametrize('mask', ['causal_1d', 'bidirectional_2d'])
def test_bf16_autocast_at_4096_tokens(mode, mask):
    """bf16 q, k, v (what a bf16 model feeds the operator) at 4096 tokens, large activations:
    the float64 result of those inputs rounded once to bf16 (sums over thousands of tokens in
    bf16 would lose the small terms)."""
    grid = (64, 64)
    q, k, v = (t.mul(3).bfloat16() for t in _qkv(grid[0] * grid[1], torch.float32, heads=2,
                                                 dim=16, batch=1))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = retention(q, k, v, mask=mask, mode=mode, grid=grid, chunk_size=512)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    reference = retention(q.double(), k.double(), v.double(), mask=mask, mode='chunkwise',
                          grid=grid, chunk_size=512)
    differ = (out != reference.bfloat16()).double().mean().item()
    assert differ <= 0.01, f'{differ:.1%} of the outputs differ from the reference rounded once'


def test_bad_arguments_are_named():
    q, k, v = _qkv(12, torch.float32)
    with pytest.raises(ValueError, match='unknown retention mask'):
        retention(q, k, v, mask='diagonal')
    with pytest.raises(ValueError, match='unknown retention mode'):
        retention(q, k, v, mode='fast')
    with pytest.raises(ValueError, match='needs grid'):
        retention(q, k, v, mask='causal_2d')
    with pytest.raises(ValueError, match='grid 3x3 holds 9'):
        retention(q, k, v, mask='causal_2d', grid=(3, 3))
    with pytest.raises(ValueError, match='chunk_size'):
        retention(q, k, v, mode='chunkwise', chunk_size=0)


def test_chunkwise_memory_has_no_token_by_token_matrix():
    """The chunkwise form never materialises an N x N tensor (checked by tracing allocations)."""
    grid = (32, 32)
    q, k, v = _qkv(grid[0] * grid[1], torch.float32, heads=1, dim=8, batch=1)
    largest = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if torch.is_tensor(result):
                largest.append(result.numel())
            return result

    with Spy():
        retention(q, k, v, mask='bidirectional_2d', mode='chunkwise', grid=grid, chunk_size=64)
    num_tokens = grid[0] * grid[1]
    assert max(largest) < num_tokens * num_tokens / 8


@pytest.mark.parametrize('kind', ['causal', 'anticausal', 'symmetric', 'causal_strict',
                                  'anticausal_strict'])
@pytest.mark.parametrize('gamma', [[0.96875, 0.998], [0.01, 0.2]], ids=['vir', 'underflow'])
def test_decay_sums_equal_the_matrix_product(kind, gamma):
    """Direct (short axes) and blocked (long axes, also lengths that are not whole blocks)
    decay sums equal the dense weight matrix written from the definition, also where powers
    of gamma underflow."""
    from vir_dense.ops.retention.decay_sum import BLOCK, DIRECT_MAX, DecaySum, decay_sum
    gamma = torch.tensor(gamma, dtype=torch.float64)
    for length in [1, 7, DIRECT_MAX, DIRECT_MAX + 1, 5 * BLOCK, 40 * BLOCK + 3]:
        i = torch.arange(length, dtype=torch.float64)[:, None]
        j = torch.arange(length, dtype=torch.float64)[None, :]
        exponent = {'causal': i - j, 'anticausal': j - i, 'symmetric': (i - j).abs(),
                    'causal_strict': i - j - 1, 'anticausal_strict': j - i - 1}[kind]
        weights = torch.where(exponent >= 0, gamma[:, None, None] ** exponent.clamp(min=0),
                              torch.zeros(()))
        x = torch.randn(2, 2, 3, length, 5, dtype=torch.float64)
        expected = torch.einsum('hij,bhmjk->bhmik', weights, x)
        torch.testing.assert_close(decay_sum(x, gamma, kind), expected, rtol=1e-10,
                                   atol=1e-12, msg=f'length {length}')
        if not kind.endswith('strict'):  # in place (triangular solves), also for one head
            summed = DecaySum(gamma, length, kind, torch.float64)
            torch.testing.assert_close(summed.inplace(x.clone()), expected, rtol=1e-10,
                                       atol=1e-12, msg=f'in place, length {length}')
            torch.testing.assert_close(summed.inplace(x[:, 1:].clone(), slice(1, 2)),
                                       expected[:, 1:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('mask', list(MASKS))
def test_wide_grids_and_many_chunks_match_naive(mask):
    """Grids wider than one column block (blocked column mixing) and with more chunks than
    one chunk-carry matrix of the small tests, in both autograd and no-grad paths."""
    grid = (9, 70)
    q, k, v = _qkv(grid[0] * grid[1] + 1, torch.float64, heads=2, dim=4, batch=1)
    gamma = torch.tensor([0.7, 0.99], dtype=torch.float64)
    reference = retention_naive(q, k, v, gamma, mask, grid, True)
    for chunk_size, grad in itertools.product([70, 140, 5000], [True, False]):
        with torch.set_grad_enabled(grad):
            out = retention(q, k, v, mask=mask, mode='chunkwise', grid=grid, cls_token=True,
                            chunk_size=chunk_size, gamma=gamma)
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-10,
                                   msg=f'chunk {chunk_size} grad {grad}')


def test_auto_mode_picks_parallel_for_short_sequences_and_chunkwise_above():
    from vir_dense.ops.retention import PARALLEL_MAX_TOKENS, resolve_mode
    assert PARALLEL_MAX_TOKENS == 2048
    assert resolve_mode('auto', 1025) == 'parallel'  # a 512² crop with its class token
    assert resolve_mode('auto', 2048, 1024) == 'parallel'
    assert resolve_mode('auto', 2049, 16) == 'chunkwise'
    assert resolve_mode('recurrent', 10, 1024) == 'recurrent'
    # with a memory budget, 'auto' keeps the parallel form only where its N x N scores fit
    scores = 6 * 1025 * 1025 * 4  # ViR-S heads, float32
    assert resolve_mode('auto', 1025, memory_budget=scores, batch_heads=6) == 'parallel'
    assert resolve_mode('auto', 1025, memory_budget=scores - 1, batch_heads=6) == 'chunkwise'
    assert resolve_mode('parallel', 1025, memory_budget=1, batch_heads=6) == 'parallel'


# Tile geometry: (grid, chunk_size) with tiles that do not divide the grid, one band, one tile
# column, single rows and columns, and many tiles both ways (wide blocked column mixes).
TILED = [((9, 70), 16), ((17, 33), 16), ((1, 40), 9), ((40, 1), 9), ((5, 5), 4),
         ((13, 11), 30), ((6, 80), 4), ((3, 7), 1)]
SCHEDULES = {'vir': decay_gammas(3), 'local': decay_gammas(3, exponents=(1, 5))}


@pytest.mark.parametrize('mask', list(MASKS))
@pytest.mark.parametrize('schedule', list(SCHEDULES))
def test_tiled_geometries_match_naive(mask, schedule):
    """Every tile geometry, with and without class token, both decay schedules, with and
    without autograd, under head/tile slices, and with q, k, v as separate tensors or as
    slices of one projection, equals the float64 reference."""
    from vir_dense.ops.retention.chunkwise import _in_head_groups, tile_plan
    gamma = SCHEDULES[schedule]
    spec = mask_spec(mask)
    for (grid, chunk_size), cls_token, packed in itertools.product(TILED, [False, True],
                                                                   [False, True]):
        q, k, v = _qkv(grid[0] * grid[1] + cls_token, torch.float64, dim=4, batch=1,
                       packed=packed)
        reference = retention_naive(q, k, v, gamma, mask, grid, cls_token)
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                out = retention(q, k, v, mask=mask, mode='chunkwise', grid=grid,
                                cls_token=cls_token, chunk_size=chunk_size, gamma=gamma)
            torch.testing.assert_close(out, reference, rtol=0, atol=1e-10,
                                       msg=f'{grid} chunk {chunk_size} grad {grad}')
        layout = make_layout(spec, q.shape[2], grid, cls_token)
        plan = tile_plan(gamma, layout, chunk_size, spec.causal, torch.float64)
        for slices in [(3, 1), (1, 2), (3, 3)]:
            torch.testing.assert_close(_in_head_groups(q, k, v, plan, *slices), reference, rtol=0,
                                       atol=1e-10, msg=f'{grid} slices {slices}')


@pytest.mark.parametrize('mask', list(MASKS))
def test_tiled_gradients_match_naive(mask):
    """The recompute backward (three more tiled calls; D^T as the reversed cell order for
    causal masks) gives the reference gradients on grids with padding in both axes, for
    separate q, k, v and for slices of one projection."""
    gamma = SCHEDULES['local']
    for (grid, chunk_size), cls_token in itertools.product(TILED[:4], [False, True]):
        tokens = grid[0] * grid[1] + cls_token
        projection = torch.randn(1, tokens, 3, 3, 4, dtype=torch.float64)
        weights = torch.randn(1, 3, tokens, 4, dtype=torch.float64)
        grads = []
        for form, packed in [('naive', False), ('chunkwise', False), ('chunkwise', True)]:
            leaf = projection.clone().requires_grad_(True)
            inputs = leaf.permute(2, 0, 3, 1, 4).unbind(0)
            if not packed:  # three separate tensors
                inputs = [t.contiguous() for t in inputs]
            if form == 'naive':
                out = retention_naive(*inputs, gamma, mask, grid, cls_token)
            else:
                out = retention(*inputs, mask=mask, mode='chunkwise', grid=grid,
                                cls_token=cls_token, chunk_size=chunk_size, gamma=gamma)
            (out * weights).sum().backward()
            grads.append(leaf.grad)
        for got in grads[1:]:
            torch.testing.assert_close(got, grads[0], rtol=0, atol=1e-10,
                                       msg=f'{grid} chunk {chunk_size}')


def test_memory_budget_slices_and_names_an_impossible_budget():
    """A budget between the least and the unsliced transient memory picks slices that fit and
    gives the same result; a budget below the least is refused with the fix named."""
    from vir_dense.ops.retention.chunkwise import slices_for_budget, transient_elements
    geometry = (1, 6, 10, 16, 64, 16, False)  # (9, 16) grid + class row, 4 x 4 tiles, d = 64
    full = 8 * transient_elements(*geometry)
    least = 8 * transient_elements(*geometry, 6, 16)
    assert least < full / 2
    assert slices_for_budget(full, *geometry, element_bytes=8) == (1, 1)
    budget = (least + full) // 2
    head_groups, query_groups = slices_for_budget(budget, *geometry, element_bytes=8)
    assert head_groups * query_groups > 1
    assert 8 * transient_elements(*geometry, head_groups, query_groups) <= budget
    q, k, v = _qkv(9 * 16 + 1, torch.float64, heads=6, dim=64, batch=1)
    kwargs = dict(mask='bidirectional_2d', mode='chunkwise', grid=(9, 16), cls_token=True,
                  chunk_size=16, gamma=decay_gammas(6))
    torch.testing.assert_close(retention(q, k, v, memory_budget=budget, **kwargs),
                               retention(q, k, v, **kwargs), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match='memory_budget=.* raise it'):
        retention(q, k, v, memory_budget=least // 2, **kwargs)


def test_chunkwise_ops_per_call_do_not_grow_with_the_image():
    """The op count is a property of the code, not of the grid: the same dispatched ATen ops
    for a 2-band and a 9-band grid, and for 2 and 9 tile columns (blocked column mix)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    def count(grid):
        q, k, v = _qkv(grid[0] * grid[1] + 1, torch.float32, heads=2, dim=4, batch=1)
        kwargs = dict(mask='bidirectional_2d', mode='chunkwise', grid=grid, cls_token=True,
                      chunk_size=16)
        retention(q, k, v, **kwargs)  # builds the geometry's constants
        Count.ops = 0
        with torch.no_grad(), Count():
            retention(q, k, v, **kwargs)
        return Count.ops
    assert count((7, 8)) == count((35, 8))
    assert count((7, 80)) == count((35, 144))


@pytest.mark.parametrize('mask,grid,cls_token,normalize',
                         list(itertools.product(['causal_1d', 'causal_2d'], [(3, 5), (5, 2)],
                                                [False, True], [False, True])))
def test_streamed_pieces_equal_the_whole_sequence(mask, grid, cls_token, normalize):
    """stream_pieces + retention_stream (state carried from piece to piece) = retention."""
    from vir_dense.ops.retention import retention_stream, stream_pieces
    q, k, v = _qkv(grid[0] * grid[1] + cls_token, torch.float64)
    gamma = decay_gammas(3)
    reference = retention_naive(q, k, v, gamma, mask, grid, cls_token, normalize=normalize)
    for mode, chunk_size in [('recurrent', 1), ('chunkwise', 1), ('chunkwise', 6),
                             ('chunkwise', 1000)]:
        pieces = stream_pieces(mask_spec(mask), q.shape[2], grid, cls_token, mode, chunk_size,
                               normalize=normalize, gamma=gamma)
        assert [p.start for p in pieces[1:]] == [p.stop for p in pieces[:-1]]
        assert pieces[-1].stop == q.shape[2] and [p.last for p in pieces].count(True) == 1
        state, outs = None, []
        for piece in pieces:
            part = [t[:, :, piece.start:piece.stop] for t in (q, k, v)]
            out, state = retention_stream(*part, piece, state, gamma)
            outs.append(out)
        assert state is None  # nothing to carry after the last piece
        torch.testing.assert_close(torch.cat(outs, dim=2), reference, rtol=0, atol=1e-10,
                                   msg=f'{mode} chunk {chunk_size}')


def test_stream_pieces_refuse_what_cannot_stream():
    from vir_dense.ops.retention import stream_pieces
    with pytest.raises(ValueError, match='only causal masks stream'):
        stream_pieces('bidirectional_2d', 12, (3, 4))
    with pytest.raises(ValueError, match='streaming mode'):
        stream_pieces('causal_2d', 12, (3, 4), mode='parallel')
    with pytest.raises(ValueError, match='needs the layers'):
        stream_pieces('causal_2d', 12, (3, 4), normalize=True)


def test_mask_spec_is_parsed_once_and_accepted_by_every_form():
    spec = mask_spec('causal_2d')
    assert (spec.name, spec.causal, spec.two_d) == ('causal_2d', True, True)
    assert mask_spec(spec) is spec and MASKS['causal_2d'] is spec
    with pytest.raises(ValueError, match='unknown retention mask'):
        mask_spec('square')
    q, k, v = _qkv(13, torch.float64)
    for mode in ('parallel', 'recurrent', 'chunkwise'):
        torch.testing.assert_close(
            retention(q, k, v, mask=spec, mode=mode, grid=(3, 4), cls_token=True,
                      chunk_size=4, normalize=True),
            retention(q, k, v, mask='causal_2d', mode=mode, grid=(3, 4), cls_token=True,
                      chunk_size=4, normalize=True), rtol=0, atol=0)
