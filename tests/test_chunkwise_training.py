"""Training through the chunkwise form: the same gradients as the parallel form (with and
without gradient checkpointing), and nothing larger than q, k, v kept for the backward pass."""
import pytest
import torch
from mmdet.registry import MODELS

import vir_dense  # noqa: F401  (registers ViR)
from vir_dense.ops.retention import MASKS, decay_gammas, retention

TINY = dict(embed_dims=64, num_layers=2, num_heads=2)


def _grads(**kwargs):
    torch.manual_seed(0)
    backbone = MODELS.build(dict(type="ViR", arch=TINY, img_size=64, out_indices=(0, 1),
                                 pyramid=None,
                                 drop_path_rate=0.0, chunk_size=30, **kwargs)).train()
    image = torch.randn(1, 3, 96, 112)
    calls = []
    # a pre-hook: checkpoint's recomputation may stop early, before forward hooks would run
    backbone.blocks[0].register_forward_pre_hook(lambda *args: calls.append(1))
    sum(o.square().mean() for o in backbone(image)).backward()
    return {n: p.grad for n, p in backbone.named_parameters() if p.grad is not None}, calls


def test_chunkwise_training_matches_parallel_with_and_without_checkpointing():
    reference, _ = _grads(retention_mode='parallel')
    for with_cp in (False, True):
        grads, calls = _grads(retention_mode='chunkwise', with_cp=with_cp)
        assert len(calls) == (2 if with_cp else 1)  # checkpointing really recomputed
        assert grads.keys() == reference.keys()
        for name, grad in grads.items():
            error = (grad - reference[name]).norm() / reference[name].norm().clamp(min=1e-12)
            assert error < 1e-4, (with_cp, name, error.item())


def test_chunkwise_backward_keeps_only_q_k_v():
    """Autograd keeps nothing of the chunk scores or states (they would be ~R*C/d and
    ~d/R times the size of q): the backward recomputes them."""
    grid = (12, 20)
    q, k, v = (torch.randn(1, 2, grid[0] * grid[1] + 1, 8, requires_grad=True)
               for _ in range(3))
    for mask in MASKS:
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = retention(q, k, v, mask=mask, mode='chunkwise', grid=grid, cls_token=True,
                            chunk_size=60, gamma=decay_gammas(2))
        out.sum().backward()
        assert saved and max(saved) <= 2 * 13 * 20 * 8, (mask, max(saved))
        assert sum(saved) <= 3 * 2 * 13 * 20 * 8 + 64, (mask, sum(saved))


def _saved_bytes(run, module, x):
    """Bytes of the tensors autograd keeps for backward, beyond the parameters and input."""
    skip = {p.untyped_storage().data_ptr() for p in module.parameters()}
    skip.add(x.untyped_storage().data_ptr())
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run(x)
    return sum(storages.values())


def test_training_block_keeps_less_than_a_vit_block():
    """While training, a ViR block folds q's scale and its LayerScales into the linear layers
    before them and recomputes GELU in the backward: the same gradients, and autograd keeps
    neither the LayerScale inputs, nor GELU's output, nor a folded weight: four token tensors
    (GELU's output) less than a timm ViT block (no LayerScale) keeps."""
    from timm.models.vision_transformer import Block as ViTBlock
    from vir_dense.models.vir import Block, RetentionContext
    torch.manual_seed(0)
    dim, grid = 64, (32, 32)
    ctx = RetentionContext('bidirectional_2d', 'chunkwise', grid, True, 64)
    block = Block(dim, 2, init_values=0.5).double().train()
    x = torch.randn(1, grid[0] * grid[1] + 1, dim, dtype=torch.float64, requires_grad=True)
    kept, grads = [], []
    for folded in (True, False):
        block.layer_scaled = folded
        kept.append(_saved_bytes(lambda t: block(t, ctx), block, x))
        block.zero_grad()
        out = block(x, ctx)
        grad_x, = torch.autograd.grad(out.square().sum(), x, retain_graph=True)
        out.square().sum().backward()
        grads.append([grad_x] + [p.grad.clone() for p in block.parameters()])
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    token = x.numel() * x.element_size()
    # the two LayerScale inputs and GELU's output (4 tokens wide)
    assert kept[1] - kept[0] == 6 * token
    vit = ViTBlock(dim, 2).double().train()
    assert kept[0] + 4 * token <= _saved_bytes(vit, vit, x)


