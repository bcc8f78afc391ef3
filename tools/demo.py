"""The detection demo (`make demo`): data -> train -> evaluate -> draw -> plot, on CPU.

    python tools/demo.py [--work-dir work_dirs/demo_det] [--epochs N] [--threads N]

1. writes the embedded synthetic COCO-format dataset
   (tools/dataset_converters/make_synthetic_data.py coco),
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

CONFIG = 'configs/maskrcnn_vir_t_synthetic.py'
DATA_ROOT = 'data/synthetic_coco'
LOSS_KEYS = ('loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/demo_det')
    parser.add_argument('--epochs', type=int, default=None,
                        help='override the config\'s number of epochs (for a quicker look)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: the cores idle now, measured over '
                             'one second: threads beyond them only wait for each other)')
    parser.add_argument('--num-vis', type=int, default=8, help='val images to draw')
    return parser.parse_args(argv)


def cpu_times(cores):
    """(idle, total) jiffies of `cores` from /proc/stat (idle includes iowait)."""
    idle = total = 0
    with open('/proc/stat') as f:
        for line in f:
            name, *values = line.split()
            if name.startswith('cpu') and name[3:].isdigit() and int(name[3:]) in cores:
                values = [int(v) for v in values[:8]]  # up to steal; guest is inside user
                idle += values[3] + values[4]
                total += sum(values)
    return idle, total


def idle_cores(interval=1.0):
    """(idle cores, usable cores): how many of this process's cores were idle over the last
    `interval` seconds. The load average cannot tell: it trails by a minute, so right after
    `make setup` has compiled mmcv on every core it still reports the machine as busy."""
    cores = sorted(os.sched_getaffinity(0))
    try:
        idle0, total0 = cpu_times(cores)
        time.sleep(interval)
        idle1, total1 = cpu_times(cores)
    except (OSError, ValueError):
        return None, len(cores)
    if total1 <= total0:
        return None, len(cores)
    return len(cores) * (idle1 - idle0) / (total1 - total0), len(cores)


def pick_threads(requested):
    """(threads, why)."""
    if requested:
        return requested, 'as asked (--threads)'
    idle, cores = idle_cores()
    if idle is None:
        return cores, f'all {cores} usable cores (/proc/stat unreadable)'
    threads = max(1, min(cores, round(idle)))
    return threads, (f'{idle:.1f} of {cores} usable cores idle over the last second; '
                     '--threads N to choose')


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
    threads, why = pick_threads(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    work_dir = Path(args.work_dir)
    print(f'[demo] Mask R-CNN + ViR on synthetic shapes, CPU, {threads} thread(s): {why}; '
          f'everything goes to {work_dir}/', flush=True)

    timings = {}
    timings['data'] = run('data', ['tools/dataset_converters/make_synthetic_data.py', 'coco',
                                   '--out', DATA_ROOT], env)

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
        config=CONFIG, checkpoint=checkpoint, threads=threads, threads_chosen_by=why,
        wall_time_s=round(wall, 1),
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
