"""Evaluate a checkpoint (mmengine Runner); one tool for mmdet and mmseg configs.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE] [--show-dir DIR]
                         [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm|mpi]

Detection: --out FILE.pkl dumps the raw predictions; --show-dir DIR writes images with the
predictions drawn (under the work dir's timestamp folder, as mmdet does).
Segmentation: --out DIR writes the predicted label maps; --show-dir DIR the overlays.
"""
import argparse

from mmengine.config import DictAction

from vir_dense import preflight
from vir_dense.cli import UsageError, run_cli, set_local_rank
from vir_dense.config import run_config


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--out', type=str, help='detection: dump predictions to a .pkl file; '
                        'segmentation: save the predicted label maps in this folder')
    parser.add_argument('--show', action='store_true', help='show predictions in a window')
    parser.add_argument('--show-dir', help='save images with drawn predictions in this folder')
    parser.add_argument('--wait-time', type=float, default=2, help='--show interval (s)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings (keys are checked for typos)')
    parser.add_argument('--allow-partial', action='store_true',
                        help='evaluate even if only part of the checkpoint fits the model '
                             '(what differs is listed as a warning)')
    parser.add_argument('--verbose', action='store_true',
                        help='also print the environment and config dump (always in the log file)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank)
    return args


def trigger_visualization_hook(cfg, args, scope):
    hooks = cfg.get('default_hooks') or {}
    if 'visualization' not in hooks:
        raise UsageError('--show/--show-dir need default_hooks.visualization in the config')
    hook = hooks['visualization']
    hook['draw'] = True
    if args.show:
        hook['show'] = True
        hook['wait_time'] = args.wait_time
    if args.show_dir:
        if scope == 'mmseg':
            cfg.visualizer['save_dir'] = args.show_dir
        else:
            hook['test_out_dir'] = args.show_dir


def main(argv=None):
    args = parse_args(argv)
    cfg, scope = run_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    from vir_dense.mm.launch import build_runner, init_distributed_cpu, setup_device
    from vir_dense.mm.model_checkpoint import check_model_checkpoint
    cfg.load_from = preflight.check_checkpoint(args.checkpoint, 'checkpoint')
    cfg.resume = False
    if args.show or args.show_dir:
        trigger_visualization_hook(cfg, args, scope)

    if args.out and scope == 'mmdet' and not args.out.endswith(('.pkl', '.pickle')):
        raise UsageError(f'--out {args.out}: detection predictions are dumped as .pkl')
    if args.out and scope == 'mmseg':
        evaluators = cfg.test_evaluator
        for evaluator in evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]:
            evaluator['output_dir'] = args.out
            evaluator['keep_results'] = True

    preflight.check_datasets(cfg, ['test'])
    setup_device(cfg, args.launcher)
    init_distributed_cpu(cfg, args.launcher)
    runner = build_runner(cfg, args.verbose)
    # mmengine loads load_from non-strictly (a checkpoint of another config would evaluate a
    # half-random model): check the fit first.
    check_model_checkpoint(runner.model, cfg.load_from, args.config,
                           allow_partial=args.allow_partial)

    if args.out and scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    return metrics


if __name__ == '__main__':
    run_cli(main)
