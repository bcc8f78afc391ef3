"""The ViR backbone: multi-scale outputs, any input size, mode equivalence, frozen stages."""
import pytest
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmseg.registry import MODELS as MMSEG_MODELS

import vir_dense  # noqa: F401  (registers ViR)

TINY = dict(embed_dims=64, num_layers=4, num_heads=2)


def _build(registry=MMDET_MODELS, **kwargs):
    cfg = dict(type='ViR', arch=TINY, img_size=64, out_indices=(0, 1, 2, 3), drop_path_rate=0.0)
    cfg.update(kwargs)
    torch.manual_seed(0)
    return registry.build(cfg)


@pytest.mark.parametrize('registry', [MMDET_MODELS, MMSEG_MODELS], ids=['mmdet', 'mmseg'])
@pytest.mark.parametrize('size', [(64, 64), (96, 64), (70, 101), (33, 48)])
def test_taps_pyramid_shapes_and_strides(registry, size):
    backbone = _build(registry).eval()
    with torch.no_grad():
        outs = backbone(torch.randn(2, 3, *size))
    assert len(outs) == 4
    for out, stride in zip(outs, (4, 8, 16, 32)):
        assert out.shape == (2, 64, -(-size[0] // stride), -(-size[1] // stride)), stride
    assert backbone.out_strides == (4, 8, 16, 32)


def test_plain_maps_for_the_simple_feature_pyramid():
    backbone = _build(out_indices=(-1,), pyramid=None).eval()
    neck = MMDET_MODELS.build(dict(type='SimpleFeaturePyramid', in_channels=[64],
                                   out_channels=32, num_outs=5))
    with torch.no_grad():
        (feats,) = backbone(torch.randn(1, 3, 96, 80))
        pyramid = neck([feats])
    assert feats.shape == (1, 64, 6, 5)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(24, 20), (12, 10), (6, 5), (3, 3),
                                                      (2, 2)]


@pytest.mark.parametrize('mask', ['causal_1d', 'causal_2d', 'bidirectional_1d',
                                  'bidirectional_2d'])
def test_switching_retention_mode_gives_the_same_features(mask):
    backbone = _build(mask=mask, init_values=1.0).double().eval()
    image = torch.randn(1, 3, 70, 90, dtype=torch.float64)  # 5x6 grid after padding
    with torch.no_grad():
        reference = backbone(image)
        for mode, chunk_size in [('chunkwise', 6), ('chunkwise', 13), ('recurrent', 1)]:
            backbone.set_retention_mode(mode, chunk_size)
            for out, ref in zip(backbone(image), reference):
                torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize('mask', ['causal_2d', 'bidirectional_2d'])
def test_normalized_retention_same_features_in_every_mode(mask):
    backbone = _build(mask=mask, init_values=1.0, normalize_retention=True).double().eval()
    image = torch.randn(1, 3, 70, 90, dtype=torch.float64)
    with torch.no_grad():
        reference = backbone(image)
        backbone.normalize_retention = False
        assert not torch.allclose(backbone(image)[0], reference[0])  # the option does act
        backbone.normalize_retention = True
        for mode, chunk_size in [('chunkwise', 6), ('chunkwise', 13), ('recurrent', 1)]:
            backbone.set_retention_mode(mode, chunk_size)
            for out, ref in zip(backbone(image), reference):
                torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize('size', [(64, 64), (70, 101)])
def test_spatial_prior_map_comes_first_at_stride_4(size):
    backbone = _build(out_indices=(-1,), pyramid=None, patch_size=8,
                      spatial_prior=dict(channels=16)).eval()
    assert backbone.out_strides == (4, 8)
    with torch.no_grad():
        detail, feats = backbone(torch.randn(2, 3, *size))
    assert detail.shape == (2, 16, -(-size[0] // 4), -(-size[1] // 4))
    assert feats.shape == (2, 64, -(-size[0] // 8), -(-size[1] // 8))
    # an FPN over (stride 4, stride 8) gives the five levels RPN and RoI heads expect
    neck = MMDET_MODELS.build(dict(type='FPN', in_channels=[16, 64], out_channels=32,
                                   num_outs=5))
    with torch.no_grad():
        levels = neck((detail, feats))
    assert [level.shape[-1] for level in levels] == [-(-size[1] // s) for s in
                                                     (4, 8, 16, 32, 64)]


def test_class_token_default_follows_the_mask():
    assert _build(mask='bidirectional_2d').with_cls_token
    causal = _build(mask='causal_2d')
    assert not causal.with_cls_token
    # Under a causal mask no patch sees the (last) class token: dropping it changes nothing.
    with_cls = _build(mask='causal_2d', with_cls_token=True)
    with_cls.load_state_dict(causal.state_dict())
    image = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        for a, b in zip(causal.eval()(image), with_cls.eval()(image)):
            torch.testing.assert_close(a, b)


def test_with_cp_same_outputs_and_gradients():
    image = torch.randn(2, 3, 64, 64)
    grads = []
    for with_cp in (False, True):
        backbone = _build(with_cp=with_cp).train()
        calls, block = [], backbone.blocks[2]
        block.forward = lambda *args, _inner=block.forward: calls.append(1) or _inner(*args)
        outs = backbone(image)
        sum(o.square().mean() for o in outs).backward()
        # checkpointing is really on: the block runs again in backward
        assert len(calls) == (2 if with_cp else 1), (with_cp, len(calls))
        grads.append({n: p.grad.clone() for n, p in backbone.named_parameters()})
        if not with_cp:
            reference = [o.detach() for o in outs]
        else:
            for out, ref in zip(outs, reference):
                torch.testing.assert_close(out.detach(), ref)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_frozen_stages_freeze_what_they_say():
    backbone = _build(frozen_stages=2).train()
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert {'pos_embed', 'cls_token', 'patch_embed.proj.weight'} <= frozen
    assert any(n.startswith('blocks.1.') for n in frozen)
    assert not any(n.startswith(('blocks.2.', 'blocks.3.', 'rescales.')) for n in frozen)
    assert not backbone.blocks[1].training and backbone.blocks[2].training
    assert all(p.requires_grad for p in _build().parameters())


def test_position_embedding_follows_grid_and_weights():
    backbone = _build().eval()
    with torch.no_grad():
        first = backbone.position_embedding((5, 7))
        assert first.shape == (1, 35, backbone.embed_dim)
        torch.testing.assert_close(backbone.position_embedding((5, 7)), first)
        assert backbone.position_embedding((4, 4)) is backbone.pos_embed  # trained grid
        backbone.pos_embed.add_(1.0)  # new weights give a new table (nothing kept)
        torch.testing.assert_close(backbone.position_embedding((5, 7)), first + 1.0)


def test_bad_input_gets_a_clear_error():
    backbone = _build().eval()
    with pytest.raises(ValueError, match='channels'):
        backbone(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r'\(B, C, H, W\)'):
        backbone(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match='unknown ViR arch'):
        _build(arch='huge')
    with pytest.raises(ValueError, match='unknown retention mode'):
        _build(retention_mode='turbo')
    with pytest.raises(ValueError, match='4 out_indices'):
        _build(out_indices=(1, 3))
