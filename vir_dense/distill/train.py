"""The distillation run: both stages, AMP, torchrun/DDP, resume, atomic checkpoints, logs."""
import dataclasses
import json
import math
import os
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from ..models.checkpoint_files import atomic_write, save_vir_checkpoint
from .data import ImageFolderDataset, build_transform, step_batches, steps_per_epoch
from .models import (BlockMatching, DistillError, FeatureMatching, build_student, load_teacher,
                     trainable_stage_parameters)

__all__ = ['DistillConfig', 'distill', 'save_vir_checkpoint']

LATEST = 'latest.pth'


@dataclasses.dataclass
class DistillConfig:
    teacher_model: str                       # timm model name, e.g. 'deit_small_patch16_224'
    teacher_checkpoint: str                  # local file with its weights
    data: str                                # folder of images (recursive, labels ignored)
    work_dir: str = 'work_dirs/distill'
    output: Optional[str] = None             # default: <work_dir>/vir_distilled.pth
    img_size: Optional[int] = None           # default: the teacher checkpoint's resolution
    teacher_kwargs: dict = dataclasses.field(default_factory=dict)
    student_arch: Optional[str] = None       # e.g. 'vir_small_patch16_224': checked to fit
    mask: str = 'bidirectional_2d'
    normalize_retention: bool = False
    decay_exponents: Tuple[float, float] = (5.0, 9.0)
    mean: Optional[Sequence[float]] = None   # default: the teacher's pretrained_cfg
    std: Optional[Sequence[float]] = None
    crop_pct: Optional[float] = None
    interpolation: Optional[str] = None
    augment: str = 'rrc'
    max_images: Optional[int] = None
    batch_size: int = 64                     # per process
    workers: int = 4
    stage1_epochs: float = 1.0
    stage2_epochs: float = 1.0
    stage1_steps: Optional[int] = None       # override the epochs
    stage2_steps: Optional[int] = None
    lr1: float = 5e-4                        # after the closed-form calibration
    lr2: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0
    calibrate: str = 'proj'                  # closed-form start: 'proj', 'scale' or 'none'
    calibration_images: int = 256            # images (per process) the calibration fits on
    stage1_pool: int = 0                     # >0: stage 1 reuses the teacher's targets of
                                             # this many images (computed once) every epoch
    stage2_from_pool: bool = False           # stage 2 draws from the stage-1 pool too (its
                                             # images; teacher targets derived from it)
    taps: Sequence[int] = ()                 # stage 2: also match these block outputs
    cls_weight: float = 1.0                  # stage 2: extra weight of the class token
    tap_weight: float = 1.0
    logit_weight: float = 0.0                # stage 2: KL of the teacher head's predictions
    stage1_cls_weight: float = 0.0           # stage 1: extra weight of the class token
    amp: bool = False
    amp_dtype: str = 'bfloat16'              # 'float16' uses a GradScaler (CUDA)
    log_every: int = 20
    checkpoint_every: int = 500              # steps; every stage end is saved too
    seed: int = 0
    resume: Optional[str] = None             # 'auto' (work_dir/latest.pth) or a path
    device: str = 'auto'


# --------------------------------------------------------------------------- helpers
def _setup_distributed(device: str):
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    use_cuda = torch.cuda.is_available() if device == 'auto' else device.startswith('cuda')
    if world > 1 and not dist.is_initialized():
        dist.init_process_group('nccl' if use_cuda else 'gloo')
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return rank, world, torch.device('cuda', local_rank)
    return rank, world, torch.device('cpu')


def _lr(step: int, total: int, base: float, warmup_fraction: float, min_ratio: float) -> float:
    """Linear warm-up then cosine decay to base * min_ratio."""
    warmup = max(1, int(round(total * warmup_fraction)))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _stage_steps(cfg: DistillConfig, stage: int, per_epoch: int) -> int:
    steps = getattr(cfg, f'stage{stage}_steps')
    if steps is not None:
        return int(steps)
    return int(math.ceil(getattr(cfg, f'stage{stage}_epochs') * per_epoch))


class _Logger:
    def __init__(self, work_dir: str, enabled: bool, printer: Callable[[str], None]):
        self.enabled, self.printer = enabled, printer
        self.text = os.path.join(work_dir, 'log.txt')
        self.jsonl = os.path.join(work_dir, 'log.jsonl')

    def __call__(self, message: str, record: Optional[dict] = None):
        if not self.enabled:
            return
        self.printer(message)
        with open(self.text, 'a') as f:
            f.write(message + '\n')
        if record is not None:
            with open(self.jsonl, 'a') as f:
                f.write(json.dumps(record) + '\n')