@pytest.mark.parametrize('bias', [True, False])
def test_lean_training_functions_give_autograd_gradients(bias):
    """scaled_linear and gelu_mlp (which keep less for the backward) against plain autograd
    through the same ops, float64: the output and the gradient of every input."""
    from vir_dense.models.lean_training import gelu_mlp, scaled_linear
    torch.manual_seed(0)
    fc1 = torch.nn.Linear(6, 12, bias=bias).double()
    fc2 = torch.nn.Linear(12, 6, bias=bias).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 5, 6, dtype=torch.float64)
    inputs = [x, scale] + list(fc1.parameters()) + list(fc2.parameters())
    cases = [(lambda: scaled_linear(x, fc2.weight[:, :6], fc2.bias, scale),
              lambda: torch.nn.functional.linear(x, fc2.weight[:, :6], fc2.bias) * scale),
             (lambda: gelu_mlp(x, fc1, fc2, scale, 'tanh'),
              lambda: fc2(torch.nn.functional.gelu(fc1(x), approximate='tanh')) * scale),
             (lambda: gelu_mlp(x, fc1, fc2, scale),
              lambda: fc2(torch.nn.functional.gelu(fc1(x))) * scale)]
    for lean, plain in cases:
        torch.testing.assert_close(lean(), plain(), rtol=1e-12, atol=1e-12)
        got, expected = (torch.autograd.grad((run() * weights).sum(), inputs, allow_unused=True,
                                             materialize_grads=True) for run in (lean, plain))
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)



@pytest.mark.parametrize('mode', ['parallel', 'chunkwise'])
def test_inference_block_writes_in_place_with_the_same_values(mode):
    """Without autograd in eval mode a block adds its LayerScaled branches and applies GELU in
    place, and its input survives: bit for bit what the module-by-module forward gives. A hook
    on a module that path would skip, or autocast, sends the block back to the module-by-module
    forward."""
    from vir_dense.models.vir import Block, RetentionContext
    torch.manual_seed(0)
    dim, grid = 64, (12, 10)
    ctx = RetentionContext('bidirectional_2d', mode, grid, True, 16)
    block = Block(dim, 2, init_values=0.5).eval()
    x = torch.randn(2, grid[0] * grid[1] + 1, dim)
    before = x.clone()
    expected = block(x, ctx)  # autograd enabled: module by module
    assert block._in_place(x) is False
    with torch.no_grad():
        assert block._in_place(x)
        got = block(x, ctx)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert torch.equal(x, before)
        seen = []
        handle = block.mlp.act.register_forward_hook(lambda *args: seen.append(1))
        assert not block._in_place(x)
        torch.testing.assert_close(block(x, ctx), expected, rtol=0, atol=0)
        handle.remove()
        with torch.autocast('cpu', dtype=torch.bfloat16):  # would round the residual stream
            assert not block._in_place(x)
    assert seen == [1]


