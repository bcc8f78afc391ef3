"""Pretrained import: every source format, resizing, filling, refusals and the report.

Checkpoints are made here from random tensors with the right shapes; nothing touches the
network (timm-name downloads are mocked).
"""
import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from inprocess import load_tool

from vir_dense.mm.checkpoint import load_pretrained, load_pretrained_from_init_cfg
from vir_dense.models import checkpoint_files as ckpt
from vir_dense.models.checkpoint_files import load_checkpoint_file, resolve_checkpoint
from vir_dense.models.convert import CheckpointReport, convert_to_vir

ROOT = Path(__file__).resolve().parents[1]
DIM, DEPTH = 32, 2


# --------------------------------------------------------------------------- a ViR stand-in
# Same parameter names as docs/design.md (and the mm backbone); no forward needed here.

class _Retention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


class _LayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))


class _Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)


class _Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm1, self.retention, self.ls1 = nn.LayerNorm(dim), _Retention(dim), _LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = nn.LayerNorm(dim), _Mlp(dim), _LayerScale(dim)


class TinyViR(nn.Module):
    def __init__(self, dim=DIM, depth=DEPTH, patch=4, grid=(4, 4), pyramid=False):
        super().__init__()
        self.grid_size = tuple(grid)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid[0] * grid[1], dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(_Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        if pyramid:  # a newly initialised decoder part: never "missing"
            self.pyramid = nn.Sequential(nn.ConvTranspose2d(dim, dim, 2, 2), nn.BatchNorm2d(dim))


def random_vir_state(**kw):
    """A timm-ViR-like classifier checkpoint: backbone + head."""
    sd = {k: torch.randn_like(v) for k, v in TinyViR(**kw).state_dict().items()}
    dim = sd['cls_token'].shape[-1]
    sd.update({'head.weight': torch.randn(10, dim), 'head.bias': torch.randn(10)})
    return sd


def random_vit_state(dim=DIM, depth=DEPTH, side=4, distilled=False):
    """A timm ViT/DeiT checkpoint: attn.*, class (+dist) slot(s) in front, no LayerScale."""
    vir = random_vir_state(dim=dim, depth=depth, grid=(side, side))
    sd = {}
    for key, value in vir.items():
        if '.ls1.' in key or '.ls2.' in key:
            continue
        sd[key.replace('.retention.', '.attn.')] = value
    slots = 2 if distilled else 1
    sd['pos_embed'] = torch.randn(1, slots + side * side, dim)
    if distilled:
        sd['dist_token'] = torch.randn(1, 1, dim)
        sd['head_dist.weight'], sd['head_dist.bias'] = torch.randn(10, dim), torch.randn(10)
    return sd


def assert_loaded(model, sd, keys):
    state = model.state_dict()
    for key in keys:
        torch.testing.assert_close(state[key], sd[key], msg=key)


# --------------------------------------------------------------------------- sources


@pytest.mark.parametrize('ext', ['.pth', '.safetensors'])
def test_vir_checkpoint_loads_and_drops_head(tmp_path, ext):
    sd = random_vir_state()
    path = tmp_path / f'vir{ext}'
    if ext == '.pth':
        torch.save({'state_dict': sd, 'meta': {'epoch': 3}}, path)
    else:
        save_file(sd, str(path))
    model = TinyViR()
    report = load_pretrained(model, str(path))
    assert isinstance(report, CheckpointReport)
    assert report.source_format == 'timm ViR'
    assert report.container == ('state_dict' if ext == '.pth' else '')
    assert report.num_loaded == report.num_expected == len(model.state_dict())
    assert report.missing == [] and report.unexpected == [] and report.filled == {}
    assert sorted(report.unused_head) == ['head.bias', 'head.weight']
    assert_loaded(model, sd, model.state_dict())
    text = str(report)
    assert f'{report.num_expected} of {report.num_expected} backbone tensors (100.0%)' in text
    assert 'unused head' in text and 'head.{bias,weight}' not in text  # plain names


@pytest.mark.parametrize('distilled', [False, True])
def test_vit_deit_to_vir_fills_layerscale(tmp_path, distilled):
    sd = random_vit_state(distilled=distilled)
    torch.save({'model': sd}, tmp_path / 'vit.pth')
    model = TinyViR()
    report = load_pretrained(model, str(tmp_path / 'vit.pth'))
    assert report.source_format == 'timm ViT/DeiT (attn -> retention)'
    assert report.missing == [] and report.unexpected == []
    # ViT has no LayerScale: gamma = 1 (not 1e-5) keeps the ViT function; reported as filled.
    assert sorted(report.filled) == sorted(
        f'blocks.{i}.ls{j}.gamma' for i in range(DEPTH) for j in (1, 2))
    for i in range(DEPTH):
        assert torch.equal(model.blocks[i].ls1.gamma, torch.ones(DIM))
        torch.testing.assert_close(model.blocks[i].retention.qkv.weight,
                                   sd[f'blocks.{i}.attn.qkv.weight'])
    slots = 2 if distilled else 1
    torch.testing.assert_close(model.pos_embed, sd['pos_embed'][:, slots:])
    torch.testing.assert_close(model.cls_token, sd['cls_token'])
    if distilled:
        assert {'dist_token', 'head_dist.weight', 'head_dist.bias'} <= set(report.unused_head)
        assert '2 class/extra-token slots at the front of pos_embed removed' in str(report)
    else:
        assert 'class-token slot at the front of pos_embed removed' in str(report)
    assert report.num_loaded == report.num_expected
    assert 'filled' in str(report) and 'blocks.{0,1}.ls1.gamma' in str(report)


def test_vit_without_qkv_bias_is_filled_with_zeros():
    sd = random_vit_state()
    for i in range(DEPTH):
        del sd[f'blocks.{i}.attn.qkv.bias']
    model = TinyViR()
    report = load_pretrained(model, sd)
    assert report.filled['blocks.0.retention.qkv.bias'].startswith('0')
    assert torch.equal(model.blocks[1].retention.qkv.bias, torch.zeros(3 * DIM))


def test_mm_checkpoint_backbone_prefix(tmp_path):
    vir = random_vir_state()
    full = {f'backbone.{k}': v for k, v in vir.items() if not k.startswith('head')}
    full.update({'neck.lateral.weight': torch.randn(8, DIM, 1, 1),
                 'decode_head.conv_seg.weight': torch.randn(5, 8, 1, 1),
                 'decode_head.conv_seg.bias': torch.randn(5)})
    torch.save({'meta': {'mmseg_version': '1.2.2'}, 'state_dict': full}, tmp_path / 'seg.pth')
    model = TinyViR(pyramid=True)
    report = load_pretrained(model, str(tmp_path / 'seg.pth'))
    assert report.ignored_non_backbone == 3
    assert report.source_format == "timm ViR inside an mm checkpoint (prefix 'backbone.')"
    assert report.missing == [] and report.unexpected == []
    assert_loaded(model, vir, [k for k in vir if not k.startswith('head')])
    assert '3 non-backbone tensors' in str(report)


def test_extra_backbone_modules_are_not_counted_or_touched():
    model = TinyViR(pyramid=True)
    before = {k: v.clone() for k, v in model.pyramid.state_dict().items()}
    report = load_pretrained(model, random_vir_state())
    assert report.num_expected == len(TinyViR().state_dict())  # pyramid.* not pretrained-able
    assert report.missing == []
    for key, value in model.pyramid.state_dict().items():
        assert torch.equal(value, before[key])


def test_ddp_module_prefix_and_ema_container_preference(tmp_path):
    plain = random_vit_state()
    ema = {k: v + 1 for k, v in plain.items()}
    wrapped = {f'module.{k}': v for k, v in plain.items()}
    torch.save({'model': wrapped, 'model_ema': ema}, tmp_path / 'deit.pth')
    model = TinyViR()
    report = load_pretrained(model, str(tmp_path / 'deit.pth'))
    assert report.container == 'model'  # plain weights preferred over EMA
    assert "stripped wrapper prefix 'module.'" in str(report)
    torch.testing.assert_close(model.norm.weight, plain['norm.weight'])
    # EMA only: used, and said so.
    torch.save({'state_dict_ema': ema, 'epoch': 300}, tmp_path / 'ema.pth')
    assert load_pretrained(TinyViR(), str(tmp_path / 'ema.pth')).container == 'state_dict_ema'
    assert set(load_checkpoint_file(tmp_path / 'ema.pth')) == set(ema)


# --------------------------------------------------------------------------- position embedding


def test_pos_embed_resized_to_larger_grid():
    sd = random_vit_state(side=4)
    sd['pos_embed'][:, 1:] = 0.25  # bicubic keeps a constant field constant
    model = TinyViR(grid=(8, 8))
    report = load_pretrained(model, sd)
    assert report.resized == {'pos_embed': '4x4 -> 8x8'}
    assert model.pos_embed.shape == (1, 64, DIM)
    torch.testing.assert_close(model.pos_embed, torch.full((1, 64, DIM), 0.25))
    assert 'pos_embed 4x4 -> 8x8' in str(report)


def test_pos_embed_resized_to_non_square_grid():
    model = TinyViR(grid=(3, 6))  # grid_size tells the loader rows and cols
    report = load_pretrained(model, random_vir_state(grid=(4, 4)))
    assert report.resized == {'pos_embed': '4x4 -> 3x6'}
    assert model.pos_embed.shape == (1, 18, DIM)
    # Without grid_size the non-square target needs an explicit grid.
    del model.grid_size
    with pytest.raises(ValueError, match='grid'):
        load_pretrained(model, random_vir_state(grid=(4, 4)))
    assert load_pretrained(model, random_vir_state(grid=(5, 5)), grid=(3, 6)).resized


def test_non_square_checkpoint_grid_raises():
    sd = random_vir_state(grid=(3, 4))  # 12 tokens: no square source grid to infer
    with pytest.raises(ValueError, match='not a square'):
        load_pretrained(TinyViR(grid=(4, 4)), sd)
    # Same token count: taken as the same grid, loaded unchanged.
    assert load_pretrained(TinyViR(grid=(3, 4)), sd).resized == {}


# --------------------------------------------------------------------------- refusals


def test_shape_mismatch_names_key_shapes_and_cause():
    sd = random_vir_state(dim=64)  # a bigger model's weights
    with pytest.raises(ValueError) as info:
        load_pretrained(TinyViR(dim=DIM), sd)
    text = str(info.value)
    assert 'blocks.0.retention.qkv.weight: checkpoint [192, 64] vs model [96, 32]' in text
    assert 'embed dim 64' in text and 'another model size' in text


def test_partial_load_raises_unless_allowed():
    sd = random_vir_state(depth=1)  # one block of two: ~55% of the tensors
    with pytest.raises(ValueError, match='allow_partial=True'):
        load_pretrained(TinyViR(depth=2), sd)
    model = TinyViR(depth=2)
    with pytest.warns(UserWarning, match='backbone tensors'):
        report = load_pretrained(model, sd, allow_partial=True)
    assert report.fraction < 0.9
    assert 'blocks.1.norm1.weight' in report.missing
    assert 'depth differs: checkpoint has 1 blocks, model 2' in str(report)
    torch.testing.assert_close(model.blocks[0].mlp.fc1.weight, sd['blocks.0.mlp.fc1.weight'])


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': random_vir_state(), 'x': _Evil(marker)}, path)
    for load in (lambda: load_checkpoint_file(path), lambda: load_pretrained(TinyViR(), str(path))):
        with pytest.raises(RuntimeError) as info:
            load()
        text = str(info.value)
        assert 'weights-only' in text and '--trust-pickle' in text and 'system' in text
    assert not marker.exists()


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / 'nope.pth'
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_pretrained(TinyViR(), str(path))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        load_checkpoint_file(path)


# --------------------------------------------------------------------------- timm names (mocked)


def test_timm_name_offline_gives_clear_error(monkeypatch):
    calls = []

    def offline(**kwargs):
        calls.append(kwargs)
        raise ConnectionError('Failed to establish a new connection')

    monkeypatch.setattr(ckpt, '_download_file', offline)
    with pytest.raises(RuntimeError) as info:
        resolve_checkpoint('timm/vit_small_patch16_224.augreg_in21k_ft_in1k')
    text = str(info.value)
    assert 'could not download' in text and 'local path' in text and 'ConnectionError' in text
    assert calls[0]['repo_id'] == 'timm/vit_small_patch16_224.augreg_in21k_ft_in1k'
    assert calls[0]['filename'] == 'model.safetensors'
    assert all('url' not in c for c in calls)  # the JAX .npz url is not a loadable file


def test_timm_name_resolves_through_download(monkeypatch, tmp_path):
    save_file(random_vit_state(), str(tmp_path / 'model.safetensors'))
    seen = {}

    def fake_download(**kwargs):
        seen.update(kwargs)
        return str(tmp_path / 'model.safetensors')

    monkeypatch.setattr(ckpt, '_download_file', fake_download)
    model = TinyViR()
    report = load_pretrained(model, 'timm:deit_small_patch16_224')
    assert seen['repo_id'] == 'timm/deit_small_patch16_224.fb_in1k'
    assert report.source.endswith('model.safetensors') and report.missing == []
    with pytest.raises(ValueError, match='no pretrained weights'):
        resolve_checkpoint('timm/definitely_not_a_model')


# --------------------------------------------------------------------------- config + tool


def test_init_cfg_helper(tmp_path):
    save_file(random_vir_state(), str(tmp_path / 'w.safetensors'))
    model = TinyViR()
    cfg = dict(type='Pretrained', checkpoint=str(tmp_path / 'w.safetensors'), allow_partial=False)
    assert load_pretrained_from_init_cfg(model, cfg).num_loaded == len(model.state_dict())
    assert load_pretrained_from_init_cfg(model, dict(type='TruncNormal', std=0.02)) is None
    assert load_pretrained_from_init_cfg(model, None) is None


def test_mm_backbone_init_cfg_imports_vit(tmp_path):
    """The real backbone: grid from its patch embedding, its rescale layers left alone."""
    from vir_dense.mm import backbone as backbone_mod
    sd = random_vit_state(dim=64, side=2)
    sd['patch_embed.proj.weight'] = torch.randn(64, 3, 16, 16)
    save_file(sd, str(tmp_path / 'vit.safetensors'))
    backbone = backbone_mod.ViR(
        arch=dict(embed_dims=64, num_layers=DEPTH, num_heads=1), img_size=(48, 64),
        out_indices=(0, 1, 0, 1), pyramid='taps',
        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'vit.safetensors')))
    rescales = {k: v.clone() for k, v in backbone.state_dict().items() if 'rescales' in k}
    backbone.init_weights()
    assert backbone.pos_embed.shape == (1, 12, 64)  # 2x2 -> 3x4
    torch.testing.assert_close(backbone.blocks[1].retention.qkv.weight,
                               sd['blocks.1.attn.qkv.weight'])
    assert torch.equal(backbone.blocks[0].ls1.gamma, torch.ones(64))
    for key, value in backbone.state_dict().items():
        if key in rescales:
            assert torch.equal(value, rescales[key]), key
    report = load_pretrained(backbone, str(tmp_path / 'vit.safetensors'))
    assert report.resized == {'pos_embed': '2x2 -> 3x4'} and report.missing == []