def _teacher_pool(matching, dataset, cfg, rank, world, device, amp_dtype):
    """The teacher's block inputs and attention-branch outputs for cfg.stage1_pool images
    (this process's share; one augmented view each): stage 1 then costs only the student's
    branches per step. Returns (inputs, targets, images); inputs and targets are
    (depth, images, tokens, D)."""
    stream = step_batches(dataset, cfg.batch_size, 0, cfg.seed + 99, rank, world)
    inputs, targets, images = [], [], []
    # the augmentations get their own seed: a run resumed in stage 2 rebuilds the same pool
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * 1009 + 99 + rank)
        for _ in range(-(-cfg.stage1_pool // cfg.batch_size)):
            images.append(next(stream).to(device))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
                pair = matching.teacher_targets(images[-1])
            inputs.append(pair[0]), targets.append(pair[1])
    return torch.cat(inputs, 1), torch.cat(targets, 1), torch.cat(images)


def _pool_batch(size: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """Indices into the stage-1 pool for ``step``: a seeded permutation per pass over it."""
    per_pass = max(1, size // batch_size)
    epoch, offset = divmod(step, per_pass)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return order[offset * batch_size:(offset + 1) * batch_size]


def _reduce_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= world
    return value


# --------------------------------------------------------------------------- the run
def distill(cfg: DistillConfig, printer: Callable[[str], None] = print) -> Dict:
    """Run stage 1 then stage 2 (resuming where ``cfg.resume`` says), write the output ViR
    checkpoint, and return a summary (output path, steps, seconds, last losses)."""
    if cfg.stage2_from_pool and cfg.stage1_pool <= 0:
        raise DistillError('stage2_from_pool draws stage 2 from the stage-1 pool: set '
                           'stage1_pool > 0 (--stage1-pool N) too')
    rank, world, device = _setup_distributed(cfg.device)
    os.makedirs(cfg.work_dir, exist_ok=True)
    log = _Logger(cfg.work_dir, rank == 0, printer)
    torch.manual_seed(cfg.seed)
    teacher, tinfo = load_teacher(cfg.teacher_model, cfg.teacher_checkpoint, cfg.img_size,
                                  **cfg.teacher_kwargs)
    student, report = build_student(teacher, cfg.mask, cfg.normalize_retention,
                                    cfg.decay_exponents, student_arch=cfg.student_arch,
                                    source=cfg.teacher_checkpoint)
    log(str(report))
    pcfg = teacher.pretrained_cfg or {}
    img_size = tinfo['img_size']
    preprocess = dict(mean=list(cfg.mean or pcfg.get('mean', (0.485, 0.456, 0.406))),
                      std=list(cfg.std or pcfg.get('std', (0.229, 0.224, 0.225))),
                      crop_pct=cfg.crop_pct or pcfg.get('crop_pct', 0.875),
                      interpolation=cfg.interpolation or pcfg.get('interpolation', 'bicubic'))
    dataset = ImageFolderDataset(cfg.data, build_transform(img_size, augment=cfg.augment,
                                                           **preprocess), cfg.max_images)
    per_epoch = steps_per_epoch(len(dataset), cfg.batch_size, world)
    plan = {1: _stage_steps(cfg, 1, per_epoch), 2: _stage_steps(cfg, 2, per_epoch)}
    log(f'teacher {tinfo["model"]} (width {tinfo["width"]}, depth {tinfo["depth"]}, '
        f'{tinfo["img_size"]} px); {len(dataset)} images, {world} process(es) x batch '
        f'{cfg.batch_size}: {per_epoch} steps/epoch; stage 1: {plan[1]} steps, '
        f'stage 2: {plan[2]} steps')

    # seconds: wall time per stage; cpu_seconds: this process's CPU time (all its threads),
    # which a busy machine does not inflate
    progress = dict(stage=1, step=0, seconds={'1': 0.0, '2': 0.0},
                    cpu_seconds={'1': 0.0, '2': 0.0})
    optimizer_state = None
    if cfg.resume:
        path = os.path.join(cfg.work_dir, LATEST) if cfg.resume == 'auto' else cfg.resume
        if not os.path.isfile(path):
            raise DistillError(f'nothing to resume: {path!r} not found')
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        student.load_state_dict(ckpt['student'])
        progress, optimizer_state = ckpt['progress'], ckpt['optimizer']
        log(f'resumed from {path}: stage {progress["stage"]}, step {progress["step"]}'
            + (' (both stages were done: only the output is written)'
               if progress['stage'] > 2 else ''))
        now = _jsonable(dataclasses.asdict(cfg))
        changed = sorted(k for k, v in ckpt.get('config', {}).items()
                         if k not in ('resume', 'work_dir', 'output') and now.get(k) != v)
        if changed:
            log(f'warning: settings differ from the run being resumed: {changed}')
    teacher.to(device)
    student.to(device)

    amp_dtype = getattr(torch, cfg.amp_dtype)
    scaler = torch.amp.GradScaler('cuda', enabled=cfg.amp and amp_dtype == torch.float16
                                  and device.type == 'cuda')
    last = {}
    calibrate = {True: 'proj', False: 'none'}.get(cfg.calibrate, cfg.calibrate)
    if calibrate not in ('proj', 'scale', 'none'):
        raise DistillError(f"calibrate must be 'proj', 'scale' or 'none', got {cfg.calibrate!r}")
    pool = None
    # a run resumed in stage 2 rebuilds the pool when stage 2 draws from it
    need_pool = cfg.stage1_pool > 0 and (
        progress['stage'] == 1 and plan[1] > 0
        or cfg.stage2_from_pool and progress['stage'] <= 2 and plan[2] > 0)
    if need_pool or progress['stage'] == 1 and calibrate != 'none':
        tic, cpu_tic = time.perf_counter(), time.process_time()
        matching = BlockMatching(teacher, student, cfg.stage1_cls_weight)
        if need_pool:
            pool = _teacher_pool(matching, dataset, cfg, rank, world, device, amp_dtype)
        if calibrate != 'none' and progress['stage'] == 1 and progress['step'] == 0:
            count = cfg.calibration_images
            if pool is not None:  # the pool's first images: no extra teacher forward
                count = min(count, pool[0].shape[1])
                chunks = [(pool[0][:, i:i + cfg.batch_size], pool[1][:, i:i + cfg.batch_size])
                          for i in range(0, count, cfg.batch_size)]
            else:
                stream = step_batches(dataset, cfg.batch_size, 0, cfg.seed + 99, rank, world)
                chunks = (next(stream).to(device) for _ in range(-(-count // cfg.batch_size)))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
                calibrated = matching.calibrate(chunks, mode=calibrate)
            log(f'[stage 1] {calibrate} calibration on {count} images: relative MSE per '
                f'block {calibrated.min():.3f}-{calibrated.max():.3f}')
        matching.close()
        at = str(progress['stage'])  # part of the stage the run (re)starts in
        seconds = dict(progress['seconds'])
        seconds[at] = seconds.get(at, 0.0) + time.perf_counter() - tic
        cpu = dict(progress.get('cpu_seconds', {}))
        cpu[at] = cpu.get(at, 0.0) + time.process_time() - cpu_tic
        progress = dict(progress, seconds=seconds, cpu_seconds=cpu)
    for stage in (1, 2):
        if stage < progress['stage'] or plan[stage] <= 0:
            continue
        start = progress['step'] if stage == progress['stage'] else 0
        params = trainable_stage_parameters(student, stage)
        module = (BlockMatching(teacher, student, cfg.stage1_cls_weight) if stage == 1 else
                  FeatureMatching(teacher, student, cfg.taps, cfg.cls_weight, cfg.tap_weight,
                                  cfg.logit_weight))
        student.train()
        wrapped = module
        if world > 1:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == 'cuda' else None)
        base_lr = cfg.lr1 if stage == 1 else cfg.lr2
        optimizer = torch.optim.AdamW(params, lr=base_lr, weight_decay=cfg.weight_decay)
        if optimizer_state is not None and stage == progress['stage'] and start > 0:
            optimizer.load_state_dict(optimizer_state)
        optimizer_state = None
        batches = step_batches(dataset, cfg.batch_size, start, cfg.seed + stage, rank, world,
                               cfg.workers)
        tic, seen = time.perf_counter(), 0
        clock, cpu_clock = tic, time.process_time()
        if stage == 2 and cfg.stage2_from_pool:  # counted as stage-2 time
            with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
                final, taps = module.targets_from_block_inputs(pool[0])
            pool2, pool = (pool[2], final, taps), None  # stage 1's targets: not needed now
            log(f'stage 2 draws its batches from the pool of {len(pool2[0])} images')
        for step in range(start, plan[stage]):
            if stage == 1 and pool is not None:  # the teacher's side, computed once
                index = _pool_batch(pool[0].shape[1], cfg.batch_size, cfg.seed, step)
                inputs = dict(inputs=pool[0][:, index], targets=pool[1][:, index])
                count = len(index)
            elif stage == 2 and cfg.stage2_from_pool:  # no teacher forward per step
                # seed + 1: other batches than stage 1's
                index = _pool_batch(len(pool2[0]), cfg.batch_size, cfg.seed + 1, step)
                inputs = dict(images=pool2[0][index],
                              targets=(pool2[1][index], pool2[2][:, index]))
                count = len(index)
            else:
                images = next(batches).to(device, non_blocking=True)
                inputs, count = dict(images=images), images.shape[0]
            lr = _lr(step, plan[stage], base_lr, cfg.warmup_fraction, cfg.min_lr_ratio)
            for group in optimizer.param_groups:
                group['lr'] = lr
            with torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp):
                out = wrapped(**inputs)
            losses = {'blocks': out} if stage == 1 else out
            loss = sum(v.sum() for v in losses.values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            seen += count * world
            done = step + 1
            if done % cfg.log_every == 0 or done == plan[stage] or done == start + 1:
                elapsed = time.perf_counter() - tic
                total_loss = float(_reduce_mean(loss.detach().float(), world))
                record = dict(stage=stage, step=done, steps=plan[stage], loss=total_loss, lr=lr,
                              images_per_s=seen / max(elapsed, 1e-9))
                if stage == 1:
                    per_block = _reduce_mean(out.detach().float(), world).tolist()
                    record['per_block'] = per_block
                    detail = f'blocks {min(per_block):.3f}-{max(per_block):.3f}'
                else:
                    record.update({k: float(_reduce_mean(v.detach().float(), world))
                                   for k, v in losses.items()})
                    detail = ' '.join(f'{k} {record[k]:.4f}' for k in losses)
                eta = (plan[stage] - done) * elapsed / max(done - start, 1)
                log(f'[stage {stage}] {done}/{plan[stage]} ({100 * done / plan[stage]:.0f}%) '
                    f'loss {total_loss:.4f} ({detail}) lr {lr:.2e} '
                    f'{record["images_per_s"]:.1f} img/s eta {eta / 60:.1f} min', record)
                last = record
            if done == plan[stage] or done % cfg.checkpoint_every == 0:
                now = time.perf_counter()
                seconds = dict(progress['seconds'])
                seconds[str(stage)] = seconds.get(str(stage), 0.0) + (now - clock)
                cpu = dict(progress.get('cpu_seconds', {}))
                cpu[str(stage)] = cpu.get(str(stage), 0.0) + time.process_time() - cpu_clock
                at_end = done == plan[stage]
                progress = dict(stage=stage + 1 if at_end else stage,
                                step=0 if at_end else done, seconds=seconds, cpu_seconds=cpu)
                if rank == 0:
                    with atomic_write(os.path.join(cfg.work_dir, LATEST)) as tmp:
                        torch.save(dict(student=student.state_dict(),
                                        optimizer=optimizer.state_dict(), progress=progress,
                                        config=_jsonable(dataclasses.asdict(cfg))), tmp)
                # saving is not counted as training time
                clock, cpu_clock = time.perf_counter(), time.process_time()
        module.close()
        if world > 1:
            dist.barrier()

    student.eval()
    output = cfg.output or os.path.join(cfg.work_dir, 'vir_distilled.pth')
    meta = dict(distilled_from=tinfo['model'], teacher_checkpoint=tinfo['checkpoint'],
                img_size=img_size, patch_size=tinfo['patch_size'], width=tinfo['width'],
                depth=tinfo['depth'], mask=cfg.mask,
                normalize_retention=cfg.normalize_retention,
                decay_exponents=list(cfg.decay_exponents), stage1_steps=plan[1],
                stage2_steps=plan[2], batch_size=cfg.batch_size * world,
                seconds=progress['seconds'], cpu_seconds=progress.get('cpu_seconds'),
                **preprocess)
    if rank == 0:
        save_vir_checkpoint(student, output, meta)
        log(f'wrote the distilled ViR to {output} (stage 1 {progress["seconds"]["1"]:.0f} s, '
            f'stage 2 {progress["seconds"]["2"]:.0f} s)')
    return dict(output=output, steps=plan, seconds=progress['seconds'],
                cpu_seconds=progress.get('cpu_seconds'), last=last, meta=meta,
                report=str(report), student=student, teacher=teacher)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
