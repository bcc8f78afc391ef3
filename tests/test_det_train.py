"""tools/train.py -> --resume -> tools/test.py -> tools/infer_det.py on generated synthetic data.

One tiny run (2-block ViR, 64 px images, 8 train / 4 val images, 2 epochs of 4 iterations)
is shared by the tests of this module: it trains and validates with CocoMetric (bbox + segm);
a second run resumes from its first-epoch checkpoint (as if the first run had been stopped
there) and must end with bitwise the same weights; tools/test.py re-evaluates the final
checkpoint; tools/infer_det.py runs on the val images and its results.json, scored with
pycocotools, gives tools/test.py's metrics; the checkpoint opens in a fresh interpreter that
never imports vir_dense.
"""
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inprocess import forget_visualizers, load_tool
from launch import run_dist_script
from vir_dense.compat import allow_mmengine_checkpoint_types
from vir_dense.datasets import make_coco_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py')
SIZE = 64
ITERS_PER_EPOCH = 4  # 8 images, batch 2


def tiny_options(data_root, seed=True):
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
        'default_hooks.logger.interval=1',
    ] + (['randomness.seed=0'] if seed else [])


def run_in_process(tool, args):
    """tools/<tool>.py's main(args) in this process, on 1 thread like the subprocess runs
    (saves an interpreter start and the mmdet imports); returns what main returns."""
    module = load_tool(tool)
    forget_visualizers()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return module.main(args)
    finally:
        torch.set_num_threads(threads)


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
    # tools/train.py in this process (1 thread); its command line runs in test_dist_train.py.
    run_in_process('train', [CONFIG, '--work-dir', str(work_dir),
                             '--cfg-options', *tiny_options(data_root)])
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
    assert len(losses) == 2 * ITERS_PER_EPOCH and all(math.isfinite(v) for v in losses)
    assert (work_dir / 'last_checkpoint').is_file()


def test_resume_continues_exactly(trained):
    """Stopped after epoch 1 and resumed (without repeating --cfg-options randomness.seed: the
    checkpoint's seed is used): the same losses and bitwise the same weights and optimizer
    state as the uninterrupted run (CPU, 1 thread in both runs)."""
    work_dir = trained['work_dir']
    resumed_dir = trained['base'] / 'resumed'
    run_in_process('train', [CONFIG, '--work-dir', str(resumed_dir),
                             '--resume', str(work_dir / 'epoch_1.pth'),
                             '--cfg-options', *tiny_options(trained['data_root'], seed=False)])
    log = '\n'.join(p.read_text() for p in resumed_dir.glob('*/*.log'))
    assert f'resumed epoch: 1, iter: {ITERS_PER_EPOCH}' in log
    assert not (resumed_dir / 'epoch_1.pth').exists()  # epoch 1 was not trained again
    first, full, resumed = (load_ckpt(p) for p in (
        work_dir / 'epoch_1.pth', work_dir / 'epoch_2.pth', resumed_dir / 'epoch_2.pth'))
    assert resumed['meta']['epoch'] == 2 and resumed['meta']['iter'] == 2 * ITERS_PER_EPOCH
    assert resumed['meta']['seed'] == full['meta']['seed'] == 0
    # The losses of epoch 2 are the uninterrupted run's, to the last bit.
    straight = [r['loss'] for r in scalar_records(work_dir, 'loss')][ITERS_PER_EPOCH:]
    again = [r['loss'] for r in scalar_records(resumed_dir, 'loss')]
    assert again == straight
    # Bitwise the same weights, and the same optimizer moments.
    assert full['state_dict'].keys() == resumed['state_dict'].keys()
    differ = [k for k, v in full['state_dict'].items() if not torch.equal(v, resumed['state_dict'][k])]
    assert not differ, f'{len(differ)} tensors differ, e.g. {differ[:3]}'
    for key, state in full['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(
                resumed['optimizer']['state'][key][name])), (key, name)
    # AdamW's step counts went on from the loaded state: a fresh optimizer would be at 4.
    assert {float(s['step']) for s in first['optimizer']['state'].values()} == {ITERS_PER_EPOCH}
    assert resumed['param_schedulers'] == full['param_schedulers']
    assert resumed['meta']['rng_state']['torch'].equal(full['meta']['rng_state']['torch'])


def test_test_tool_reproduces_val_metrics(trained):
    work_dir = trained['work_dir']
    test_dir = trained['base'] / 'test'
    out = trained['base'] / 'preds.pkl'
    test = run_in_process('test', [CONFIG, str(work_dir / 'epoch_2.pth'),
                                   '--work-dir', str(test_dir), '--out', str(out),
                                   '--cfg-options', *tiny_options(trained['data_root'])])
    val = scalar_records(work_dir, 'coco/bbox_mAP')[-1]
    for key in [k for k in val if k.startswith('coco/')]:
        assert test[key] == pytest.approx(val[key], abs=1e-4), key
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 4 and 'pred_instances' in predictions[0]


