"""The detection demo (`make demo`): data -> train -> evaluate -> draw -> plot, on CPU.

    python tools/demo.py [--work-dir work_dirs/demo_det] [--epochs N] [--threads N]

1. writes the embedded synthetic COCO-format dataset (tools/make_synthetic_data.py coco),
2. trains configs/maskrcnn_vir_t_synthetic.py (tools/train.py, random init),
3. evaluates the final checkpoint with CocoMetric bbox + segm (tools/test.py),
4. draws predictions on a few val images (tools/infer_det.py),
5. plots the loss curves and val mAP from the run's scalars.json (matplotlib),
then prints the metrics, the wall time and where every file is.
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = 'configs/maskrcnn_vir_t_synthetic.py'
DATA_ROOT = 'data/synthetic_coco'
LOSS_KEYS = ('loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo_det')
    parser.add_argument('--epochs', type=int, default=None,
                        help='override the config\'s number of epochs (for a quicker look)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: all cores, 1 if the machine is '
                             'already busy: oversubscribed OpenMP threads crawl)')
    parser.add_argument('--num-vis', type=int, default=8, help='val images to draw')
    return parser.parse_args(argv)


def pick_threads(requested):
    if requested:
        return requested
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


def run(step, cmd, env):
    print(f'\n[demo] {step}: {" ".join(cmd)}', flush=True)
    start = time.time()
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env)
    if proc.returncode != 0:
        sys.exit(f'[demo] {step} failed (exit {proc.returncode})')
    return time.time() - start


def latest_run_dir(work_dir, newer_than):
    runs = [p for p in Path(work_dir).iterdir() if p.is_dir() and p.name[:8].isdigit()
            and p.stat().st_mtime >= newer_than - 1]
    return max(runs, key=lambda p: p.name) if runs else None


def read_records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(scalars_path, out_png):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    records = read_records(scalars_path)
    train = [r for r in records if 'loss' in r]
    val = [r for r in records if 'coco/bbox_mAP' in r]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in LOSS_KEYS:
        points = [(r['step'], r[key]) for r in train if key in r]
        if points:
            xs, ys = zip(*points)
            ax_loss.plot(xs, ys, label=key, linewidth=2 if key == 'loss' else 1)
    ax_loss.set(xlabel='iteration', ylabel='loss', title='training losses', yscale='log')
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        points = [(r['step'], r[key]) for r in val if key in r]
        if points:
            xs, ys = zip(*points)
            ax_map.plot(xs, ys, marker='o', label=key)
    ax_map.set(xlabel='epoch', ylabel='mAP', title='val (synthetic shapes)', ylim=(0, 1))
    ax_map.legend(fontsize=8)
    ax_map.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    threads = pick_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''))
    work_dir = Path(args.work_dir)
    print(f'[demo] Mask R-CNN + ViR on synthetic shapes, CPU, {threads} thread(s); '
          f'everything goes to {work_dir}/')

    timings = {}
    timings['data'] = run('data', ['tools/make_synthetic_data.py', 'coco', '--out', DATA_ROOT],
                          env)

    options = []
    if args.epochs:
        options = ['--cfg-options', f'train_cfg.max_epochs={args.epochs}',
                   f'param_scheduler.1.end={args.epochs}',
                   f'param_scheduler.1.T_max={args.epochs}']
    train_start = time.time()
    timings['train'] = run('train', ['tools/train.py', CONFIG, '--work-dir', str(work_dir),
                                     *options], env)
    train_run = latest_run_dir(work_dir, train_start)
    checkpoint = (work_dir / 'last_checkpoint').read_text().strip()

    test_dir = work_dir / 'test'
    test_start = time.time()
    timings['test'] = run('evaluate', ['tools/test.py', CONFIG, checkpoint,
                                       '--work-dir', str(test_dir)], env)
    test_run = latest_run_dir(test_dir, test_start)
    metrics = {}
    for path in sorted(test_run.glob('*.json')) if test_run else []:
        for record in read_records(path):
            metrics.update({k: v for k, v in record.items() if k.startswith('coco/')})

    vis_dir = work_dir / 'infer'
    val_images = sorted((ROOT / DATA_ROOT / 'val2017').glob('*.jpg'))[:args.num_vis]
    timings['infer'] = run('draw', ['tools/infer_det.py', CONFIG, checkpoint,
                                    *map(str, val_images), '--out-dir', str(vis_dir)], env)

    curve = work_dir / 'loss_curve.png'
    scalars = train_run / 'vis_data' / 'scalars.json' if train_run else None
    if scalars and scalars.is_file():
        plot_curves(scalars, curve)

    wall = time.time() - start
    summary = dict(
        config=CONFIG, checkpoint=checkpoint, threads=threads, wall_time_s=round(wall, 1),
        step_times_s={k: round(v, 1) for k, v in timings.items()},
        metrics={k: round(v, 4) for k, v in metrics.items()})
    (work_dir / 'demo_summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    print('\n[demo] ==================== result ====================')
    for key in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'segm_mAP', 'segm_mAP_50',
                'segm_mAP_75'):
        if f'coco/{key}' in metrics:
            print(f'[demo]   {key:<12} {metrics[f"coco/{key}"]:.3f}')
    print(f'[demo] wall time {wall / 60:.1f} min ('
          + ', '.join(f'{k} {v / 60:.1f}' for k, v in timings.items()) + ' min)')
    print(f'[demo] checkpoint      {checkpoint}')
    print(f'[demo] training log    {train_run}/')
    print(f'[demo] loss curve      {curve}')
    print(f'[demo] drawings        {vis_dir}/vis/ (COCO results: {vis_dir}/results.json)')
    print(f'[demo] summary         {work_dir}/demo_summary.json')


if __name__ == '__main__':
    main()
