"""tools/train.py -> --resume -> tools/test.py -> tools/infer_det.py on generated synthetic data.

One tiny run (2-block ViR, 64 px images, 8 train / 4 val images, 2 epochs of 4 iterations)
is shared by the tests of this module: it trains and validates with CocoMetric (bbox + segm);
a second run resumes from its first-epoch checkpoint; tools/test.py re-evaluates the final
checkpoint; tools/infer_det.py runs on the val images.
"""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vir_dense.datasets import make_coco_dataset
from vir_dense.compat import allow_mmengine_checkpoint_types

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py')
SIZE = 64
ITERS_PER_EPOCH = 4  # 8 images, batch 2


def tiny_options(data_root):
    return [
        f'data_root={data_root}/',
        'model.backbone.arch.num_layers=2', 'model.backbone.out_indices=(1,)',
        'optim_wrapper.paramwise_cfg.num_layers=2',
        f'train_dataloader.dataset.pipeline.2.scale=({SIZE},{SIZE})',
        f'val_dataloader.dataset.pipeline.1.scale=({SIZE},{SIZE})',
        f'test_dataloader.dataset.pipeline.1.scale=({SIZE},{SIZE})',
        'train_dataloader.batch_size=2', 'val_dataloader.batch_size=2',
        'test_dataloader.batch_size=2',
        'train_cfg.max_epochs=2', 'train_cfg.val_interval=1',
        'param_scheduler.0.end=4', 'param_scheduler.1.end=2', 'param_scheduler.1.T_max=2',
        'default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=3',
        'default_hooks.logger.interval=1', 'randomness.seed=0',
    ]


def run_tool(args, cwd, check=True):
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n'
                             f'{proc.stderr[-6000:]}')
    return proc


def load_ckpt(path):
    allow_mmengine_checkpoint_types()
    return torch.load(path, map_location='cpu', weights_only=True)


def scalar_records(work_dir, key):
    """Records holding ``key`` from every json log under work_dir (runner writes one per run)."""
    records = []
    for path in sorted(Path(work_dir).glob('*/vis_data/scalars.json')) + sorted(
            Path(work_dir).glob('*/*.json')):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if key in record:
                records.append(record)
    return records


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp('det_train')
    data_root = make_coco_dataset(base / 'coco', num_train=8, num_val=4, image_size=SIZE)
    work_dir = base / 'run'
    run_tool([str(ROOT / 'tools' / 'train.py'), CONFIG, '--work-dir', str(work_dir),
              '--cfg-options', *tiny_options(data_root)], cwd=base)
    return dict(base=base, data_root=data_root, work_dir=work_dir)


def test_train_writes_checkpoints_and_val_metrics(trained):
    work_dir = trained['work_dir']
    for epoch in (1, 2):
        ckpt = load_ckpt(work_dir / f'epoch_{epoch}.pth')
        assert ckpt['meta']['epoch'] == epoch
        assert ckpt['meta']['iter'] == epoch * ITERS_PER_EPOCH
        assert ckpt['meta']['dataset_meta']['classes'] == (
            'circle', 'square', 'triangle', 'star')
    val = scalar_records(work_dir, 'coco/bbox_mAP')
    assert len(val) >= 2  # validated after each epoch, bbox and segm
    assert {'coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50'} <= set(val[-1])
    losses = [r['loss'] for r in scalar_records(work_dir, 'loss')]
    assert len(losses) == 2 * ITERS_PER_EPOCH and all(l == l for l in losses)  # no NaN
    assert (work_dir / 'last_checkpoint').is_file()


def test_resume_continues_iteration_and_optimizer_state(trained):
    work_dir = trained['work_dir']
    resumed_dir = trained['base'] / 'resumed'
    proc = run_tool([str(ROOT / 'tools' / 'train.py'), CONFIG, '--work-dir', str(resumed_dir),
                     '--resume', str(work_dir / 'epoch_1.pth'),
                     '--cfg-options', *tiny_options(trained['data_root'])], cwd=trained['base'])
    log = proc.stdout + proc.stderr
    assert f'resumed epoch: 1, iter: {ITERS_PER_EPOCH}' in log
    assert not (resumed_dir / 'epoch_1.pth').exists()  # epoch 1 was not trained again
    first, full, resumed = (load_ckpt(p) for p in (
        work_dir / 'epoch_1.pth', work_dir / 'epoch_2.pth', resumed_dir / 'epoch_2.pth'))
    assert resumed['meta']['epoch'] == 2 and resumed['meta']['iter'] == 2 * ITERS_PER_EPOCH
    # AdamW's step counts went on from the loaded state: a fresh optimizer would be at 4.
    steps = {float(s['step']) for s in resumed['optimizer']['state'].values()}
    assert steps == {2.0 * ITERS_PER_EPOCH}
    assert {float(s['step']) for s in first['optimizer']['state'].values()} == {ITERS_PER_EPOCH}
    # Same parameter groups and learning rates as the uninterrupted run at the same point.
    lrs = [g['lr'] for g in resumed['optimizer']['param_groups']]
    assert lrs == pytest.approx([g['lr'] for g in full['optimizer']['param_groups']])
    assert resumed['param_schedulers'] == full['param_schedulers']
    assert resumed['message_hub']['runtime_info']['iter'] == full['message_hub'][
        'runtime_info']['iter']


def test_test_tool_reproduces_val_metrics(trained):
    work_dir = trained['work_dir']
    test_dir = trained['base'] / 'test'
    out = trained['base'] / 'preds.pkl'
    run_tool([str(ROOT / 'tools' / 'test.py'), CONFIG, str(work_dir / 'epoch_2.pth'),
              '--work-dir', str(test_dir), '--out', str(out),
              '--cfg-options', *tiny_options(trained['data_root'])], cwd=trained['base'])
    val = scalar_records(work_dir, 'coco/bbox_mAP')[-1]
    test = scalar_records(test_dir, 'coco/bbox_mAP')[-1]
    for key in [k for k in val if k.startswith('coco/')]:
        assert test[key] == pytest.approx(val[key], abs=1e-4), key
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 4 and 'pred_instances' in predictions[0]


def test_infer_det_on_val_images(trained):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    out_dir = trained['base'] / 'infer'
    val_dir = Path(trained['data_root']) / 'val2017'
    run_tool([str(ROOT / 'tools' / 'infer_det.py'), CONFIG,
              str(trained['work_dir'] / 'epoch_2.pth'), str(val_dir), '--out-dir', str(out_dir),
              '--score-thr', '0.0', '--batch-size', '2',
              '--cfg-options', *tiny_options(trained['data_root'])], cwd=trained['base'])
    assert sorted(p.name for p in (out_dir / 'vis').glob('*.png')) == sorted(
        p.stem + '.png' for p in val_dir.glob('*.jpg'))
    records = json.loads((out_dir / 'results.json').read_text())
    ann_file = Path(trained['data_root']) / 'annotations' / 'instances_val2017.json'
    gt = COCO(str(ann_file))
    names = {img['file_name']: img['id'] for img in gt.dataset['images']}
    for record in records:  # val images keep their dataset ids; category ids are 1..4
        assert record['image_id'] == names[record['file_name']]
        assert record['category_id'] in gt.getCatIds()
    if records:  # the results file is directly evaluable
        for iou_type in ('bbox', 'segm'):
            evaluator = COCOeval(gt, gt.loadRes(str(out_dir / 'results.json')), iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
