"""Segmentation configs: the synthetic recipe trains and validates through tools/train.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from vir_dense.datasets.synthetic import (SYNTHETIC_CLASSES, SYNTHETIC_PALETTE,
                                          make_ade20k_dataset)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs'
SEG_CONFIGS = ['upernet_vir_t_ade20k.py', 'upernet_vir_s_ade20k.py', 'upernet_vir_b_ade20k.py',
               'upernet_vir_t_synthetic.py']


def test_synthetic_config_classes_match_the_generator():
    cfg = Config.fromfile(str(CONFIGS / 'upernet_vir_t_synthetic.py'))
    for split in ('train', 'val', 'test'):
        metainfo = cfg[f'{split}_dataloader'].dataset.metainfo
        assert tuple(metainfo['classes']) == tuple(SYNTHETIC_CLASSES)
        assert [tuple(c) for c in metainfo['palette']] == [tuple(c) for c in SYNTHETIC_PALETTE]
    assert cfg.model.decode_head.num_classes == len(SYNTHETIC_CLASSES)
    assert cfg.model.auxiliary_head.num_classes == len(SYNTHETIC_CLASSES)


@pytest.mark.parametrize('name', SEG_CONFIGS)
def test_seg_config_recipe(name):
    """What the docs promise for every segmentation config."""
    cfg = Config.fromfile(str(CONFIGS / name))
    assert cfg.default_scope == 'mmseg'
    assert cfg.custom_imports == dict(imports=['vir_dense'], allow_failed_imports=False)
    backbone = cfg.model.backbone
    assert backbone.type == 'ViR' and backbone.pyramid == 'taps'
    assert tuple(backbone.out_indices) == (3, 5, 7, 11)
    assert backbone.mask == 'bidirectional_2d'
    preprocessor = cfg.model.data_preprocessor
    assert preprocessor.mean == [127.5] * 3 and preprocessor.std == [127.5] * 3
    assert cfg.optim_wrapper.constructor == 'ViRLayerDecayOptimizerConstructor'
    assert cfg.optim_wrapper.paramwise_cfg.num_layers == 12
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.val_evaluator.type == 'IoUMetric'
    warmup, poly = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and poly.type == 'PolyLR' and poly.power == 1.0
    assert poly.end == cfg.train_cfg.max_iters
    if 'ade20k' in name:
        assert cfg.train_cfg.max_iters == 160000 and warmup.end == 1500
        assert cfg.auto_scale_lr.base_batch_size == 16
        assert cfg.train_dataloader.dataset.type == 'ADE20KDataset'
        assert cfg.data_root == 'data/ade/ADEChallengeData2016'
        assert cfg.model.decode_head.num_classes == 150
        assert preprocessor.size == (512, 512)
        assert 1e-5 <= cfg.optim_wrapper.optimizer.lr <= 1e-4
        assert 0.65 <= cfg.optim_wrapper.paramwise_cfg.decay_rate <= 0.9
        assert backbone.init_cfg.type == 'Pretrained'


TRAIN_CONFIG = """
_base_ = [{base!r}]
data_root = {root!r}
crop_size = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(96, 96), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(img_size=64))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=2, end=4),
]
train_cfg = dict(max_iters=4, val_interval=4)
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=4, save_best=None),
                     visualization=dict(type='SegVisualizationHook', draw=False))
"""


def test_train_and_validate_on_synthetic_ade(tmp_path):
    """4 iterations of ViR-T UperNet on 64 px crops of generated ADE-format data, then IoUMetric
    on the validation split, through tools/train.py in a fresh process."""
    root = make_ade20k_dataset(tmp_path / 'synthetic_ade', num_train=6, num_val=3,
                               image_size=(80, 96), seed=3)
    config = tmp_path / 'upernet_vir_t_synthetic_tiny.py'
    config.write_text(TRAIN_CONFIG.format(base=str(CONFIGS / 'upernet_vir_t_synthetic.py'),
                                          root=str(root)))
    work_dir = tmp_path / 'work'
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore')
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'train.py'), str(config), '--work-dir',
         str(work_dir)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (work_dir / 'iter_4.pth').is_file()
    # the metric of the val run after iteration 4, in mmengine's scalars log
    scalars = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert scalars, list(work_dir.rglob('*'))
    records = [json.loads(line) for line in scalars[-1].read_text().splitlines() if line]
    val = [r for r in records if 'mIoU' in r]
    assert val, records
    assert 0.0 <= val[-1]['mIoU'] <= 100.0
    train = [r for r in records if 'loss' in r]
    assert len(train) == 4 and all(r['loss'] == r['loss'] for r in train)  # no NaN
    # The layer-wise lr decay constructor was used (its summary is logged).
    logs = sorted(work_dir.glob('*/*.log'))
    assert logs and 'ViR layer-wise lr decay' in logs[-1].read_text()