def test_convert_to_vir_with_shape_mapping():
    shapes = {k: tuple(v.shape) for k, v in TinyViR(grid=(2, 2)).state_dict().items()}
    out, report = convert_to_vir(random_vit_state(side=4), shapes)
    assert out['pos_embed'].shape == (1, 4, DIM) and report.resized['pos_embed'] == '4x4 -> 2x2'


def _tool():
    return load_tool('model_converters/convert_checkpoint')


@pytest.mark.parametrize('dst_name', ['vir.safetensors', 'vir.pth'])
def test_convert_tool_vit_to_backbone_file(tmp_path, capsys, dst_name):
    sd = random_vit_state(side=4)
    torch.save({'model': sd}, tmp_path / 'deit.pth')
    dst = tmp_path / 'out' / dst_name
    assert _tool().main([str(tmp_path / 'deit.pth'), str(dst), '--model-grid', '2x4']) == 0
    printed = capsys.readouterr().out
    assert 'pos_embed 4x4 -> 2x4' in printed and 'filled' in printed
    assert os.listdir(dst.parent) == [dst_name]  # atomic write: no temp file left
    # one meta encoding in both formats: plain JSON values
    assert ckpt.read_vir_meta(dst) == dict(converted_from='deit.pth', grid='2x4', embed_dim=DIM,
                                           depth=DEPTH)
    model = TinyViR(grid=(2, 4))
    report = load_pretrained(model, str(dst))
    assert report.source_format == 'timm ViR' and report.num_loaded == report.num_expected
    torch.testing.assert_close(model.blocks[1].retention.proj.weight,
                               sd['blocks.1.attn.proj.weight'])
    assert torch.equal(model.blocks[0].ls2.gamma, torch.ones(DIM))