def test_dist_test_two_processes_gives_the_same_metrics(trained):
    """tools/dist_test.sh, 2 processes (torchrun, gloo): the 4 val images split over the ranks
    and gathered give the single-process metrics (val after epoch 2 == tools/test.py)."""
    dist_dir = trained['base'] / 'dist_test'
    returncode, log = run_dist_script(
        ROOT / 'tools' / 'dist_test.sh',
        [CONFIG, trained['work_dir'] / 'epoch_2.pth', '2', '--work-dir', dist_dir,
         '--cfg-options', *tiny_options(trained['data_root'])], cwd=trained['base'])
    assert returncode == 0, log[-6000:]
    run_log = '\n'.join(p.read_text() for p in Path(dist_dir).glob('*/*.log'))
    assert 'Distributed launcher: pytorch' in run_log and 'Distributed training: True' in run_log
    val = scalar_records(trained['work_dir'], 'coco/bbox_mAP')[-1]
    test = scalar_records(dist_dir, 'coco/bbox_mAP')[-1]
    keys = [k for k in val if k.startswith('coco/')]
    assert len(keys) >= 12
    for key in keys:
        assert test[key] == pytest.approx(val[key], abs=1e-3), key


def test_infer_det_results_score_like_test_tool(trained):
    """tools/infer_det.py on the val images: results.json, scored by pycocotools, gives the
    metrics that the runner's CocoMetric logged for the same checkpoint (val after epoch 2 ==
    tools/test.py, checked above); mmdet rounds them to 3 decimals."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    out_dir = trained['base'] / 'infer'
    val_dir = Path(trained['data_root']) / 'val2017'
    result = run_in_process('infer_det', [CONFIG, str(trained['work_dir'] / 'epoch_2.pth'),
                                        str(val_dir), '--out-dir', str(out_dir),
                                        '--score-thr', '0.0', '--batch-size', '2',
                                        '--cfg-options', *tiny_options(trained['data_root'])])
    assert not result['skipped'] and result['written'] == 4
    assert sorted(p.name for p in (out_dir / 'vis').glob('*.png')) == sorted(
        p.stem + '.png' for p in val_dir.glob('*.jpg'))
    records = json.loads((out_dir / 'results.json').read_text())
    assert records, 'the trained detector keeps boxes at score_thr 0'
    ann_file = Path(trained['data_root']) / 'annotations' / 'instances_val2017.json'
    gt = COCO(str(ann_file))
    names = {img['file_name']: img['id'] for img in gt.dataset['images']}
    for record in records:  # val images keep their dataset ids; category ids are 1..4
        assert record['image_id'] == names[record['file_name']]
        assert record['category_id'] in gt.getCatIds()
    val = scalar_records(trained['work_dir'], 'coco/bbox_mAP')[-1]
    for iou_type in ('bbox', 'segm'):
        evaluator = COCOeval(gt, gt.loadRes(str(out_dir / 'results.json')), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        for index, name in ((0, 'mAP'), (1, 'mAP_50'), (2, 'mAP_75')):
            assert evaluator.stats[index] == pytest.approx(
                val[f'coco/{iou_type}_{name}'], abs=5.1e-4), (iou_type, name)


PORTABLE_LOAD = """
import json, sys, torch
from mmengine.runner import load_checkpoint
path = sys.argv[1]
ckpt = torch.load(path, map_location='cpu', weights_only=False)
state = ckpt['state_dict']

class Holder(torch.nn.Module):  # the detector's parameter names, without its classes
    def __init__(self, state):
        super().__init__()
        for key, value in state.items():
            owner = self
            *parents, leaf = key.split('.')
            for part in parents:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.register_buffer(leaf, torch.zeros_like(value))

model = Holder(state)
loaded = load_checkpoint(model, path, map_location='cpu', strict=True)
same = all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
print(json.dumps(dict(
    keys=sorted(ckpt), iter=ckpt['meta']['iter'], same=same, tensors=len(state),
    history=type(ckpt['message_hub']['log_scalars']['train/loss']).__name__,
    loss_mean=float(ckpt['message_hub']['log_scalars']['train/loss'].mean()),
    vir_dense=[m for m in sys.modules if m.startswith('vir_dense')])))
"""


def test_checkpoint_opens_without_vir_dense(trained, tmp_path):
    """What tools/train.py writes is a plain mmengine checkpoint: a fresh interpreter with
    torch + mmengine only opens it with torch.load(weights_only=False) and with mmengine's
    load_checkpoint (which on torch >= 2.6 needs weights-only off for any mmengine training
    checkpoint: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1)."""
    script = tmp_path / 'portable_load.py'
    script.write_text(PORTABLE_LOAD)
    path = trained['work_dir'] / 'epoch_2.pth'
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1')
    proc = subprocess.run([sys.executable, str(script), str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['vir_dense'] == []
    assert result['same'] and result['tensors'] == len(load_ckpt(path)['state_dict'])
    assert result['iter'] == 2 * ITERS_PER_EPOCH
    assert {'meta', 'state_dict', 'optimizer', 'message_hub'} <= set(result['keys'])
    assert result['history'] == 'HistoryBuffer'
    losses = [r['loss'] for r in scalar_records(trained['work_dir'], 'loss')]
    assert math.isfinite(result['loss_mean']) and min(losses) <= result['loss_mean'] <= max(
        losses)
