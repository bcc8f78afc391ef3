"""Train a detector or segmentor (mmengine Runner); one tool for mmdet and mmseg configs.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
                          [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm|mpi]

The config's ``default_scope`` ('mmdet' or 'mmseg') decides which library's modules are
registered. Without CUDA, distributed runs use the gloo backend. Missing datasets,
checkpoints and misspelt --cfg-options keys stop the run at once with one message.
--resume continues exactly (same weights as an uninterrupted run on CPU): docs/resume.md.
"""
import argparse

from mmengine.config import DictAction
from mmengine.logging import print_log

from vir_dense import preflight
from vir_dense.cli import UsageError, run_cli, set_local_rank
from vir_dense.config import run_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (fp16 on GPU, bf16 autocast on CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by total batch / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT; without a value, from the latest checkpoint '
                             'in the work dir')
    parser.add_argument('--allow-partial', action='store_true',
                        help='load_from: load only the tensors that fit the model (listed as a '
                             'warning) instead of stopping at a checkpoint of another config')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. data_root=/data/coco/ '
                             'train_dataloader.batch_size=4 (keys are checked for typos)')
    parser.add_argument('--verbose', action='store_true',
                        help='also print the environment and config dump (always in the log file)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank)
    return args


def apply_amp(cfg):
    optim_wrapper = cfg.optim_wrapper
    if optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
        print_log('AMP is already on in the config', logger='current')
        return
    if optim_wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
        raise UsageError('--amp works with optim_wrapper.type=OptimWrapper, not '
                           f'{optim_wrapper.type}')
    import torch
    if torch.cuda.is_available():
        optim_wrapper.type = 'AmpOptimWrapper'
        optim_wrapper.loss_scale = 'dynamic'
    else:
        # mmengine's AmpOptimWrapper needs a GPU; on CPU autocast runs in bfloat16, which has
        # fp32's range, so no loss scaling is needed (vir_dense.mm.amp.CPUAmpOptimWrapper).
        optim_wrapper.type = 'CPUAmpOptimWrapper'
        optim_wrapper.dtype = 'bfloat16'


def apply_auto_scale_lr(cfg):
    scale = cfg.get('auto_scale_lr')
    if not scale or 'base_batch_size' not in scale:
        raise UsageError('--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=N) in the '
                           'config (N: the total batch size its lr was set for)')
    scale.enable = True


def main(argv=None):
    args = parse_args(argv)
    cfg, _ = run_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    from vir_dense.mm.launch import build_runner, init_distributed_cpu, setup_device
    from vir_dense.mm.model_checkpoint import check_model_checkpoint
    from vir_dense.mm.resume import add_exact_resume_hook, resume_checkpoint_path, \
        use_checkpoint_seed

    if args.amp:
        apply_amp(cfg)
    if args.auto_scale_lr:
        apply_auto_scale_lr(cfg)

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = preflight.check_checkpoint(args.resume, 'checkpoint to resume from')
    elif cfg.get('load_from'):
        preflight.check_checkpoint(cfg.load_from, 'load_from checkpoint')
    # A resumed run is built with the checkpoint's seed (sampler order, worker seeds); the
    # generator states themselves come back through ExactResumeHook (docs/resume.md).
    use_checkpoint_seed(cfg)

    # Fail fast, before any model is built.
    splits = ['train']
    if cfg.get('val_cfg') and cfg.get('val_dataloader') and cfg.get('val_evaluator'):
        splits.append('val')
    preflight.check_datasets(cfg, splits)
    preflight.check_pretrained(cfg)

    setup_device(cfg, args.launcher)
    init_distributed_cpu(cfg, args.launcher)
    runner = add_exact_resume_hook(build_runner(cfg, args.verbose))
    # mmengine loads load_from / resume checkpoints non-strictly; check the fit first. A
    # resume must fit exactly (it continues the same run); load_from may opt in to partial.
    loaded = resume_checkpoint_path(cfg) if cfg.get('resume') else cfg.get('load_from')
    if loaded:
        check_model_checkpoint(runner.model, loaded, args.config,
                               allow_partial=args.allow_partial and not cfg.get('resume'))
    runner.train()


if __name__ == '__main__':
    run_cli(main)
