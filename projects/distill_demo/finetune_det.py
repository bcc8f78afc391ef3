"""Does a distilled ViR help a detector? Fine-tune the demo detector from three backbones.

    OMP_NUM_THREADS=1 python projects/distill_demo/finetune_det.py \\
        --student work_dirs/distill_demo/<tag>/vir_distilled.pth [--epochs 4] \\
        [--work-dir work_dirs/distill_det] [--teacher-checkpoint work_dirs/distill_demo/teacher.pth]

configs/maskrcnn_vir_t_synthetic.py (ViR D=192, 6 blocks, 3 heads, patch 8, conv spatial prior +
FPN: the shape of projects/distill_demo/distill_demo.py's teacher) is trained from

  (a) random init (the config as it is),
  (b) the naive conversion of the demo teacher (convert_to_vir: weights copied, no training),
  (c) the distilled student (--student),

all three at the same time, side by side (one process and --threads threads each, so they share
the machine's load equally), for the same number of epochs, then evaluated on the 60 val images
(CocoMetric bbox + segm). Pretrained backbones load through the backbone's
init_cfg=dict(type='Pretrained', checkpoint=...) (a small config per run, written next to the
run) and the load report is checked for 100% of backbone tensors. All three use the teacher's
input normalisation (mean = std = 127.5) so that only the initialisation differs.

Results: <work-dir>/results.json and a markdown table on stdout.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONFIG = 'configs/maskrcnn_vir_t_synthetic.py'
DATA_ROOT = 'data/synthetic_coco'
TEACHER = 'vit_tiny_patch16_224'
# retention settings that must agree between the distilled file and the detector backbone
RETENTION_KEYS = ('mask', 'normalize_retention', 'decay_exponents')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--student', required=True, help='distilled ViR checkpoint (.pth)')
    p.add_argument('--teacher-checkpoint', default='work_dirs/distill_demo/teacher.pth',
                   help='the demo teacher (for the naive conversion)')
    p.add_argument('--work-dir', default='work_dirs/distill_det')
    p.add_argument('--epochs', type=int, default=4)
    p.add_argument('--threads', type=int, default=1, help='torch threads per run')
    p.add_argument('--only', nargs='+', choices=['random', 'naive', 'distilled'],
                   default=['random', 'naive', 'distilled'])
    return p.parse_args(argv)


def retention_settings_of_config(cfg):
    backbone = cfg.model.backbone
    heads = backbone.arch['num_heads'] if isinstance(backbone.arch, dict) else None
    return dict(mask=backbone.get('mask', 'bidirectional_2d'),
                normalize_retention=bool(backbone.get('normalize_retention', False)),
                decay_exponents=[float(v) for v in backbone.get('decay_exponents', (5.0, 9.0))],
                num_heads=heads)


def check_settings(meta, student_heads, config_settings):
    """Differences between the distillation and the detector backbone (empty: they match)."""
    wanted = dict(mask=meta.get('mask'), normalize_retention=bool(meta.get('normalize_retention')),
                  decay_exponents=[float(v) for v in meta.get('decay_exponents', ())],
                  num_heads=student_heads)
    return {k: (wanted[k], config_settings[k]) for k in wanted if wanted[k] != config_settings[k]}


def write_naive(teacher_path, meta, out_path):
    """The naive conversion of the teacher, with the student's retention settings."""
    from vir_dense.distill import build_student, load_teacher, save_vir_checkpoint
    teacher, _ = load_teacher(TEACHER, teacher_path)
    naive, report = build_student(teacher, meta['mask'], meta['normalize_retention'],
                                  meta['decay_exponents'], source=teacher_path)
    save_vir_checkpoint(naive, out_path, dict(meta, naive_conversion=True))
    return report


def write_run_config(path, checkpoint):
    """A config that is the demo config plus a Pretrained backbone init and the teacher's
    input normalisation (mean = std = 127.5)."""
    lines = [f"_base_ = {str(ROOT / CONFIG)!r}",
             "model = dict(",
             "    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),"]
    if checkpoint:
        lines.append(f"    backbone=dict(init_cfg=dict(_delete_=True, type='Pretrained', "
                     f"checkpoint={str(Path(checkpoint).resolve())!r})),")
    lines.append(")")
    Path(path).write_text('\n'.join(lines) + '\n')


def epoch_options(epochs):
    return ['--cfg-options', f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}',
            f'param_scheduler.1.end={epochs}', f'param_scheduler.1.T_max={epochs}',
            f'default_hooks.checkpoint.interval={epochs}']


