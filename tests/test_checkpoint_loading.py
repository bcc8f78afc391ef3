"""The one strict model-checkpoint loader (vir_dense.mm.model_checkpoint) and the tools that use
it: a checkpoint that does not fit the model stops tools/test.py, tools/train.py (load_from and
--resume) and the inference APIs with which tensors differ and the likely cause; --allow-partial
/ allow_partial=True is the explicit opt-in that loads what fits."""
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from vir_dense.errors import CheckpointError, CheckpointMismatchError
from vir_dense.mm.model_checkpoint import check_model_checkpoint, load_model_checkpoint
from inprocess import run_tool

ROOT = Path(__file__).resolve().parents[1]
DET_CONFIG = str(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py')
TINY = ['model.backbone.arch.num_layers=1', 'model.backbone.out_indices=(0,)']


class Backbone(nn.Module):
    def __init__(self, width=8, depth=2):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, 4, width))
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))


class Segmentor(nn.Module):
    """The key layout of an mmseg EncoderDecoder, at toy size."""

    def __init__(self, width=8, depth=2, classes=5):
        super().__init__()
        self.backbone = Backbone(width, depth)
        self.decode_head = nn.Module()
        self.decode_head.conv_seg = nn.Conv2d(width, classes, 1)


def save(tmp_path, name, state_dict, **extra):
    path = tmp_path / name
    torch.save(dict(state_dict=state_dict, meta=dict(epoch=3), **extra), path)
    return str(path)


def test_exact_checkpoint_loads_every_tensor_and_returns_meta(tmp_path):
    source, target = Segmentor(), Segmentor()
    state = {f'module.{k}': v for k, v in source.state_dict().items()}  # a DDP-wrapped save
    meta = load_model_checkpoint(target, save(tmp_path, 'same.pth', state))
    assert meta == dict(epoch=3)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize('other, cause', [
    (Segmentor(classes=7), 'another number of classes: decode_head.conv_seg.weight has 7 rows '
                           'in the checkpoint vs 5 in the config'),
    (Segmentor(width=16), 'another backbone: backbone.pos_embed [1, 4, 16] in the checkpoint '
                          'vs [1, 4, 8] in the config'),
    (Segmentor(depth=1), 'another backbone depth or layout'),
])
def test_mismatch_names_tensors_and_likely_cause(tmp_path, other, cause):
    target = Segmentor()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    path = save(tmp_path, 'other.pth', other.state_dict())
    with pytest.raises(CheckpointMismatchError) as info:
        load_model_checkpoint(target, path, 'configs/x.py')
    message = str(info.value)
    assert f'checkpoint {path} does not fit the model of configs/x.py' in message
    assert f'likely cause: {cause}' in message, message
    assert 'allow_partial=True' in message and '--allow-partial' in message
    for key, value in before.items():  # nothing was loaded
        assert torch.equal(target.state_dict()[key], value), key


def test_backbone_only_file_is_recognised(tmp_path):
    state = {k: v for k, v in Segmentor().state_dict().items() if k.startswith('backbone.')}
    with pytest.raises(CheckpointMismatchError, match="a backbone-only file .*init_cfg"):
        load_model_checkpoint(Segmentor(), save(tmp_path, 'backbone.pth', state))


def test_allow_partial_loads_what_fits_and_keeps_the_rest(tmp_path):
    other, target = Segmentor(classes=7, depth=1), Segmentor()
    head_before = target.decode_head.conv_seg.weight.detach().clone()
    block1_before = target.backbone.blocks[1].weight.detach().clone()
    load_model_checkpoint(target, save(tmp_path, 'other.pth', other.state_dict()),
                          allow_partial=True)
    assert torch.equal(target.backbone.blocks[0].weight, other.backbone.blocks[0].weight)
    assert torch.equal(target.backbone.pos_embed, other.backbone.pos_embed)
    assert torch.equal(target.decode_head.conv_seg.weight, head_before)  # shape differs
    assert torch.equal(target.backbone.blocks[1].weight, block1_before)  # not in the file
    fit = check_model_checkpoint(target, save(tmp_path, 'o2.pth', other.state_dict()),
                                 allow_partial=True)
    assert fit.missing == ['backbone.blocks.1.weight', 'backbone.blocks.1.bias']
    assert [k for k, _, _ in fit.shapes] == ['decode_head.conv_seg.weight',
                                             'decode_head.conv_seg.bias']


def test_unreadable_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match='nope.pth not found'):
        load_model_checkpoint(Segmentor(), str(tmp_path / 'nope.pth'))
    (tmp_path / 'half.pth').write_bytes(Path(save(tmp_path, 'full.pth', {})).read_bytes()[:40])
    with pytest.raises(CheckpointError, match='is the file complete'):
        load_model_checkpoint(Segmentor(), str(tmp_path / 'half.pth'))
    torch.save([1, 2], tmp_path / 'list.pth')
    with pytest.raises(CheckpointError, match='holds a list, not a state dict'):
        load_model_checkpoint(Segmentor(), str(tmp_path / 'list.pth'))


