"""Pretrained import through the real backbone and `init_cfg`, as configs use it."""
import pytest
import timm
import torch
from mmdet.registry import MODELS
from safetensors.torch import save_file

import vir_dense  # noqa: F401


def _backbone(checkpoint, **kwargs):
    img_size, spatial_prior = kwargs.pop('img_size', 224), kwargs.pop('spatial_prior', None)
    init_cfg = None if checkpoint is None else dict(type='Pretrained',
                                                    checkpoint=str(checkpoint), **kwargs)
    cfg = dict(type='ViR', arch='tiny', img_size=img_size, out_indices=(3, 5, 7, 11),
               drop_path_rate=0.0, spatial_prior=spatial_prior, init_cfg=init_cfg)
    backbone = MODELS.build(cfg)
    backbone.init_weights()
    return backbone


def test_timm_vit_warm_start(tmp_path):
    vit = timm.create_model('vit_tiny_patch16_224', num_classes=10)
    path = tmp_path / 'vit_tiny.safetensors'
    save_file(vit.state_dict(), str(path))
    backbone = _backbone(path, img_size=256)  # another grid: 16x16 instead of 14x14
    assert torch.equal(backbone.blocks[4].retention.qkv.weight, vit.blocks[4].attn.qkv.weight)
    assert torch.equal(backbone.blocks[0].mlp.fc2.bias, vit.blocks[0].mlp.fc2.bias)
    assert torch.all(backbone.blocks[7].ls2.gamma == 1.0)  # ViT has no LayerScale
    assert torch.equal(backbone.cls_token, vit.cls_token)
    assert backbone.pos_embed.shape == (1, 256, 192)
    # same grid => the patch slots are kept exactly, the class slot at the front dropped
    same_grid = _backbone(path)
    assert torch.equal(same_grid.pos_embed, vit.pos_embed[:, 1:])


def test_vir_classifier_and_mm_checkpoints(tmp_path):
    vir = timm.create_model('vir_tiny_patch16_224', num_classes=10)
    path = tmp_path / 'vir_tiny.pth'
    torch.save({'state_dict': vir.state_dict()}, path)
    backbone = _backbone(path)
    for key, value in backbone.state_dict().items():
        if key in vir.state_dict():
            assert torch.equal(value, vir.state_dict()[key]), key

    detector = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    detector['neck.levels.0.1.weight'] = torch.zeros(4)
    # the conv spatial prior is new weight: not counted as missing, the trunk still loads
    with_prior = _backbone(path, spatial_prior=dict(channels=16))
    assert torch.equal(with_prior.blocks[3].mlp.fc1.weight, vir.blocks[3].mlp.fc1.weight)

    mm_path = tmp_path / 'maskrcnn.pth'
    torch.save({'meta': {'epoch': 12}, 'state_dict': detector}, mm_path)
    again = _backbone(mm_path)
    for key, value in backbone.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_bad_checkpoints_raise(tmp_path):
    vit_small = timm.create_model('vit_small_patch16_224', num_classes=0, depth=2)
    path = tmp_path / 'vit_small.pth'
    torch.save(vit_small.state_dict(), path)
    with pytest.raises(ValueError, match='shape'):
        _backbone(path)  # ViT-S (384) into ViR-T (192)
    partial = {k: v for k, v in timm.create_model('vir_tiny_patch16_224').state_dict().items()
               if not k.startswith('blocks.1')}
    partial_path = tmp_path / 'partial.pth'
    torch.save(partial, partial_path)
    with pytest.raises(ValueError, match='allow_partial'):
        _backbone(partial_path)
    # allow_partial: what the file has is loaded, block 1 keeps its fresh initialisation
    torch.manual_seed(0)
    fresh = _backbone(None)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match='backbone tensors'):
        loaded = _backbone(partial_path, allow_partial=True)
    for key, value in loaded.state_dict().items():
        if key.startswith('blocks.1.'):
            assert torch.equal(value, fresh.state_dict()[key]), key
        elif key in partial:
            assert torch.equal(value, partial[key]), key
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        _backbone(tmp_path / 'missing.pth')
