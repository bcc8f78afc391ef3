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
