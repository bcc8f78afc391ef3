"""Pretrained weights for the OpenMMLab ViR backbone: ``init_cfg=dict(type='Pretrained', ...)``.

Resolving and reading the file (vir_dense.models.checkpoint_files) and converting ViR / ViT /
DeiT / mmdet / mmseg weights (vir_dense.models.convert) live beside the model; this module
loads the result into a backbone, refuses silent partial loads and logs the report through
mmengine. A load that fills less than 90% of the backbone raises: silent partial loads are the
failure this module exists to prevent.
"""
from __future__ import annotations

import logging
import warnings
from typing import Callable, Mapping, Optional, Sequence

import torch.nn as nn
from mmengine.logging import print_log

from vir_dense.models.checkpoint_files import read_checkpoint, resolve_checkpoint, unwrap_state_dict
from vir_dense.models.convert import CheckpointReport, convert_to_vir, is_vir_pretrained_key

__all__ = ['load_pretrained', 'load_pretrained_from_init_cfg', 'MIN_LOADED_FRACTION']

MIN_LOADED_FRACTION = 0.9


def load_pretrained(module: nn.Module, checkpoint, allow_partial: bool = False, logger=None,
                    prefix: str = '', grid: Optional[Sequence[int]] = None,
                    is_pretrained_key: Callable[[str], bool] = is_vir_pretrained_key,
                    map_location='cpu') -> CheckpointReport:
    """Load pretrained ViR/ViT/DeiT/mm weights into ``module`` (a ViR backbone) and report.

    ``checkpoint``: local path, URL, ``timm/<model>`` or an already loaded dict. Raises
    ``ValueError`` on a shape mismatch, or when less than 90% of the backbone's pretrained-able
    tensors are loaded unless ``allow_partial`` (then it warns). Extra modules of the backbone
    (anything :func:`is_vir_pretrained_key` rejects) keep their own initialisation.
    """
    if isinstance(checkpoint, Mapping):
        raw, source = checkpoint, '<state dict>'
    else:
        source = resolve_checkpoint(checkpoint)
        raw = read_checkpoint(source, map_location)
    state_dict, container = unwrap_state_dict(raw)
    converted, report = convert_to_vir(state_dict, module, grid=grid, prefix=prefix,
                                       is_pretrained_key=is_pretrained_key, source=str(source))
    report.container = container
    if report.num_expected == 0:
        raise ValueError(f'{type(module).__name__} has no ViR backbone parameters '
                         '(patch_embed, pos_embed, cls_token, blocks.*, norm) to load into')
    level = logging.INFO
    if report.fraction < MIN_LOADED_FRACTION:
        short = (f'only {report.num_loaded} of {report.num_expected} backbone tensors '
                 f'({100 * report.fraction:.1f}%) were found in the checkpoint '
                 f'(minimum {100 * MIN_LOADED_FRACTION:.0f}%)')
        if not allow_partial:
            raise ValueError(f'{short}\n{report}\n'
                             'Pass allow_partial=True to accept a partial load.')
        warnings.warn(f'{short}; loading anyway (allow_partial=True)', stacklevel=2)
        level = logging.WARNING
    result = module.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # converter filtered them
    print_log(str(report), logger=logger if logger is not None else 'current',
              level=level)
    return report


def load_pretrained_from_init_cfg(module: nn.Module, init_cfg, logger=None,
                                  **kwargs) -> Optional[CheckpointReport]:
    """Handle ``init_cfg=dict(type='Pretrained', checkpoint=..., allow_partial=..., prefix=...)``.

    Returns None (and does nothing) when ``init_cfg`` is not a Pretrained config, so a backbone
    can fall back to its own initialisation.
    """
    if not isinstance(init_cfg, Mapping) or init_cfg.get('type') != 'Pretrained':
        return None
    cfg = dict(init_cfg)
    cfg.pop('type')
    unknown = set(cfg) - {'checkpoint', 'allow_partial', 'prefix', 'map_location', 'grid'}
    if unknown:
        raise ValueError(f'unknown keys in Pretrained init_cfg: {sorted(unknown)}')
    return load_pretrained(module, logger=logger, **cfg, **kwargs)
