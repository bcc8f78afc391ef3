"""Training through the chunkwise form: the same gradients as the parallel form (with and
without gradient checkpointing), and nothing larger than q, k, v kept for the backward pass."""
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


def test_training_block_keeps_what_a_vit_block_keeps():
    """While training, a ViR block folds q's scale and its LayerScales into the linear layers
    before them: the same gradients, and autograd keeps what a timm ViT block (no LayerScale)
    keeps plus the three folded weight matrices, not three more token tensors."""
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
    weights = {m: m.weight.numel() * 8 for m in
               (block.retention.qkv, block.retention.proj, block.mlp.fc2)}
    # the two LayerScale inputs are not kept; their folded weight matrices are
    assert kept[1] - kept[0] == 2 * token - weights[block.retention.proj] - weights[block.mlp.fc2]
    vit = ViTBlock(dim, 2).double().train()
    assert kept[0] <= _saved_bytes(vit, vit, x) + sum(weights.values())
