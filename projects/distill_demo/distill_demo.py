"""Proof on a CPU: does distillation turn a converted ViT into a working ViR?

    OMP_NUM_THREADS=1 python projects/distill_demo/distill_demo.py
        [--work-dir work_dirs/distill_demo] [--teacher-minutes 12] [--reuse-teacher]
        [--stage1-steps 60 --stage2-steps 30] [--batch-size 16] [--tag distilled]

1. makes a labelled set: 64 px images of one shape whose colour is the label (6 hues, chance
   16.7%; shape, size, angle, position and a desaturated background random);
2. trains a small ViT teacher on it (timm vit_tiny_patch16_224 at 64 px, patch 8, 6 blocks:
   64 patch tokens + class token) for --teacher-minutes, and measures its held-out accuracy;
3. converts it naively (weights copied: convert_to_vir) and distils it (vir_dense.distill, the
   same code as tools/distill_vit_to_vir.py, on the training images as an unlabeled folder);
4. compares naive vs distilled on held-out images: cosine similarity of the final tokens with
   the teacher's, and the accuracy of the teacher's head on the student's tokens.

Results go to <work-dir>/results.json and are printed as a markdown table.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# The label is the colour of the one shape in the image (6 saturated hues, jittered) on a
# desaturated background (flat, gradient, stripes, checker or blotches) with pixel noise; the
# shape (circle / square / triangle / star), size, angle and position are random. The class
# token must gather the answer from the few patches the shape covers: token mixing matters.
# (A first attempt labelled the shape itself: this ViT stayed at chance, 21.8% after 272 s.)
CLASSES = ('red', 'green', 'blue', 'yellow', 'magenta', 'cyan')
HUES = ((230, 30, 30), (30, 200, 30), (30, 60, 230), (230, 220, 30), (220, 30, 220),
        (30, 210, 220))
TEACHER = 'vit_tiny_patch16_224'
TEACHER_KW = dict(img_size=64, patch_size=8, depth=6, num_classes=len(CLASSES))
MEAN = STD = (0.5, 0.5, 0.5)


def render(seed: int, split: int, index: int, size: int = 64):
    """One image with a single shape; its label is the shape's colour class."""
    from vir_dense.datasets import synthetic as syn
    rng = np.random.default_rng([seed, split, index])
    image = syn._background(rng, size, size)
    grey = image.mean(-1, keepdims=True)
    image = grey + 0.25 * (image - grey)  # desaturated: hue comes from the shape only
    label = int(rng.integers(len(CLASSES)))
    shape = int(rng.integers(len(syn.SYNTHETIC_CLASSES)))
    radius = rng.uniform(0.12, 0.3) * size
    cx, cy = rng.uniform(radius * 0.8, size - radius * 0.8, 2)
    polygon = np.round(syn.shape_polygon(shape, cx, cy, radius, rng.uniform(0, 2 * np.pi)),
                       2).ravel().tolist()
    mask, _ = syn.rasterize_polygon(polygon, size, size)
    image[mask] = np.clip(np.array(HUES[label]) + rng.uniform(-30, 30, 3), 0, 255)
    image += rng.uniform(0, 8) * rng.standard_normal((size, size, 1)).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


def make_split(seed, split, count):
    images, labels = zip(*(render(seed, split, i) for i in range(count)))
    return np.stack(images), np.array(labels)


def to_tensor(images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - 0.5) / 0.5


def batches(x, y, size):
    for i in range(0, len(x), size):
        yield x[i:i + size], y[i:i + size]


@torch.no_grad()
def accuracy(model, x, y, size=250):
    model.eval()
    hits = sum(int((model(xb).argmax(-1) == yb).sum()) for xb, yb in batches(x, y, size))
    return hits / len(x)


def augment(x):
    """Shape classes survive flips and 90-degree rotations."""
    if torch.rand(()) < 0.5:
        x = x.flip(-1)
    return torch.rot90(x, int(torch.randint(4, ())), dims=(-2, -1))


def train_teacher(x, y, x_val, y_val, minutes, batch_size, log):
    import timm
    torch.manual_seed(0)
    model = timm.create_model(TEACHER, **TEACHER_KW)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    budget, start, step, total = minutes * 60, time.perf_counter(), 0, None
    while True:
        order = torch.randperm(len(x))
        for i in range(0, len(x) - batch_size + 1, batch_size):
            elapsed = time.perf_counter() - start
            if step == 20:  # schedule length from the measured speed
                total = max(40, int(budget / (elapsed / step)))
                log(f'teacher: {elapsed / step:.2f} s/step -> {total} steps '
                    f'({total * batch_size / len(x):.1f} epochs) in {minutes} min')
            if total is not None and step >= total:
                seconds = time.perf_counter() - start
                return model, seconds, step
            warm = 100
            lr = 1e-3 * (min(1.0, (step + 1) / warm) if total is None or step < warm else
                         0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm))))
            for group in optimizer.param_groups:
                group['lr'] = lr
            model.train()
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(augment(x[idx])), y[idx], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            if step % 100 == 0:
                log(f'teacher step {step}/{total} loss {float(loss):.3f} '
                    f'val acc {accuracy(model, x_val[:500], y_val[:500]):.3f} '
                    f'({time.perf_counter() - start:.0f} s)')