def test_convert_tool_trusted_pickle_and_arch_check(tmp_path, capsys):
    # An mmengine-style checkpoint with a Python object in it: refused by the weights-only
    # loader, converted by the tool only when the user vouches for the file.
    full = {f'backbone.{k}': v for k, v in random_vir_state().items()}
    full['neck.conv.weight'] = torch.randn(4, DIM, 1, 1)
    src = tmp_path / 'mm.pth'
    torch.save({'state_dict': full, 'meta': argparse.Namespace(epoch=12)}, src)
    with pytest.raises(RuntimeError, match='trust-pickle'):
        load_pretrained(TinyViR(), str(src))
    tool = _tool()
    assert tool.main([str(src), str(tmp_path / 'a.pth')]) == 1
    assert 'trust-pickle' in capsys.readouterr().err
    assert tool.main([str(src), str(tmp_path / 'c.pth'), '--trust-pickle']) == 0
    assert '1 non-backbone tensors' in capsys.readouterr().out
    assert tool.main([str(src), str(tmp_path / 'd.pth'), '--trust-pickle', '--arch', 'small']) == 1
    assert 'embed dim 32' in capsys.readouterr().err
    out = torch.load(tmp_path / 'c.pth', weights_only=True)
    assert out['meta']['grid'] == '4x4' and 'head.weight' not in out['state_dict']
    report = load_pretrained(TinyViR(), str(tmp_path / 'c.pth'))
    assert report.missing == [] and report.container == 'state_dict'