def test_shared_workspace_gives_the_same_values_and_is_reused():
    """Inference through run_blocks shares one workspace between the chunkwise calls and the
    MLPs (ops.retention.workspace): bit for bit the values of calls that each allocate their
    own buffers, whatever sizes follow one another, and no workspace outlives the forward."""
    import timm
    from vir_dense.ops.retention import retention_chunkwise, reused_buffers
    from vir_dense.ops.retention.workspace import SCRATCH, active_workspace
    torch.manual_seed(0)
    gamma = decay_gammas(2)
    calls = []
    for grid in [(6, 7), (12, 10), (6, 7)]:  # grows, then a smaller call in a larger buffer
        qkv = torch.randn(1, grid[0] * grid[1] + 1, 3, 2, 8).permute(2, 0, 3, 1, 4)
        calls.append((grid, qkv.unbind(0)))
    alone = [retention_chunkwise(*qkv, gamma, 'bidirectional_2d', grid, True, 16)
             for grid, qkv in calls]
    key = (SCRATCH, torch.float32, torch.device('cpu'))
    scratch, results = [], []
    with torch.no_grad(), reused_buffers() as workspace:
        for (grid, qkv), expected in zip(calls, alone):
            results.append(retention_chunkwise(*qkv, gamma, 'bidirectional_2d', grid, True, 16))
            scratch.append(workspace.buffers[key])
    # each result is lent, never handed back here: no later call wrote into it
    for got, expected in zip(results, alone):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # grown for the larger grid, then kept for the smaller one
    assert scratch[1].numel() > scratch[0].numel() and scratch[2] is scratch[1]
    assert active_workspace() is None

    model = timm.create_model('vir_tiny_patch16_224', depth=3, img_size=(96, 80),
                              retention_mode='chunkwise', chunk_size=16,
                              mask='bidirectional_2d', init_values=0.5).eval()
    with torch.no_grad():  # timm starts biases at zero, which would hide a dropped one
        for name, parameter in model.named_parameters():
            if name.endswith('bias'):
                parameter.normal_()
    image = torch.randn(2, 3, 96, 80)
    expected = model.forward_features(image)  # autograd on: module by module, no workspace
    with torch.no_grad():
        got = model.forward_features(image)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert active_workspace() is None

    # A block writes its output over its input where nothing else reads the input: never
    # over a tapped output, nor over one that a hook on its block may have kept.
    final, taps = model.forward_intermediates(image, indices=[1], output_fmt='NLC')
    with torch.no_grad():
        got_final, got_taps = model.forward_intermediates(image, indices=[1], output_fmt='NLC')
    kept = []
    for block in model.blocks:
        block.register_forward_hook(lambda module, args, out: kept.append(out))
    model.forward_features(image)
    grad_kept, kept[:] = list(kept), []
    with torch.no_grad():
        model.forward_features(image)
    assert len(kept) == len(grad_kept) == len(model.blocks)
    for got, want in zip([got_final] + got_taps + kept, [final] + taps + grad_kept):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_workspace_views_are_kept_while_their_buffer_lives():
    """A view of a workspace buffer is made once (each view is a dispatched op) and dropped
    with its buffer (it would keep the buffer's memory)."""
    from vir_dense.ops.retention.workspace import Workspace
    workspace = Workspace()
    buffer = workspace.take('a', 12, torch.float32, 'cpu')
    view = workspace.strided(buffer, (3, 4), (4, 1))
    assert workspace.strided(buffer, (3, 4), (4, 1)) is view
    assert workspace.strided(buffer, (2, 4), (4, 1), 4) is not view
    workspace.give('a', buffer)
    assert workspace.take('a', 8, torch.float32, 'cpu') is buffer  # large enough: kept
    workspace.give('a', buffer)
    grown = workspace.take('a', 24, torch.float32, 'cpu')
    assert grown is not buffer and not workspace.views
    workspace.lend('a', grown)
    workspace.hand_back('a', torch.zeros(3))  # not a lent result: nothing happens
    assert workspace.lent['a'] == [grown]
    workspace.hand_back('a', workspace.strided(grown, (2, 3), (3, 1)))
    assert not workspace.lent['a'] and workspace.take('a', 24, torch.float32, 'cpu') is grown


def test_workspace_only_without_a_memory_budget_or_autograd():
    """Buffers held from block to block would count against a memory budget, and autograd
    keeps per-call buffers: run_blocks opens the workspace only in plain inference."""
    import timm
    from vir_dense.ops.retention.workspace import active_workspace
    seen = []
    for budget in (None, 2**30):
        model = timm.create_model('vir_tiny_patch16_224', depth=1, img_size=64,
                                  retention_mode='chunkwise', chunk_size=16,
                                  retention_memory_budget=budget).eval()
        model.blocks[0].register_forward_pre_hook(
            lambda *args: seen.append(active_workspace() is not None))
        with torch.no_grad():
            model.forward_features(torch.randn(1, 3, 64, 64))
        model.forward_features(torch.randn(1, 3, 64, 64))
    assert seen == [True, False, False, False]


def test_blocks_write_over_the_embedded_tokens_only_when_no_one_saw_them():
    """In inference the embedded tokens become the blocks' stream buffer (run_blocks'
    reuse_input): the blocks write over them, with the same values; a forward hook on
    pos_drop (which returns them) may keep them, and then they are left alone."""
    import timm
    model = timm.create_model('vir_tiny_patch16_224', depth=2, img_size=(64, 48),
                              retention_mode='chunkwise', chunk_size=16,
                              mask='bidirectional_2d', init_values=0.5).eval()
    image = torch.randn(1, 3, 64, 48)
    expected = model.forward_features(image)  # autograd: no workspace, nothing reused
    expected_taps = model.forward_intermediates(image, indices=[0, 1], intermediates_only=True)
    embed, embedded = model.embed, []

    def recording_embed(*args, **kwargs):
        tokens, grid = embed(*args, **kwargs)
        embedded.append((tokens, tokens.clone()))
        return tokens, grid

    model.embed = recording_embed
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(image), expected, rtol=0, atol=0)
        taps = model.forward_intermediates(image, indices=[0, 1], intermediates_only=True)
    for got, want in zip(taps, expected_taps):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert all(not torch.equal(tokens, before) for tokens, before in embedded)  # written over

    seen = []
    model.pos_drop.register_forward_hook(lambda module, args, out: seen.append(out))
    embedded.clear()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(image), expected, rtol=0, atol=0)
    (tokens, before), = embedded
    torch.testing.assert_close(tokens, before, rtol=0, atol=0)
    assert seen[0] is tokens
