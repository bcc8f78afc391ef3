"""tools/dist_train.sh: 2 processes (torchrun, gloo on CPU) train a tiny detector a few steps."""
from pathlib import Path

import torch

from launch import run_dist_script
from vir_dense.compat import allow_mmengine_checkpoint_types
from vir_dense.datasets import make_coco_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py')


def test_dist_train_two_processes(tmp_path):
    data_root = make_coco_dataset(tmp_path / 'coco', num_train=8, num_val=4, image_size=64)
    work_dir = tmp_path / 'run'
    returncode, log = run_dist_script(
        ROOT / 'tools' / 'dist_train.sh',
        [CONFIG, '2', '--work-dir', str(work_dir),
         '--cfg-options', f'data_root={data_root}/', 'model.backbone.arch.num_layers=1',
         'model.backbone.out_indices=(0,)', 'optim_wrapper.paramwise_cfg.num_layers=1',
         'train_dataloader.dataset.pipeline.2.scale=(64,64)',
         'val_dataloader.dataset.pipeline.1.scale=(64,64)', 'train_dataloader.batch_size=2',
         'val_dataloader.batch_size=1', 'train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
         'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1'],
        cwd=tmp_path)
    assert returncode == 0, log[-6000:]
    # the environment dump goes to the run's log file only (the tools print it with --verbose)
    run_log = '\n'.join(p.read_text() for p in work_dir.glob('*/*.log'))
    assert 'Distributed launcher: pytorch' in run_log and 'Distributed training: True' in run_log
    assert "'backend': 'gloo'" in run_log or 'gloo' in (work_dir / 'maskrcnn_vir_t_synthetic.py'
                                                   ).read_text()
    assert 'coco/bbox_mAP' in log  # the 4 val images were split over both ranks and gathered
    allow_mmengine_checkpoint_types()
    ckpt = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=True)
    # 8 images / (2 processes x batch 2) = 2 iterations per epoch.
    assert ckpt['meta']['iter'] == 2
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])
