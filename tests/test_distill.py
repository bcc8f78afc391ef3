"""Retention transfer by distillation (vir_dense.distill, tools/distill_vit_to_vir.py).

A tiny random ViT teacher (2 blocks, 32 px, patch 8) and a handful of generated images keep the
whole file to a few seconds."""
import importlib.util
import json
import os

import numpy as np
import pytest
import timm
import torch
from mmdet.registry import MODELS
from PIL import Image

import vir_dense  # noqa: F401
from vir_dense.distill import (BlockMatching, DistillConfig, DistillError, FeatureMatching,
                               build_student, distill, load_teacher, to_student_order,
                               to_teacher_order)
from vir_dense.mm.checkpoint import load_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMG = 32
TEACHER = 'vit_tiny_patch16_224'
TEACHER_KW = dict(img_size=IMG, patch_size=8, depth=2, num_classes=4)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp('distill')
    teacher = timm.create_model(TEACHER, **TEACHER_KW)
    teacher_path = root / 'teacher.pth'
    torch.save({'model': teacher.state_dict()}, teacher_path)  # a DeiT-style container
    rng = np.random.default_rng(0)
    images = root / 'images' / 'nested'
    images.mkdir(parents=True)
    yy, xx = np.mgrid[0:40, 0:40]
    for i in range(24):  # smooth random images: gradients plus a bright square
        image = (rng.uniform(0, 255, 3) * (xx[..., None] / 40) +
                 rng.uniform(0, 255, 3) * (yy[..., None] / 40)) / 2
        x, y = rng.integers(0, 28, 2)
        image[y:y + 12, x:x + 12] = rng.uniform(0, 255, 3)
        Image.fromarray(image.astype(np.uint8)).save(images / f'{i:03d}.png')
    (root / 'images' / 'notes.txt').write_text('not an image')
    return root, str(teacher_path), str(root / 'images')