def agreement(teacher, student, x, y):
    from vir_dense.distill import feature_agreement
    return feature_agreement(teacher, student, batches(x, y, 250))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work-dir', default='work_dirs/distill_demo')
    p.add_argument('--num-train', type=int, default=6000)
    p.add_argument('--num-val', type=int, default=1000)
    p.add_argument('--teacher-minutes', type=float, default=12.0)
    p.add_argument('--teacher-batch-size', type=int, default=32)
    p.add_argument('--batch-size', type=int, default=16, help='distillation batch')
    p.add_argument('--stage1-steps', type=int, default=60)
    p.add_argument('--stage2-steps', type=int, default=30)
    p.add_argument('--lr1', type=float, default=2e-3)
    p.add_argument('--lr2', type=float, default=5e-4)
    p.add_argument('--taps', type=int, nargs='*', default=[0, 1, 2, 3, 4],
                   help='stage 2 taps (none: --taps with no value)')
    p.add_argument('--logit-weight', type=float, default=1.0)
    p.add_argument('--normalize-retention', action='store_true')
    p.add_argument('--calibrate', default='proj', choices=['proj', 'scale', 'none'])
    p.add_argument('--calibration-images', type=int, default=256)
    p.add_argument('--stage1-pool', type=int, default=0,
                   help='stage 1 reuses the teacher targets of this many images')
    p.add_argument('--stage2-from-pool', action='store_true',
                   help='stage 2 draws its batches from the stage-1 pool too')
    p.add_argument('--warmup-fraction', type=float, default=0.05)
    p.add_argument('--tag', default='distilled', help='name of this distillation setting')
    p.add_argument('--seed', type=int, default=0,
                   help='distillation seed (student init, data order, augmentations)')
    p.add_argument('--reuse-teacher', action='store_true',
                   help='load <work-dir>/teacher.pth instead of training it again')
    args = p.parse_args(argv)
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    import timm
    from PIL import Image

    import vir_dense  # noqa: F401
    from vir_dense.distill import DistillConfig, build_student, distill, load_teacher

    os.makedirs(args.work_dir, exist_ok=True)
    results_path = os.path.join(args.work_dir, 'results.json')
    results = json.load(open(results_path)) if os.path.isfile(results_path) else {}

    def log(message):
        print(message, flush=True)

    tic = time.perf_counter()
    cache = os.path.join(args.work_dir, f'data_{args.num_train}_{args.num_val}.npz')
    if os.path.isfile(cache):
        arrays = np.load(cache)
        x_np, y_np, xv_np, yv_np = (arrays[k] for k in ('x', 'y', 'xv', 'yv'))
    else:
        x_np, y_np = make_split(0, 0, args.num_train)
        xv_np, yv_np = make_split(0, 1, args.num_val)
        np.savez(cache, x=x_np, y=y_np, xv=xv_np, yv=yv_np)
    folder = os.path.join(args.work_dir, 'train_images')
    os.makedirs(folder, exist_ok=True)
    for i, image in enumerate(x_np):  # the unlabeled folder the distillation reads
        path = os.path.join(folder, f'{i:05d}.png')
        if not os.path.isfile(path):
            Image.fromarray(image).save(path)
    x, y, x_val, y_val = (to_tensor(x_np), torch.from_numpy(y_np), to_tensor(xv_np),
                          torch.from_numpy(yv_np))
    log(f'data: {len(x)} train / {len(x_val)} held-out images in {time.perf_counter() - tic:.0f} s')

    teacher_path = os.path.join(args.work_dir, 'teacher.pth')
    if args.reuse_teacher and os.path.isfile(teacher_path):
        log(f'reusing {teacher_path}')
    else:
        model, seconds, steps = train_teacher(x, y, x_val, y_val, args.teacher_minutes,
                                              args.teacher_batch_size, log)
        torch.save(model.state_dict(), teacher_path)
        results['teacher'] = dict(model=TEACHER, **TEACHER_KW, seconds=seconds, steps=steps,
                                  epochs=steps * args.teacher_batch_size / len(x),
                                  batch_size=args.teacher_batch_size,
                                  val_accuracy=accuracy(model, x_val, y_val))
        log(f'teacher: {results["teacher"]}')
    teacher, _ = load_teacher(TEACHER, teacher_path)
    teacher_seconds = results['teacher']['seconds']

    naive, _ = build_student(teacher, normalize_retention=args.normalize_retention)
    key = 'naive' + ('_normalized' if args.normalize_retention else '')
    results[key] = agreement(teacher, naive, x_val, y_val)
    log(f'{key}: {results[key]}')

    cfg = DistillConfig(
        teacher_model=TEACHER, teacher_checkpoint=teacher_path, data=folder,
        work_dir=os.path.join(args.work_dir, args.tag), batch_size=args.batch_size, workers=0,
        augment='flip', mean=MEAN, std=STD, crop_pct=1.0, stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps, lr1=args.lr1, lr2=args.lr2, log_every=10,
        checkpoint_every=10 ** 9, normalize_retention=args.normalize_retention,
        taps=tuple(args.taps), logit_weight=args.logit_weight,
        calibrate=args.calibrate, calibration_images=args.calibration_images,
        stage1_pool=args.stage1_pool, stage2_from_pool=args.stage2_from_pool,
        warmup_fraction=args.warmup_fraction, seed=args.seed)
    tic = time.perf_counter()
    out = distill(cfg, printer=log)
    wall = time.perf_counter() - tic
    student = out['student'].eval()
    # the output file, loaded the way users load it, is the same network
    loaded = timm.create_model('vir_tiny_patch16_224', pretrained=True, depth=6, patch_size=8,
                               img_size=64, num_classes=0, mask=out['meta']['mask'],
                               normalize_retention=args.normalize_retention,
                               pretrained_cfg_overlay=dict(file=out['output'])).eval()
    with torch.no_grad():
        same = torch.allclose(loaded.forward_features(x_val[:50]),
                              student.forward_features(x_val[:50]), atol=1e-4)
    metrics = agreement(teacher, student, x_val, y_val)
    metrics.update(stage_seconds=out['seconds'], stage_cpu_seconds=out['cpu_seconds'],
                   cpu_fraction_of_teacher_time=(sum(out['cpu_seconds'].values())
                                                 / teacher_seconds),
                   wall_seconds=wall,
                   steps=out['steps'], batch_size=args.batch_size,
                   fraction_of_teacher_time=sum(out['seconds'].values()) / teacher_seconds,
                   recovered=metrics['student_accuracy'] / metrics['teacher_accuracy'],
                   images_seen=(args.stage1_steps + args.stage2_steps) * args.batch_size,
                   lr1=args.lr1, lr2=args.lr2, normalize_retention=args.normalize_retention,
                   taps=args.taps, logit_weight=args.logit_weight, calibrate=args.calibrate,
                   calibration_images=args.calibration_images, stage1_pool=args.stage1_pool,
                   stage2_from_pool=args.stage2_from_pool, seed=args.seed,
                   warmup_fraction=args.warmup_fraction, load_average=os.getloadavg(),
                   threads=torch.get_num_threads())
    # the ViR's own classifier (head copied from the ViT) must give the same accuracy
    metrics['vir_classifier_accuracy'] = accuracy(student, x_val, y_val)
    metrics['timm_load_matches'] = same
    results[args.tag] = metrics
    log(f'{args.tag}: {metrics}')
    with open(results_path, 'w') as f:
        json.dump(results, f, indent=1, default=str)

    t = results['teacher']
    print(f'\nteacher: {t["val_accuracy"]:.3f} held-out accuracy after {t["seconds"]:.0f} s '
          f'({t["epochs"]:.1f} epochs)\n')
    print('| model | time | token cosine | class-token cosine | accuracy (teacher head) | '
          'agrees with teacher |')
    print('|---|---|---|---|---|---|')
    for name, m in results.items():
        if name == 'teacher':
            continue
        time_text = (f'{sum(m["stage_seconds"].values()):.0f} s '
                     f'({100 * m["fraction_of_teacher_time"]:.1f}% of teacher)'
                     if 'stage_seconds' in m else '0')
        if 'stage_cpu_seconds' in m:  # CPU time: what a busy machine does not inflate
            time_text += (f', CPU {sum(m["stage_cpu_seconds"].values()):.0f} s '
                          f'({100 * m["cpu_fraction_of_teacher_time"]:.1f}%)')
        print(f'| {name} | {time_text} | {m["token_cosine"]:.3f} | {m["cls_cosine"]:.3f} | '
              f'{m["student_accuracy"]:.3f} | {m["prediction_agreement"]:.3f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
