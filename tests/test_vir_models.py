"""ViR in timm: variants, parameter counts, mode equivalence, dynamic sizes, timm tooling."""
import pytest
import timm
import torch

import vir_dense  # noqa: F401  (registers the models)
from vir_dense.models.archs import VARIANTS
from vir_dense.ops.retention import stream_pieces

PARAM_COUNTS_M = {  # with a 1000-class head (the paper's sizes)
    'vir_small_patch16_224': 22.06,
    'vir_base_patch16_224': 86.59,
    'vir_large_patch16_224': 304.37,
    'vir_large_patch14_224': 304.25,
}


@pytest.mark.parametrize('name', sorted(PARAM_COUNTS_M))
def test_parameter_counts(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(count, 2) == PARAM_COUNTS_M[name]


def test_variants_are_registered_with_the_spec_layout():
    assert set(VARIANTS) <= set(timm.list_models('vir_*'))
    model = timm.create_model('vir_tiny_patch16_224')
    assert model.embed_dim == 192 and len(model.blocks) == 12
    assert model.blocks[0].retention.num_heads == 3
    block = model.blocks[0]
    assert torch.all(block.ls1.gamma == 1e-5) and block.norm1.eps == 1e-6
    assert block.mlp.fc1.out_features == 4 * 192
    assert model.pos_embed.shape == (1, 196, 192)  # patches only, no class slot
    cfg = model.pretrained_cfg
    assert cfg['mean'] == (0.5, 0.5, 0.5) and cfg['std'] == (0.5, 0.5, 0.5)
    assert cfg['classifier'] == 'head' and cfg['first_conv'] == 'patch_embed.proj'


def _small_model(mask, **kwargs):
    torch.manual_seed(0)
    model = timm.create_model('vir_tiny_patch16_224', depth=3, img_size=(80, 64), mask=mask,
                              num_classes=7, init_values=1.0, **kwargs)
    return model.double().eval()


@pytest.mark.parametrize('mask', ['causal_1d', 'causal_2d', 'bidirectional_1d',
                                  'bidirectional_2d'])
def test_same_weights_same_logits_in_every_mode(mask):
    model = _small_model(mask)
    image = torch.randn(2, 3, 80, 64, dtype=torch.float64)
    with torch.no_grad():
        features = model.forward_features(image)
        logits = model(image)
        for mode, chunk_size in [('recurrent', 1), ('chunkwise', 1), ('chunkwise', 8),
                                 ('chunkwise', 12), ('chunkwise', 1000)]:
            model.set_retention_mode(mode, chunk_size)
            torch.testing.assert_close(model.forward_features(image), features, rtol=0,
                                       atol=1e-10)
            torch.testing.assert_close(model(image), logits, rtol=0, atol=1e-10)
    model.set_retention_mode('parallel')


def test_memory_budget_changes_memory_not_results():
    """retention_memory_budget (bytes per retention call) slices the chunkwise operator:
    the same features, in eval and under autograd; a bad budget is refused at construction;
    a model that ran eagerly at another size still scripts."""
    from vir_dense.ops.retention.chunkwise import slices_for_budget, transient_elements
    model = _small_model('bidirectional_2d', retention_mode='chunkwise', chunk_size=8,
                         dynamic_img_size=True)
    image = torch.randn(1, 3, 96, 128, dtype=torch.float64, requires_grad=True)
    geometry = (1, 3, 7, 8, 64, 8, False)  # 6 x 8 patches + the class token's row, 3 heads
    budget = 8 * transient_elements(*geometry) // 2
    assert slices_for_budget(budget, *geometry, element_bytes=8) != (1, 1)
    results = []
    for memory_budget in (None, budget):
        model.retention_memory_budget = memory_budget
        features = model.forward_features(image)
        gradient, = torch.autograd.grad(features.square().sum(), image)
        results.append((features, gradient))
    for expected, got in zip(*results):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match='retention_memory_budget must be a positive'):
        timm.create_model('vir_tiny_patch16_224', retention_memory_budget=0.5)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted.forward_features(image.detach()), results[0][0].detach(),
                               rtol=0, atol=1e-10)


def test_create_model_kwargs_select_the_mode():
    model = timm.create_model('vir_tiny_patch16_224', retention_mode='chunkwise', chunk_size=64,
                              mask='causal_1d')
    assert (model.retention_mode, model.chunk_size, model.mask) == ('chunkwise', 64, 'causal_1d')
    with pytest.raises(ValueError, match='unknown retention mode'):
        timm.create_model('vir_tiny_patch16_224', retention_mode='fast')
    with pytest.raises(ValueError, match='unknown retention mask'):
        timm.create_model('vir_tiny_patch16_224', mask='square')


def test_streaming_keeps_one_state_per_layer():
    """A causal chunkwise classifier (last token only) feeds pieces through all blocks, never
    the sequence; dense features (every token) run block by block instead."""
    pieces = stream_pieces('causal_2d', 6 * 5 + 1, (6, 5), cls_token=True, mode='chunkwise',
                           chunk_size=10)
    assert [p.num_tokens for p in pieces] == [10, 10, 11]  # 2 rows per chunk, class token last
    model = _small_model('causal_2d')
    model.set_retention_mode('chunkwise', 16)
    seen = []
    for block in model.blocks:
        def spy(x, state, piece, _inner=block.retention.forward_stream):
            seen.append(x.shape[1])
            return _inner(x, state, piece)
        block.retention.forward_stream = spy
    with torch.no_grad():
        model.forward_features(torch.randn(1, 3, 80, 64, dtype=torch.float64))
        assert seen == []
        model(torch.randn(1, 3, 80, 64, dtype=torch.float64))
    # 5x4 grid, chunks of 4 rows = 16 tokens: 16, then 4 + the class token; per block.
    assert seen == [16] * 3 + [5] * 3


def test_dynamic_img_size_interpolates_pos_embed():
    model = timm.create_model('vir_tiny_patch16_224', depth=2, dynamic_img_size=True,
                              num_classes=5).eval()
    with torch.no_grad():
        for size in [(224, 224), (160, 288), (96, 64)]:
            assert model(torch.randn(1, 3, *size)).shape == (1, 5)
    strict = timm.create_model('vir_tiny_patch16_224', depth=2)
    with pytest.raises(AssertionError, match=r"Input height \(160\) doesn't match model \(224\)"):
        strict(torch.randn(1, 3, 160, 160))


def test_timm_save_and_load_checkpoint(tmp_path):
    model = timm.create_model('vir_tiny_patch16_224', depth=2, num_classes=10)
    path = tmp_path / 'vir.pth'
    torch.save({'state_dict': model.state_dict(), 'epoch': 3}, path)
    fresh = timm.create_model('vir_tiny_patch16_224', depth=2, num_classes=10)
    timm.models.load_checkpoint(fresh, str(path))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_timm_training_helpers():
    model = timm.create_model('vir_tiny_patch16_224', depth=2, num_classes=10)
    from timm.optim import create_optimizer_v2
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05,
                                    layer_decay=0.75)
    assert len(optimizer.param_groups) > 2
    model.set_grad_checkpointing(True)
    model.train()
    out = model(torch.randn(2, 3, 224, 224))
    out.sum().backward()
    assert model.pos_embed.grad is not None
    model.reset_classifier(3)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 3)