def _config(setup, work_dir, **kwargs):
    _, teacher_path, data = setup
    values = dict(teacher_model=TEACHER, teacher_checkpoint=teacher_path, data=data,
                  work_dir=str(work_dir), batch_size=8, workers=0, augment='none',
                  stage1_steps=6, stage2_steps=4, lr1=3e-4, lr2=2e-4, log_every=1,
                  checkpoint_every=2, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    values.update(kwargs)
    return DistillConfig(**values)


def _batch(setup):
    from vir_dense.distill import ImageFolderDataset, build_transform
    dataset = ImageFolderDataset(setup[2], build_transform(IMG, (0.5,) * 3, (0.5,) * 3, 1.0,
                                                           augment='none'))
    return torch.stack([dataset[i] for i in range(16)])


def test_token_order_round_trip():
    x = torch.arange(2 * 5 * 3.).reshape(2, 5, 3)
    s = to_student_order(x)
    assert torch.equal(s[:, -1], x[:, 0]) and torch.equal(s[:, :-1], x[:, 1:])
    assert torch.equal(to_teacher_order(s), x)


def test_distillation_lowers_matching_losses_and_output_loads(setup, tmp_path):
    root, teacher_path, _ = setup
    teacher, info = load_teacher(TEACHER, teacher_path)
    assert info['img_size'] == IMG and info['depth'] == 2 and info['num_classes'] == 4
    naive, report = build_student(teacher)
    assert report.fraction == 1.0
    images = _batch(setup)
    with torch.no_grad():
        before = FeatureMatching(teacher, naive)(images)['final']
    result = distill(_config(setup, tmp_path), printer=lambda _: None)
    student = result['student']
    with torch.no_grad():
        after = FeatureMatching(teacher, student)(images)['final']
    assert after < 0.5 * before, (before, after)
    records = [json.loads(line) for line in open(tmp_path / 'log.jsonl')]
    assert [r['step'] for r in records if r['stage'] == 2] == [1, 2, 3, 4]

    output = result['output']
    state = torch.load(output, weights_only=True)['state_dict']
    backbone = MODELS.build(dict(
        type='ViR', arch=dict(embed_dims=192, num_layers=2, num_heads=3), patch_size=8,
        img_size=IMG, out_indices=(0, 1), pyramid=None, drop_path_rate=0.0,
        init_cfg=dict(type='Pretrained', checkpoint=output)))
    backbone.init_weights()
    mm_report = load_pretrained(backbone, output)
    assert mm_report.fraction == 1.0 and not mm_report.missing and not mm_report.unexpected
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[key]), key

    for num_classes in (0, 4):
        model = timm.create_model('vir_tiny_patch16_224', pretrained=True, depth=2,
                                  patch_size=8, img_size=IMG, num_classes=num_classes,
                                  pretrained_cfg_overlay=dict(file=output))
        loaded = model.state_dict()
        for key, value in state.items():
            if not key.startswith('head'):
                assert torch.equal(loaded[key], value), key
        assert len([k for k in loaded if not k.startswith('head')]) == \
            len([k for k in state if not k.startswith('head')])
    # the head (docs/distillation.md, "In timm"): kept when the overlay names the file's class
    # count; timm drops classifier weights when num_classes differs from the pretrained cfg's
    # (1000), and with the default num_classes the file's 4-class head cannot load at all
    kwargs = dict(pretrained=True, depth=2, patch_size=8, img_size=IMG)
    model = timm.create_model('vir_tiny_patch16_224', num_classes=4, **kwargs,
                              pretrained_cfg_overlay=dict(file=output, num_classes=4))
    assert torch.equal(model.head.weight, state['head.weight'])
    model = timm.create_model('vir_tiny_patch16_224', num_classes=4, **kwargs,
                              pretrained_cfg_overlay=dict(file=output))
    assert not torch.equal(model.head.weight, state['head.weight'])  # a fresh head
    with pytest.raises(RuntimeError, match='Missing key.*head.weight'):
        timm.create_model('vir_tiny_patch16_224', **kwargs,
                          pretrained_cfg_overlay=dict(file=output))
    # the same ViR function: the timm model (mask from the checkpoint meta) matches the student
    meta = torch.load(output, weights_only=True)['meta']
    model = timm.create_model('vir_tiny_patch16_224', pretrained=True, depth=2, patch_size=8,
                              img_size=IMG, num_classes=0, mask=meta['mask'],
                              pretrained_cfg_overlay=dict(file=output)).eval()
    with torch.no_grad():
        assert torch.allclose(model.forward_features(images), student.forward_features(images),
                              atol=1e-5)


def test_stage_1_lowers_block_losses_and_trains_only_retention_branches(setup, tmp_path):
    teacher, _ = load_teacher(TEACHER, setup[1])
    naive, _ = build_student(teacher)
    images = _batch(setup)
    with torch.no_grad():
        before = BlockMatching(teacher, naive)(images)
    student = distill(_config(setup, tmp_path, stage2_steps=0, calibrate='scale'),
                      printer=lambda _: None)['student']
    with torch.no_grad():
        after = BlockMatching(teacher, student)(images)
    assert (after < 0.5 * before).all(), (before, after)  # every block's matching improves
    # ... and not only by the closed-form calibration: the gradient steps lower it too
    losses = [json.loads(line)['loss'] for line in open(tmp_path / 'log.jsonl')]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0], losses
    for key, value in naive.state_dict().items():
        in_branch = any(part in key for part in ('.norm1.', '.retention.', '.ls1.'))
        assert torch.equal(student.state_dict()[key], value) != in_branch, key


def test_projection_calibration_beats_scale_on_unseen_images(setup):
    teacher, _ = load_teacher(TEACHER, setup[1])
    images = _batch(setup)
    fit, held = images[:12], images[12:]
    errors = {}
    for mode in ('scale', 'proj'):
        student, _ = build_student(teacher)
        matching = BlockMatching(teacher, student)
        fitted = matching.calibrate([fit[:6], fit[6:]], mode=mode)  # sums over two batches
        with torch.no_grad():
            errors[mode] = matching(held)
        assert fitted.shape == (2,) and torch.isfinite(fitted).all()
    assert (errors['proj'] < errors['scale']).all(), errors
    with pytest.raises(DistillError, match='calibration mode'):
        BlockMatching(teacher, student).calibrate([fit], mode='bogus')


