"""ViRLayerDecayOptimizerConstructor: lr scale and weight decay per parameter, registries."""
import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper

from vir_dense.mm import layer_decay
from vir_dense.mm.layer_decay import ViRLayerDecayOptimizerConstructor, get_vir_layer_id

NAME = 'ViRLayerDecayOptimizerConstructor'
DIM, DEPTH, LR, WD, DECAY = 16, 3, 1e-3, 0.05, 0.5


class _Block(nn.Module):
    """design.md block names: norm1, retention.{qkv,proj}, ls1.gamma, norm2, mlp.{fc1,fc2}, ls2."""

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.retention = nn.Module()
        self.retention.qkv, self.retention.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)
        self.ls1, self.ls2 = nn.Module(), nn.Module()
        self.ls1.gamma = nn.Parameter(torch.ones(DIM))
        self.ls2.gamma = nn.Parameter(torch.ones(DIM))


class _Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, DIM, 4, 4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 16, DIM))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.blocks = nn.ModuleList(_Block() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM)
        self.rescales = nn.Sequential(nn.ConvTranspose2d(DIM, DIM, 2, 2))  # backbone extra


class _Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Backbone()
        self.neck = nn.Sequential(nn.Conv2d(DIM, 8, 1), nn.BatchNorm2d(8))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(8, 4)


def _build(model, **paramwise):
    cfg = dict(optimizer=dict(type='AdamW', lr=LR, weight_decay=WD), constructor=NAME,
               paramwise_cfg=dict(num_layers=DEPTH, decay_rate=DECAY, **paramwise))
    return build_optim_wrapper(model, cfg)


def _settings(model, optim_wrapper):
    """name -> (lr, weight_decay) from the optimizer's param groups."""
    by_id = {}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group['params']:
            assert id(param) not in by_id, 'parameter in two groups'
            by_id[id(param)] = (group['lr'], group['weight_decay'])
    return {name: by_id.get(id(p)) for name, p in model.named_parameters()}


def test_lr_and_weight_decay_per_parameter():
    model = _Detector()
    settings = _settings(model, _build(model))
    L = DEPTH

    def check(name, scale, wd):
        lr, got_wd = settings[name]
        assert lr == pytest.approx(LR * scale), name
        assert got_wd == wd, name

    check('backbone.patch_embed.proj.weight', DECAY ** (L + 1), WD)
    check('backbone.patch_embed.proj.bias', DECAY ** (L + 1), 0.0)
    check('backbone.pos_embed', DECAY ** (L + 1), 0.0)
    check('backbone.cls_token', DECAY ** (L + 1), 0.0)
    check('backbone.blocks.0.retention.qkv.weight', DECAY ** L, WD)
    check('backbone.blocks.0.retention.qkv.bias', DECAY ** L, 0.0)
    check('backbone.blocks.0.norm1.weight', DECAY ** L, 0.0)
    check('backbone.blocks.0.ls1.gamma', DECAY ** L, 0.0)
    check(f'backbone.blocks.{L - 1}.mlp.fc2.weight', DECAY, WD)
    check(f'backbone.blocks.{L - 1}.ls2.gamma', DECAY, 0.0)
    check('backbone.norm.weight', 1.0, 0.0)
    check('backbone.rescales.0.weight', 1.0, WD)  # backbone extras train at the base lr
    check('neck.0.weight', 1.0, WD)
    check('neck.1.weight', 1.0, 0.0)  # BatchNorm
    check('head.weight', 1.0, WD)
    check('head.bias', 1.0, 0.0)
    assert settings['frozen.weight'] is None and settings['frozen.bias'] is None


def test_groups_are_few_and_logged_compactly(monkeypatch):
    messages = []
    monkeypatch.setattr(layer_decay, 'print_log', lambda msg, **kw: messages.append(msg))
    model = _Detector()
    optim_wrapper = _build(model)
    groups = optim_wrapper.optimizer.param_groups
    assert len(groups) <= 2 * (DEPTH + 2)  # (layer, decay / no decay), not one per tensor
    assert len(messages) == 1
    lines = messages[0].splitlines()
    assert len(lines) == DEPTH + 4  # title, header, one line per layer id 0..L+1
    assert 'decay_rate=0.5' in lines[0]


def test_layer_ids():
    assert get_vir_layer_id('backbone.cls_token', 12) == 0
    assert get_vir_layer_id('backbone.blocks.11.mlp.fc1.weight', 12) == 12
    assert get_vir_layer_id('backbone.norm.bias', 12) == 13
    assert get_vir_layer_id('decode_head.conv_seg.weight', 12) == 13
    with pytest.raises(ValueError, match='num_layers'):
        get_vir_layer_id('backbone.blocks.12.norm1.weight', 12)


def test_config_errors():
    with pytest.raises(ValueError, match='num_layers must be the backbone depth'):
        cfg = dict(optimizer=dict(type='AdamW', lr=LR), constructor=NAME,
                   paramwise_cfg=dict(num_layers=DEPTH - 1, decay_rate=DECAY))
        build_optim_wrapper(_Detector(), cfg)
    with pytest.raises(ValueError, match='decay_rate'):
        ViRLayerDecayOptimizerConstructor(dict(optimizer=dict(type='AdamW', lr=LR)),
                                          dict(num_layers=DEPTH))
    with pytest.raises(ValueError, match='layer_wise'):
        ViRLayerDecayOptimizerConstructor(
            dict(optimizer=dict(type='AdamW', lr=LR)),
            dict(num_layers=DEPTH, decay_rate=DECAY, decay_type='stage_wise'))


def test_registered_in_mmdet_and_mmseg():
    from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMDET
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as ROOT
    from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMSEG
    for registry in (MMDET, MMSEG, ROOT):
        assert registry.get(NAME) is ViRLayerDecayOptimizerConstructor
    # Scoped names, as a runner with default_scope='mmdet' / 'mmseg' resolves them.
    for scope in ('mmdet', 'mmseg'):
        model = _Detector()
        cfg = dict(optimizer=dict(type='SGD', lr=LR, momentum=0.9, weight_decay=WD),
                   constructor=f'{scope}.{NAME}',
                   paramwise_cfg=dict(num_layers=DEPTH, decay_rate=DECAY))
        settings = _settings(model, build_optim_wrapper(model, cfg))
        assert settings['backbone.blocks.0.retention.proj.weight'][0] == pytest.approx(
            LR * DECAY ** DEPTH)
    layer_decay._register()  # importing twice (or reloading) must not raise
    assert MMDET.get(NAME) is ViRLayerDecayOptimizerConstructor
