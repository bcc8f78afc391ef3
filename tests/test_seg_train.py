"""Segmentation configs: the synthetic recipe trains, validates and resumes exactly through
tools/train.py; the logged mIoU is the one computed here from the checkpoint's predictions."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from inprocess import forget_visualizers, load_tool
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
train_pipeline = {train_pipeline!r}
test_pipeline = {test_pipeline!r}
# 4 blocks instead of 12 (the run checks the pipeline, not the depth)
model = dict(data_preprocessor=dict(size=crop_size),
             backbone=dict(img_size=64, arch=dict(_delete_=True, embed_dims=192, num_layers=4,
                                                  num_heads=3),
                           out_indices=(0, 1, 2, 3)))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=4))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=2, end=4),
]
train_cfg = dict(max_iters=4, val_interval=2)
randomness = dict(seed=1)
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=2, save_best=None, max_keep_ckpts=-1),
                     visualization=dict(type='SegVisualizationHook', draw=False))
"""


def _tiny_pipelines():
    """The synthetic config's own pipelines (its label handling: reduce_zero_label), at the
    scale of the 80x96 test images: resize to 96 instead of 256, crop 64 instead of 128."""
    base = Config.fromfile(str(CONFIGS / 'upernet_vir_t_synthetic.py'))
    pipelines = []
    for split in ('train', 'val'):
        pipeline = [dict(step) for step in base[f'{split}_dataloader'].dataset.pipeline]
        for step in pipeline:
            if step['type'] in ('RandomResize', 'Resize'):
                step['scale'] = (96, 96)
            if step['type'] == 'RandomCrop':
                step['crop_size'] = (64, 64)
        pipelines.append(pipeline)
    assert [s['type'] for s in pipelines[1]] == ['LoadImageFromFile', 'Resize', 'LoadAnnotations',
                                                 'PackSegInputs']
    return pipelines


def _train_in_process(config, work_dir, *extra):
    """tools/train.py in this process (saves interpreter starts; the command line runs in
    test_dist_train.py). Both runs use the process's thread count: bitwise equal results need
    the same count, not a particular one."""
    module = load_tool('train')
    forget_visualizers()
    module.main([str(config), '--work-dir', str(work_dir), *extra])


def _records(work_dir, key):
    scalars = sorted(work_dir.glob('*/vis_data/scalars.json'))
    assert scalars, list(work_dir.rglob('*'))
    records = [json.loads(line) for line in scalars[-1].read_text().splitlines() if line]
    return [r for r in records if key in r]


def _miou(checkpoint, config, root):
    """mIoU (%) of the checkpoint on the val split, computed here: summed intersections and
    unions per class over the images, classes absent from both skipped (mmseg's IoUMetric)."""
    from mmseg.apis import inference_model, init_model
    model = init_model(str(config), str(checkpoint), device='cpu')
    num_classes = len(SYNTHETIC_CLASSES)
    intersect, union = np.zeros(num_classes), np.zeros(num_classes)
    images = sorted((Path(root) / 'images' / 'validation').glob('*.jpg'))
    assert len(images) == 3
    for image in images:
        pred = inference_model(model, str(image)).pred_sem_seg.data[0].numpy()
        label = np.asarray(Image.open(Path(root) / 'annotations' / 'validation' /
                                      (image.stem + '.png'))).astype(np.int64) - 1
        valid = label >= 0  # reduce_zero_label: 0 is "other", ignored
        for c in range(num_classes):
            p, g = (pred == c) & valid, (label == c) & valid
            intersect[c] += (p & g).sum()
            union[c] += (p | g).sum()
    with np.errstate(invalid='ignore', divide='ignore'):
        return float(np.nanmean(intersect / union) * 100)


def test_train_validate_and_resume_exactly_on_synthetic_ade(tmp_path):
    """4 iterations of a 4-block ViR-T UperNet on 64 px crops of generated ADE-format data
    (checkpoint and IoUMetric validation every 2) through tools/train.py; a run resumed from
    iteration 2 then ends with bitwise the same weights and losses (the data loader is
    replayed, and the random states of the crops and flips are restored after the replay)."""
    root = make_ade20k_dataset(tmp_path / 'synthetic_ade', num_train=6, num_val=3,
                               image_size=(80, 96), seed=3)
    config = tmp_path / 'upernet_vir_t_synthetic_tiny.py'
    train_pipeline, test_pipeline = _tiny_pipelines()
    config.write_text(TRAIN_CONFIG.format(base=str(CONFIGS / 'upernet_vir_t_synthetic.py'),
                                          root=str(root), train_pipeline=train_pipeline,
                                          test_pipeline=test_pipeline))
    work_dir = tmp_path / 'work'
    _train_in_process(config, work_dir)
    assert (work_dir / 'iter_2.pth').is_file() and (work_dir / 'iter_4.pth').is_file()
    val = _records(work_dir, 'mIoU')
    assert len(val) == 2
    assert val[-1]['mIoU'] == pytest.approx(_miou(work_dir / 'iter_4.pth', config, root),
                                            abs=0.006)
    train = _records(work_dir, 'loss')
    assert len(train) == 4 and all(math.isfinite(r['loss']) for r in train)
    # The layer-wise lr decay constructor was used (its summary is logged).
    logs = sorted(work_dir.glob('*/*.log'))
    assert logs and 'ViR layer-wise lr decay' in logs[-1].read_text()

    resumed_dir = tmp_path / 'resumed'
    _train_in_process(config, resumed_dir, '--resume', str(work_dir / 'iter_2.pth'))
    assert [r['loss'] for r in _records(resumed_dir, 'loss')] == [r['loss'] for r in train[2:]]
    full = torch.load(work_dir / 'iter_4.pth', map_location='cpu')
    resumed = torch.load(resumed_dir / 'iter_4.pth', map_location='cpu')
    differ = [k for k, v in full['state_dict'].items()
              if not torch.equal(v, resumed['state_dict'][k])]
    assert not differ, f'{len(differ)} tensors differ, e.g. {differ[:3]}'