def test_stage_1_pool_reuses_teacher_targets(setup, tmp_path):
    teacher, _ = load_teacher(TEACHER, setup[1])
    images = _batch(setup)
    calls = []
    messages = []
    cfg = _config(setup, tmp_path, stage2_steps=0, stage1_steps=6, stage1_pool=16,
                  calibration_images=16, calibrate='scale')
    original = BlockMatching.teacher_targets

    def counting(self, batch):
        calls.append(batch.shape[0])
        return original(self, batch)
    BlockMatching.teacher_targets = counting
    try:
        student = distill(cfg, printer=messages.append)['student']
    finally:
        BlockMatching.teacher_targets = original
    assert calls == [8, 8], calls  # the pool, once; no teacher forward in the 6 steps
    naive, _ = build_student(teacher)
    with torch.no_grad():
        before = BlockMatching(teacher, naive)(images)
        after = BlockMatching(teacher, student)(images)
    assert (after < 0.5 * before).all(), (before, after)
    assert any('scale calibration on 16 images' in m for m in messages), messages


def test_feature_matching_takes_precomputed_teacher_targets(setup):
    """forward(images, targets=teacher_targets(images)) is forward(images): same losses and
    gradients, and the teacher is not run again."""
    teacher, _ = load_teacher(TEACHER, setup[1])
    student, _ = build_student(teacher)
    images = _batch(setup)[:4]
    features = FeatureMatching(teacher, student, taps=(0, 1), logit_weight=1.0)
    final, taps = features.teacher_targets(images)
    assert final.shape == (4, 17, 192) and taps.shape == (2, 4, 17, 192)
    assert torch.equal(final, to_student_order(teacher.forward_features(images)))
    direct = features(images)
    grads = torch.autograd.grad(sum(direct.values()), student.blocks[0].retention.proj.weight)
    calls = []
    handle = teacher.blocks[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        pooled = features(images, targets=(final, taps))
    finally:
        handle.remove()
    assert not calls
    assert set(pooled) == set(direct) == {'final', 'cls', 'tap0', 'tap1', 'logits'}
    for key in direct:
        assert torch.allclose(pooled[key], direct[key]), key
    grads_pooled = torch.autograd.grad(sum(pooled.values()),
                                       student.blocks[0].retention.proj.weight)
    assert torch.allclose(grads[0], grads_pooled[0])
    features.close()
    no_taps = FeatureMatching(teacher, student)
    final2, taps2 = no_taps.teacher_targets(images)
    assert torch.equal(final2, final) and taps2.shape[0] == 0
    assert set(no_taps(images, targets=(final2, taps2))) == {'final', 'cls'}


def test_resume_continues_where_it_stopped(setup, tmp_path):
    full = distill(_config(setup, tmp_path / 'full'), printer=lambda _: None)

    class Stop(Exception):
        pass

    def stop_in_stage_2(message):
        if message.startswith('[stage 2] 3/4'):
            raise Stop  # after the checkpoint at stage 2 step 2, before step 3's
    with pytest.raises(Stop):
        distill(_config(setup, tmp_path / 'cut'), printer=stop_in_stage_2)
    ckpt = torch.load(tmp_path / 'cut' / 'latest.pth', weights_only=True)
    assert ckpt['progress']['stage'] == 2 and ckpt['progress']['step'] == 2
    messages = []
    resumed = distill(_config(setup, tmp_path / 'cut', resume='auto'), printer=messages.append)
    assert any(m.startswith('resumed from') and 'stage 2, step 2' in m for m in messages)
    steps = [m.split()[2] for m in messages if m.startswith('[stage')]
    assert steps == ['3/4', '4/4'], steps  # no stage-1 step and no stage-2 step is redone
    for key, value in full['student'].state_dict().items():
        assert torch.allclose(resumed['student'].state_dict()[key], value, atol=1e-6), key


def test_stage_2_from_pool_runs_no_teacher_and_resumes(setup, tmp_path, monkeypatch):
    """stage2_from_pool: stage 2 draws images and derived teacher targets from the stage-1
    pool (no teacher block runs per step); a run resumed in stage 2 rebuilds the same pool
    (flips included) and ends where the uninterrupted run does."""
    from vir_dense.distill import train
    teacher, _ = load_teacher(TEACHER, setup[1])
    student, _ = build_student(teacher)
    images = _batch(setup)[:8]
    matching = BlockMatching(teacher, student)
    features = FeatureMatching(teacher, student, taps=(0, 1))
    derived = features.targets_from_block_inputs(matching.teacher_targets(images)[0])
    direct = features.teacher_targets(images)
    for a, b in zip(derived, direct):  # the same targets as a teacher forward
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    matching.close(), features.close()

    with pytest.raises(DistillError, match='stage1_pool > 0'):
        distill(_config(setup, tmp_path / 'bad', stage2_from_pool=True), printer=None)

    calls = []

    class Counting(FeatureMatching):  # counts the teacher's first block during stage 2
        def __init__(self, teacher, *args):
            super().__init__(teacher, *args)
            teacher.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    monkeypatch.setattr(train, 'FeatureMatching', Counting)
    kwargs = dict(stage1_pool=16, calibration_images=16, stage2_from_pool=True,
                  stage2_steps=6, augment='flip', taps=(0,), logit_weight=1.0)
    full = distill(_config(setup, tmp_path / 'full', **kwargs), printer=lambda _: None)
    assert not calls
    losses = [json.loads(line)['loss'] for line in open(tmp_path / 'full' / 'log.jsonl')
              if json.loads(line)['stage'] == 2]
    assert len(losses) == 6 and losses[-1] < losses[0], losses
    distill(_config(setup, tmp_path / 'teacher', **dict(kwargs, stage2_from_pool=False)),
            printer=lambda _: None)
    assert len(calls) == 6  # the hook counts: without the pool, one teacher forward a step

    class Stop(Exception):
        pass

    def stop_in_stage_2(message):
        if message.startswith('[stage 2] 3/6'):
            raise Stop  # after the checkpoint at stage 2 step 2
    with pytest.raises(Stop):
        distill(_config(setup, tmp_path / 'cut', **kwargs), printer=stop_in_stage_2)
    messages = []
    resumed = distill(_config(setup, tmp_path / 'cut', resume='auto', **kwargs),
                      printer=messages.append)
    assert any('stage 2, step 2' in m for m in messages)
    assert any('from the pool of 16 images' in m for m in messages)
    for key, value in full['student'].state_dict().items():
        assert torch.allclose(resumed['student'].state_dict()[key], value, atol=1e-6), key


def test_bad_teachers_stop_with_a_clear_message(setup, tmp_path, capsys):
    _, teacher_path, data = setup
    with pytest.raises(DistillError, match='teacher checkpoint not found'):
        load_teacher(TEACHER, str(tmp_path / 'nope.pth'))
    with pytest.raises(DistillError, match='width.*192.*384'):
        load_teacher('vit_small_patch16_224', teacher_path)
    with pytest.raises(DistillError, match='unknown timm model'):
        load_teacher('vit_tinyy_patch16_224', teacher_path)
    teacher, _ = load_teacher(TEACHER, teacher_path)
    with pytest.raises(DistillError, match='does not match vir_small_patch16_224'):
        build_student(teacher, student_arch='vir_small_patch16_224')
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(DistillError, match='cannot read teacher checkpoint'):
        load_teacher(TEACHER, str(garbage))

    spec = importlib.util.spec_from_file_location(
        'distill_cli', os.path.join(ROOT, 'tools', 'distill_vit_to_vir.py'))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    from vir_dense.cli import run_cli
    with pytest.raises(SystemExit) as exit_info:
        run_cli(cli.main, ['--teacher', 'vit_small_patch16_224', '--teacher-checkpoint',
                           teacher_path, '--data', data, '--work-dir', str(tmp_path / 'w')])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: teacher checkpoint') and 'width' in err
    assert 'Traceback' not in err