# ---------------------------------------------------------------------------------------------
# The tools
# ---------------------------------------------------------------------------------------------
def options_dict(options):
    """--cfg-options KEY=VALUE ... as the tools parse them."""
    import argparse

    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *options]).cfg_options


@pytest.fixture(scope='module')
def det_setup(tmp_path_factory):
    """Tiny synthetic COCO data and a checkpoint of a 1-block detector (random weights)."""
    from vir_dense.apis import init_detector
    from vir_dense.datasets import make_coco_dataset
    base = tmp_path_factory.mktemp('loading')
    root = make_coco_dataset(base / 'coco', num_train=2, num_val=2, image_size=48)
    options = TINY + [f'data_root={root}/', 'train_dataloader.batch_size=1',
                      'train_dataloader.num_workers=0', 'val_dataloader.num_workers=0',
                      'test_dataloader.num_workers=0']
    cfg_options = options_dict(TINY)
    torch.manual_seed(0)
    model = init_detector(DET_CONFIG, None, cfg_options=cfg_options)
    checkpoint = base / 'one_block.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(epoch=1)), checkpoint)
    two_blocks = [o for o in options if 'num_layers' not in o and 'out_indices' not in o] + [
        'model.backbone.arch.num_layers=2', 'model.backbone.out_indices=(1,)']
    return SimpleNamespace(base=base, options=options, two_blocks=two_blocks,
                           checkpoint=str(checkpoint))


def test_test_tool_refuses_a_checkpoint_of_another_config(det_setup, capsys):
    proc = run_tool('test', [DET_CONFIG, det_setup.checkpoint, '--work-dir',
                             str(det_setup.base / 'test'), '--cfg-options',
                             *det_setup.two_blocks], capsys)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f'checkpoint {det_setup.checkpoint} does not fit the model' in proc.stderr
    assert 'keys missing from the checkpoint: backbone.blocks.1.' in proc.stderr
    assert 'coco/bbox_mAP' not in proc.stdout + proc.stderr  # nothing was evaluated
    assert 'Traceback' not in proc.stderr


def test_test_tool_allow_partial_evaluates(det_setup, capsys):
    proc = run_tool('test', [DET_CONFIG, det_setup.checkpoint, '--allow-partial',
                             '--work-dir', str(det_setup.base / 'partial'), '--cfg-options',
                             *det_setup.two_blocks], capsys)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'partial load (allow_partial)' in proc.stdout + proc.stderr
    # quiet tools: mmengine's environment and config dump is in the log file, not the console
    assert 'System environment' not in proc.stdout + proc.stderr
    logs = list((det_setup.base / 'partial').rglob('*.log'))
    assert logs and 'System environment' in logs[0].read_text()


@pytest.mark.parametrize('how', ['load_from', 'resume'])
def test_train_tool_refuses_a_checkpoint_of_another_config(det_setup, capsys, how):
    work_dir = det_setup.base / f'train_{how}'
    args = ([f'load_from={det_setup.checkpoint}'] if how == 'load_from' else [])
    extra = ['--resume', det_setup.checkpoint] if how == 'resume' else []
    proc = run_tool('train', [DET_CONFIG, '--work-dir', str(work_dir), *extra,
                              '--cfg-options', *det_setup.two_blocks, *args], capsys)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'does not fit the model' in proc.stderr
    assert 'backbone.blocks.1.' in proc.stderr
    assert not list(work_dir.rglob('*.pth'))  # no training step ran, nothing was saved
    if how == 'resume':  # a resume must fit exactly: --allow-partial does not apply
        proc = run_tool('train', [DET_CONFIG, '--work-dir', str(work_dir), '--allow-partial',
                                  *extra, '--cfg-options', *det_setup.two_blocks], capsys)
        assert proc.returncode == 2 and 'does not fit the model' in proc.stderr


def test_inference_api_allow_partial(det_setup):
    from vir_dense.apis import init_detector
    two = options_dict(['model.backbone.arch.num_layers=2', 'model.backbone.out_indices=(1,)'])
    with pytest.raises(CheckpointMismatchError, match='backbone.blocks.1.'):
        init_detector(DET_CONFIG, det_setup.checkpoint, cfg_options=two)
    model = init_detector(DET_CONFIG, det_setup.checkpoint, cfg_options=two, allow_partial=True)
    saved = torch.load(det_setup.checkpoint)['state_dict']
    own = model.state_dict()
    shared = [k for k in saved if k in own and own[k].shape == saved[k].shape]
    assert len(shared) > 50 and 'backbone.blocks.0.retention.qkv.weight' in shared
    for key in shared:
        assert torch.equal(own[key], saved[key]), key
