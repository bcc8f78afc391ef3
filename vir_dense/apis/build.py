"""One way to build a trained model for inference, for detection and segmentation alike:
config (checked) -> model (no pretrained import) -> strict checkpoint load -> dataset meta ->
device, eval mode. :func:`vir_dense.apis.init_detector` and
:func:`vir_dense.apis.seg.init_segmentor` are this with their scope.
"""
from typing import Optional

import torch

from vir_dense.config import scoped_config
from vir_dense.errors import ConfigError
from vir_dense.mm.model_checkpoint import load_model_checkpoint

_KIND = {'mmdet': 'detection', 'mmseg': 'segmentation'}
_OTHER_TOOL = {'mmdet': 'use tools/infer_seg.py for segmentors',
               'mmseg': 'use tools/infer_det.py for detectors'}


def init_model(config, checkpoint: Optional[str] = None, device: str = 'cpu',
               scope: str = 'mmdet', cfg_options: Optional[dict] = None,
               allow_partial: bool = False):
    """A model of ``scope`` ('mmdet' or 'mmseg') in eval mode with the checkpoint's weights.

    ``config``: a path or an mmengine Config. ``checkpoint``: a checkpoint of a model built
    from this config, loaded strictly (:func:`~vir_dense.mm.model_checkpoint.load_model_checkpoint`;
    ``allow_partial=True`` loads what fits); None keeps the random init. The backbone's
    pretrained import is skipped either way. The model gets ``.cfg`` and ``.dataset_meta``
    (the checkpoint's, else the config dataset's classes and palette). SyncBN layers become
    BatchNorm (one process, no process group).
    """
    from mmengine.model import revert_sync_batchnorm
    check_device(device)
    cfg = scoped_config(config, cfg_options, scope, hint=_OTHER_TOOL[scope])
    registry = _registry(scope, 'MODELS')
    model_cfg = cfg.model.copy()
    model_cfg.pop('pretrained', None)
    backbone = model_cfg.get('backbone')
    if isinstance(backbone, dict) and 'init_cfg' in backbone:
        backbone['init_cfg'] = None  # the weights come from the checkpoint
    model = registry.build(model_cfg)
    meta = {}
    if checkpoint is not None:
        name = getattr(cfg, 'filename', None) or f'the {_KIND[scope]} config'
        meta = load_model_checkpoint(model, checkpoint, name, allow_partial=allow_partial)
    dataset_meta = dict(meta.get('dataset_meta') or {})
    model.dataset_meta = dataset_meta if dataset_meta.get('classes') else \
        dataset_meta_from_config(cfg, scope)
    model.cfg = cfg
    model = revert_sync_batchnorm(model)
    model.to(device)
    model.eval()
    return model


def check_device(device: str) -> None:
    if str(device).startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f'device {device!r}: CUDA is not available here; use cpu')


def dataset_meta_from_config(cfg, scope: str) -> dict:
    """Class names (and palette) of the config's test dataset (else val, train): its
    ``metainfo`` over the dataset class's own METAINFO; {} if the config names none."""
    datasets = _registry(scope, 'DATASETS')
    for key in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        dataset = (cfg.get(key) or {}).get('dataset')
        while isinstance(dataset, dict) and isinstance(dataset.get('dataset'), dict):
            dataset = dataset['dataset']  # through RepeatDataset / ClassBalancedDataset
        if not isinstance(dataset, dict):
            continue
        try:
            dataset_cls = datasets.get(str(dataset.get('type', '')))
        except KeyError:
            dataset_cls = None
        meta = {**dict(getattr(dataset_cls, 'METAINFO', None) or {}),
                **dict(dataset.get('metainfo') or {})}
        if meta.get('classes'):
            meta['classes'] = tuple(meta['classes'])
            return meta
    return {}


def _registry(scope: str, name: str):
    import importlib
    return getattr(importlib.import_module(f'{scope}.registry'), name)
