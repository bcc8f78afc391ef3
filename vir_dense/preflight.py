"""Checks a run makes before it builds anything: the files a config names exist and are what
they should be (datasets, checkpoints, pretrained weights). Each problem is one message naming
the file and the fix, instead of a traceback from deep inside the runner minutes later.
"""
import os.path as osp

from vir_dense.errors import CheckpointError, DatasetNotFoundError

# Where each known dataset is expected, and how to get it (used in the "not found" messages).
_DATASET_HINTS = {
    'CocoDataset': ('COCO 2017 is expected as <data_root>/annotations/instances_{train,val}2017.json '
                    'and <data_root>/{train,val}2017/ (download it from cocodataset.org).'),
    'ADE20KDataset': ('ADE20K is expected as <data_root>/images/{training,validation}/ and '
                      '<data_root>/annotations/{training,validation}/ (ADEChallengeData2016, '
                      'from the MIT scene parsing benchmark).'),
}
_SYNTHETIC_HINTS = {
    'synthetic_coco': 'python tools/dataset_converters/make_synthetic_data.py coco',
    'synthetic_ade': 'python tools/dataset_converters/make_synthetic_data.py ade20k',
}



def check_file(path, what, hint=''):
    if not path or not osp.isfile(str(path)):
        raise CheckpointError(f'{what} {path} not found{(": " + hint) if hint else ""}')
    return str(path)


def check_checkpoint(path, what='checkpoint'):
    """check_file, and the file must be a readable torch checkpoint: a truncated copy (a
    download or a save that stopped early) or another kind of file is one clear message here
    instead of a traceback from deep inside the runner. Types outside the weights-only
    allowlist are not judged here (the loader that follows decides about those)."""
    import pickle
    import zipfile

    import torch
    path = check_file(path, what)
    try:
        torch.load(path, map_location='cpu', weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001  (the unpickler raises many kinds on bad bytes)
        if isinstance(err, pickle.UnpicklingError) and (
                'Unsupported global' in str(err) or 'allowed global' in str(err)):
            return path  # complete, with Python objects: for the trusted loader to decide
        raise CheckpointError(_unreadable(what, path, err)) from err
    return path


def _unreadable(what, path, err):
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    size = osp.getsize(path)
    return (f'{what} {path} ({size} bytes) is not a readable torch checkpoint ({first}); '
            'the file may be truncated (a copy, download or save that stopped early) or not '
            'a checkpoint at all')


def _iter_datasets(dataset):
    """The leaf datasets of a dataset config (through Repeat/ClassBalanced/Concat wrappers)."""
    if not isinstance(dataset, dict):
        return
    if isinstance(dataset.get('datasets'), (list, tuple)):
        for child in dataset['datasets']:
            yield from _iter_datasets(child)
    elif isinstance(dataset.get('dataset'), dict):
        yield from _iter_datasets(dataset['dataset'])
    else:
        yield dataset


def _join(root, path):
    return path if not root or osp.isabs(path) else osp.join(root, path)


def _dataset_hint(dataset, root):
    text = str(root or '')
    for marker, command in _SYNTHETIC_HINTS.items():
        if marker in text:
            return (f'the embedded synthetic dataset is written by `{command}` '
                    f'(default root data/{marker}/)')
    hint = _DATASET_HINTS.get(str(dataset.get('type', '')).split('.')[-1], '')
    return (f'{hint} Point the config at your copy with --cfg-options data_root=/path/to/'
            'dataset/ (or edit data_root in the config).').strip()


def check_dataset(dataset, split):
    """Raise DatasetNotFoundError if the dataset's root, annotation file or image folders are missing."""
    for leaf in _iter_datasets(dataset):
        root = leaf.get('data_root')
        missing = []
        if root and not osp.isdir(root):
            missing.append(f'data_root {root}')
        else:
            ann_file = leaf.get('ann_file')
            if ann_file:
                ann_path = _join(root, ann_file)
                if not osp.isfile(ann_path):
                    missing.append(f'annotation file {ann_path}')
            prefixes = leaf.get('data_prefix') or {}
            for name, prefix in (prefixes.items() if isinstance(prefixes, dict) else []):
                if prefix and isinstance(prefix, str):
                    folder = _join(root, prefix)
                    if not osp.isdir(folder):
                        missing.append(f'{name} folder {folder}')
        if missing:
            raise DatasetNotFoundError(f'{split} dataset not found: no {", no ".join(missing)}. '
                            f'{_dataset_hint(leaf, root)}')


def check_datasets(cfg, splits):
    """Check the datasets of ``splits`` ('train', 'val', 'test') and their evaluators."""
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or not isinstance(loader, dict):
            continue
        check_dataset(loader.get('dataset'), split)
        evaluators = cfg.get(f'{split}_evaluator')
        evaluators = evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]
        for evaluator in evaluators:
            ann_file = evaluator.get('ann_file') if isinstance(evaluator, dict) else None
            if ann_file and not evaluator.get('format_only') and not osp.isfile(ann_file):
                raise DatasetNotFoundError(f'{split} evaluator annotation file {ann_file} not found. '
                                f'{_dataset_hint(loader.get("dataset") or {}, ann_file)}')


def _pretrained_checkpoints(node, path=''):
    """(config path, checkpoint) of every init_cfg=dict(type='Pretrained', checkpoint=...)."""
    if isinstance(node, dict):
        init_cfg = node.get('init_cfg')
        for item in init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]:
            if isinstance(item, dict) and item.get('type') == 'Pretrained' and \
                    isinstance(item.get('checkpoint'), str):
                yield f'{path}.init_cfg' if path else 'init_cfg', item['checkpoint']
        for key, value in node.items():
            if key != 'init_cfg':
                yield from _pretrained_checkpoints(value, f'{path}.{key}' if path else key)
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from _pretrained_checkpoints(item, f'{path}.{i}')


def check_pretrained(cfg):
    """Every local Pretrained checkpoint of the model must exist (URLs and timm/ names pass)."""
    for where, checkpoint in _pretrained_checkpoints(cfg.get('model', {}), 'model'):
        if checkpoint.startswith(('timm/', 'timm:', 'http://', 'https://', 'torchvision://',
                                  'open-mmlab://', 'mmcls://', 'pretrained://')):
            continue
        if not osp.isfile(checkpoint):
            raise CheckpointError(
                f'pretrained weights {checkpoint} not found ({where}). No ImageNet ViR weights '
                'exist: make a warm start from timm ViT/DeiT weights with `python '
                'tools/model_converters/convert_checkpoint.py '
                f'timm/deit_small_patch16_224.fb_in1k {checkpoint} '
                '--arch small` (match --arch to the config), point the config at your file '
                f'with --cfg-options {where}.checkpoint=PATH, or train from random init with '
                f'--cfg-options {where}=None')
