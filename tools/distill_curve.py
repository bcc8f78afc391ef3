"""Accuracy vs time of a distillation recipe on the demo (tools/distill_demo.py's data and
teacher), evaluated along the way: the curve behind docs/distillation.md's target check.

    OMP_NUM_THREADS=1 python tools/distill_curve.py --pool 512 --calib-n 512 --s1 100 \\
        --lr1 5e-4 --s2 60 --lr2 2e-4 --eval-every 20 --neval 250

Uses the library's pieces (BlockMatching.calibrate / teacher_targets / match, FeatureMatching,
the same warm-up + cosine schedule as vir_dense.distill.train) in one process, on the demo's
cached image arrays (no PNG decoding) with random flips, batch --bs. After the calibration,
after stage 1 and every --eval-every stage-2 steps it prints the cumulative training time --
CPU time of this process (far less inflated by a busy machine than wall time, not immune:
the same run took 76 and 63 s at different loads) and wall time -- and the
teacher-head accuracy / token cosine on the first --neval held-out images; evaluation time is
not counted. The last line (RESULT ...) is the whole curve as JSON.

--pool2 makes stage 2 draw its batches from the stage-1 pool as well (FeatureMatching with
precomputed teacher targets: no teacher forward per stage-2 step). The recipe that met the
target in three of five seeds (docs/distillation.md):

    OMP_NUM_THREADS=1 python tools/distill_curve.py --pool 512 --calib-n 512 --s1 40 \\
        --lr1 5e-4 --pool2 --s2 245 --lr2 2e-4 --bs 8 --eval-every 35 --neval 250 --seed 2
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEACHER = 'vit_tiny_patch16_224'


def lr_at(step, total, base, warmup, min_ratio=0.01):
    """Linear warm-up then cosine decay (as vir_dense.distill.train._lr)."""
    warm = max(1, int(round(total * warmup)))
    if step < warm:
        return base * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work-dir', default='work_dirs/distill_demo',
                   help='where distill_demo.py left teacher.pth and data_6000_1000.npz')
    p.add_argument('--calib', default='proj', choices=['proj', 'scale', 'none'])
    p.add_argument('--calib-n', type=int, default=256, help='calibration images')
    p.add_argument('--ridge', type=float, default=1e-3)
    p.add_argument('--pool', type=int, default=0, help='stage-1 pool of teacher targets')
    p.add_argument('--pool2', action='store_true',
                   help='stage 2 draws its batches from the stage-1 pool too (its images and the '
                        'teacher\'s final tokens and tap outputs, derived from the pool: no '
                        'teacher forward per stage-2 step)')
    p.add_argument('--s1', type=int, default=0, help='stage-1 steps')
    p.add_argument('--lr1', type=float, default=5e-4)
    p.add_argument('--s2', type=int, default=100, help='stage-2 steps')
    p.add_argument('--lr2', type=float, default=2e-4)
    p.add_argument('--bs', type=int, default=16)
    p.add_argument('--taps', default='0 1 2 3 4')
    p.add_argument('--logit', type=float, default=1.0, help='stage-2 KL weight')
    p.add_argument('--cls', type=float, default=1.0, help='stage-2 class-token weight')
    p.add_argument('--warm', type=float, default=0.05, help='warm-up fraction')
    p.add_argument('--eval-every', type=int, default=25)
    p.add_argument('--neval', type=int, default=500)
    p.add_argument('--seed', type=int, default=0,
                   help='torch seed; the data order and flips use seed + 1')
    a = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    import vir_dense  # noqa: F401
    from vir_dense.distill import (BlockMatching, FeatureMatching, build_student,
                                   feature_agreement, load_teacher)
    from vir_dense.distill.models import trainable_stage_parameters

    arrays = np.load(os.path.join(a.work_dir, 'data_6000_1000.npz'))
    to_tensor = lambda im: (torch.from_numpy(im).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5  # noqa: E731
    x, xv, yv = to_tensor(arrays['x']), to_tensor(arrays['xv']), torch.from_numpy(arrays['yv'])
    torch.manual_seed(a.seed)
    teacher, _ = load_teacher(TEACHER, os.path.join(a.work_dir, 'teacher.pth'))
    student, _ = build_student(teacher)
    generator = torch.Generator().manual_seed(a.seed + 1)
    order, position = torch.randperm(len(x), generator=generator), [0]

    def batch(n):
        index = order[position[0]:position[0] + n]
        position[0] += n
        images = x[index]
        flip = torch.rand(n, generator=generator) < 0.5
        images[flip] = images[flip].flip(-1)
        return images

    curve, spent = [], dict(cpu=0.0, wall=0.0)
    clock = [time.process_time(), time.perf_counter()]

    def mark(tag):
        spent['cpu'] += time.process_time() - clock[0]
        spent['wall'] += time.perf_counter() - clock[1]
        m = feature_agreement(teacher, student, [(xv[i:i + 250], yv[i:i + 250])
                                                 for i in range(0, a.neval, 250)])
        student.train()
        curve.append(dict(at=tag, cpu=round(spent['cpu'], 1), wall=round(spent['wall'], 1),
                          acc=m['student_accuracy'], cos=round(m['token_cosine'], 3),
                          cls=round(m['cls_cosine'], 3)))
        print(curve[-1], flush=True)
        clock[:] = [time.process_time(), time.perf_counter()]

    matching = BlockMatching(teacher, student)
    pool = None
    if a.pool:
        images = [batch(a.bs) for _ in range(a.pool // a.bs)]
        pairs = [matching.teacher_targets(im) for im in images]
        pool = (torch.cat([q[0] for q in pairs], 1), torch.cat([q[1] for q in pairs], 1))
        pool_images = torch.cat(images)
    if a.pool2 and pool is None:
        p.error('--pool2 needs --pool')
    if a.calib != 'none':
        if pool is not None:
            chunks = [(pool[0][:, i:i + 64], pool[1][:, i:i + 64])
                      for i in range(0, min(a.calib_n, pool[0].shape[1]), 64)]
        else:
            chunks = [batch(64) for _ in range(a.calib_n // 64)]
        fit = matching.calibrate(chunks, mode=a.calib, ridge=a.ridge)
        print('calibration fit (1 - R^2 per block):', [round(v, 3) for v in fit.tolist()])
    mark('calibration')
    if a.s1:
        params = trainable_stage_parameters(student, 1)
        optimizer = torch.optim.AdamW(params, lr=a.lr1, weight_decay=0.01)
        for step in range(a.s1):
            for group in optimizer.param_groups:
                group['lr'] = lr_at(step, a.s1, a.lr1, a.warm)
            if pool is not None:
                index = torch.randint(pool[0].shape[1], (a.bs,), generator=generator)
                loss = matching(inputs=pool[0][:, index], targets=pool[1][:, index]).sum()
            else:
                loss = matching(batch(a.bs)).sum()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        mark(f'stage 1: {a.s1} steps')
    matching.close()
    if a.s2:
        params = trainable_stage_parameters(student, 2)
        features = FeatureMatching(teacher, student, tuple(int(v) for v in a.taps.split()),
                                   a.cls, 1.0, a.logit)
        if a.pool2:  # the library's derivation (DistillConfig.stage2_from_pool uses it too)
            pool2 = features.targets_from_block_inputs(pool[0])
        optimizer = torch.optim.AdamW(params, lr=a.lr2, weight_decay=0.01)
        for step in range(a.s2):
            for group in optimizer.param_groups:
                group['lr'] = lr_at(step, a.s2, a.lr2, a.warm)
            if a.pool2:
                index = torch.randint(len(pool_images), (a.bs,), generator=generator)
                loss = sum(features(pool_images[index],
                                    (pool2[0][index], pool2[1][:, index])).values())
            else:
                loss = sum(features(batch(a.bs)).values())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if (step + 1) % a.eval_every == 0 or step + 1 == a.s2:
                mark(f'stage 2: {step + 1} steps')
    print('RESULT', json.dumps(dict(args=vars(a), curve=curve)), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