def test_vir_meta_of_older_safetensors_files_still_reads(tmp_path):
    # an older converter stored each meta value with str(): numbers read back as numbers,
    # other text as it was
    path = tmp_path / 'old.safetensors'
    save_file({'cls_token': torch.zeros(1, 1, DIM)}, str(path),
              metadata=dict(converted_from='deit.pth', grid='4x4', embed_dim=str(DIM)))
    assert ckpt.read_vir_meta(path) == dict(converted_from='deit.pth', grid='4x4', embed_dim=DIM)


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / 'latest.pth'
    path.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='killed'):
        with ckpt.atomic_write(path) as tmp:
            open(tmp, 'wb').write(b'half')
            raise RuntimeError('killed mid-save')
    assert path.read_bytes() == b'old' and os.listdir(tmp_path) == ['latest.pth']


def test_report_is_readable():
    report = CheckpointReport(source='x.pth', source_format='timm ViR', num_expected=4,
                              loaded=['a', 'b', 'c'], missing=['blocks.3.norm1.weight'],
                              resized={'pos_embed': '14x14 -> 32x32'})
    text = str(report)
    assert text.splitlines()[0] == 'Pretrained ViR weights from x.pth'
    assert '3 of 4 backbone tensors (75.0%)' in text
    assert 'resized     : pos_embed 14x14 -> 32x32' in text
    assert pickle.loads(pickle.dumps(report)) == report