def final_metrics(run_dir):
    """The last val record (coco/bbox_mAP, coco/segm_mAP, ...) of the run's scalars.json."""
    found = {}
    for path in sorted(Path(run_dir).glob('*/vis_data/scalars.json')):
        for line in path.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if any(k.startswith('coco/') for k in record):
                found = {k: v for k, v in record.items() if k.startswith('coco/')}
    return found


def load_report(log_text):
    match = re.search(r'loaded\s*:\s*(\d+) of (\d+) backbone tensors \(([\d.]+)%\)', log_text)
    return None if match is None else dict(loaded=int(match.group(1)),
                                           expected=int(match.group(2)),
                                           percent=float(match.group(3)))


def main(argv=None):
    args = parse_args(argv)
    import torch
    from mmengine.config import Config

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    subprocess.run([sys.executable, 'tools/dataset_converters/make_synthetic_data.py', 'coco',
                    '--out', DATA_ROOT], cwd=ROOT, env=env, check=True)

    student = torch.load(args.student, map_location='cpu', weights_only=False)
    meta = student.get('meta', {})
    cfg = Config.fromfile(str(ROOT / CONFIG))
    settings = retention_settings_of_config(cfg)
    from vir_dense.distill import load_teacher
    _, info = load_teacher(TEACHER, args.teacher_checkpoint)
    student_heads = info['num_heads']  # build_student gives the student the teacher's heads
    differences = check_settings(meta, student_heads, settings)
    if differences:
        sys.exit(f'error: the distilled file and {CONFIG} differ in {differences} '
                 '(distilled, config): distil with the config\'s settings or change the config')
    print(f'retention settings match: {settings}', flush=True)

    naive_path = work_dir / 'vir_naive.pth'
    report = write_naive(args.teacher_checkpoint, meta, str(naive_path))
    print(f'naive conversion written to {naive_path}\n{report}', flush=True)
    checkpoints = dict(random=None, naive=str(naive_path), distilled=args.student)

    procs = {}
    for name in args.only:
        run_dir = work_dir / name
        run_dir.mkdir(exist_ok=True)
        config_path = run_dir / 'config.py'
        write_run_config(config_path, checkpoints[name])
        log = open(run_dir / 'train.out', 'w')
        cmd = [sys.executable, 'tools/train.py', str(config_path), '--work-dir', str(run_dir),
               *epoch_options(args.epochs)]
        procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                        stderr=subprocess.STDOUT), time.time(), log)
        print(f'[{name}] started: {" ".join(cmd)}', flush=True)
    results = {}
    for name, (proc, start, log) in procs.items():
        code = proc.wait()
        log.close()
        text = (work_dir / name / 'train.out').read_text()
        results[name] = dict(init=checkpoints[name], exit_code=code,
                             wall_seconds=time.time() - start, load_report=load_report(text),
                             **final_metrics(work_dir / name))
        print(f'[{name}] {results[name]}', flush=True)
    results['_setup'] = dict(epochs=args.epochs, threads_per_run=args.threads,
                             side_by_side=len(procs), load_average=os.getloadavg(),
                             retention_settings=settings, student=args.student,
                             student_meta={k: meta.get(k) for k in RETENTION_KEYS})
    previous = {}
    out = work_dir / 'results.json'
    if out.is_file():
        previous = json.loads(out.read_text())
    previous.update(results)
    out.write_text(json.dumps(previous, indent=1, default=str))

    print('\n| backbone init | load report | wall time | bbox mAP | bbox mAP50 | segm mAP | '
          'segm mAP50 |')
    print('|---|---|---|---|---|---|---|')
    for name in ('random', 'naive', 'distilled'):
        r = previous.get(name)
        if not r:
            continue
        rep = r.get('load_report')
        rep_text = f'{rep["loaded"]}/{rep["expected"]} ({rep["percent"]}%)' if rep else '--'
        print(f'| {name} | {rep_text} | {r["wall_seconds"]:.0f} s | '
              f'{r.get("coco/bbox_mAP", float("nan")):.3f} | '
              f'{r.get("coco/bbox_mAP_50", float("nan")):.3f} | '
              f'{r.get("coco/segm_mAP", float("nan")):.3f} | '
              f'{r.get("coco/segm_mAP_50", float("nan")):.3f} |')
    failed = [n for n in procs if results[n]['exit_code'] != 0]
    bad_load = [n for n in procs if checkpoints[n] and
                (results[n]['load_report'] or {}).get('percent') != 100.0]
    if failed or bad_load:
        print(f'error: failed runs {failed}; incomplete backbone loads {bad_load}',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
