"""Layer-wise learning-rate decay for detectors/segmentors with a ViR backbone.

Config (mmdet or mmseg)::

    optim_wrapper = dict(
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        constructor='ViRLayerDecayOptimizerConstructor',
        paramwise_cfg=dict(num_layers=12, decay_rate=0.7))

Layer ids: ``backbone.patch_embed``, ``backbone.pos_embed``, ``backbone.cls_token`` -> 0,
``backbone.blocks.i`` -> i + 1, everything else (backbone extras such as a pyramid, neck,
heads) -> num_layers + 1. The lr scale is ``decay_rate ** (num_layers + 1 - layer_id)``.
mmseg's own LayerDecayOptimizerConstructor only knows ConvNeXt/BEiT/MAE names, hence this one.
"""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor

__all__ = ['ViRLayerDecayOptimizerConstructor', 'get_vir_layer_id', 'is_no_weight_decay']

_EMBED = re.compile(r'^backbone\.(patch_embed\.|pos_embed$|cls_token$)')
_BLOCK = re.compile(r'^backbone\.blocks\.(\d+)\.')
_LAYER_SCALE = re.compile(r'\.ls\d+\.gamma$')


def get_vir_layer_id(name: str, num_layers: int) -> int:
    """Layer id of a parameter name of the whole model (``backbone.`` prefixed)."""
    if _EMBED.match(name):
        return 0
    m = _BLOCK.match(name)
    if m:
        block = int(m.group(1))
        if block >= num_layers:
            raise ValueError(f'{name}: block {block} but paramwise_cfg.num_layers={num_layers}; '
                             'num_layers must be the backbone depth')
        return block + 1
    return num_layers + 1


def is_no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Norms, biases (1-D), LayerScale, position embedding and class token get no decay."""
    return (param.ndim <= 1 or bool(_LAYER_SCALE.search(name))
            or name.endswith(('pos_embed', 'cls_token')))


class ViRLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Param groups per (layer id, weight decay or not); see the module docstring."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        for key in ('num_layers', 'decay_rate'):
            if key not in paramwise_cfg:
                raise ValueError(f'ViRLayerDecayOptimizerConstructor needs paramwise_cfg.{key}')
        decay_type = paramwise_cfg.get('decay_type', 'layer_wise')
        if decay_type != 'layer_wise':
            raise ValueError(f"decay_type={decay_type!r}: ViR is isotropic, only 'layer_wise'")
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def add_params(self, params: List[dict], module: nn.Module, **kwargs) -> None:
        num_layers = int(self.paramwise_cfg['num_layers'])
        decay_rate = float(self.paramwise_cfg['decay_rate'])
        groups: Dict[Tuple[int, bool], dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:  # frozen stages stay out of the optimizer
                continue
            layer_id = get_vir_layer_id(name, num_layers)
            no_wd = is_no_weight_decay(name, param)
            group = groups.get((layer_id, no_wd))
            if group is None:
                scale = decay_rate ** (num_layers + 1 - layer_id)
                group = groups[(layer_id, no_wd)] = dict(
                    params=[], param_names=[], layer_id=layer_id, lr_scale=scale)
                if self.base_lr is not None:
                    group['lr'] = self.base_lr * scale
                if no_wd:
                    group['weight_decay'] = 0.0
                elif self.base_wd is not None:
                    group['weight_decay'] = self.base_wd
            group['params'].append(param)
            group['param_names'].append(name)
        ordered = [groups[k] for k in sorted(groups)]
        params.extend(ordered)
        print_log(self._summary(ordered, num_layers, decay_rate), logger='current')

    def _summary(self, groups: List[dict], num_layers: int, decay_rate: float) -> str:
        """One line per layer id: compact enough for a 24-block model."""
        lines = [f'ViR layer-wise lr decay: num_layers={num_layers}, decay_rate={decay_rate}, '
                 f'base lr={self.base_lr}, weight_decay={self.base_wd} '
                 '(0 for norms, biases, LayerScale, pos_embed, cls_token)',
                 '  layer  lr_scale   lr          tensors (decay / no decay)  params']
        by_layer: Dict[int, List[dict]] = {}
        for group in groups:
            by_layer.setdefault(group['layer_id'], []).append(group)
        for layer_id, layer_groups in by_layer.items():
            g0 = layer_groups[0]
            n_wd = sum(len(g['params']) for g in layer_groups if g.get('weight_decay') != 0.0)
            n_no = sum(len(g['params']) for g in layer_groups if g.get('weight_decay') == 0.0)
            numel = sum(p.numel() for g in layer_groups for p in g['params'])
            lr = g0.get('lr')
            lr_text = f'{lr:<10.3e}' if lr is not None else f'{"-":<10}'
            lines.append(f'  {layer_id:>5}  {g0["lr_scale"]:<9.4g}  {lr_text}  '
                         f'{n_wd:>7} / {n_no:<17}  {numel:,}')
        return '\n'.join(lines)


def _register() -> None:
    """Register in mmengine's root registry (plain build_optim_wrapper) and in mmdet's and
    mmseg's (runner default scopes). Safe to run twice; a missing mmdet/mmseg is skipped."""
    import importlib
    registries = []
    for module in ('mmengine.registry', 'mmdet.registry', 'mmseg.registry'):
        try:
            registries.append(importlib.import_module(module).OPTIM_WRAPPER_CONSTRUCTORS)
        except ImportError:
            continue
    cls = ViRLayerDecayOptimizerConstructor
    for registry in registries:
        existing = registry.module_dict.get(cls.__name__)
        if existing is None:
            registry.register_module(module=cls, force=False)
        elif existing is not cls and existing.__module__ == cls.__module__:
            registry.register_module(module=cls, force=True)  # this module was reloaded


_register()
