"""Every config loads and builds its model; recipe settings; the tools' config checks.

Parametrized over all of configs/*.py: detection configs build with mmdet's registry,
segmentation configs (default_scope='mmseg') with mmseg's.
"""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hub import get_config

from vir_dense import config as vconfig
from vir_dense.cli import run_cli
from vir_dense.errors import ConfigError
from vir_dense.mm.launch import setup_device
from vir_dense.datasets.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / 'configs').glob('*.py'))
DET_CONFIGS = [p for p in CONFIGS if Config.fromfile(p).get('default_scope') == 'mmdet']


def load_tool(name):
    """tools/<name>.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f'_vir_tool_{name}', ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('path', CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_builds(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports == dict(imports=['vir_dense'], allow_failed_imports=False)
    scope = cfg.get('default_scope')
    assert scope in ('mmdet', 'mmseg'), f'{path.name}: default_scope={scope!r}'
    if scope == 'mmseg':
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    else:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    model_cfg = cfg.model.copy()
    model_cfg.backbone.init_cfg = None  # pretrained files are placeholders
    # Built on the meta device, then given zeroed CPU storage: the checks below are about
    # structure and shapes, and skipping ViR-B's random initialisation saves seconds.
    with torch.device('meta'):
        model = MODELS.build(model_cfg)
    model = model.to_empty(device='cpu')
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.zero_()
    assert type(model.backbone).__name__ == 'ViR'
    if scope == 'mmdet':
        # Measured on a 128x128 input: the neck takes the backbone's maps (widths agree) and
        # its levels have the strides of the RPN anchors and the RoI extractors.
        model.eval()
        with torch.no_grad():
            feats = model.backbone(torch.zeros(1, 3, 128, 128))
            levels = model.neck(feats)
        assert cfg.model.neck.in_channels == [f.shape[1] for f in feats]
        strides = [128 // level.shape[-1] for level in levels]
        assert strides == cfg.model.rpn_head.anchor_generator.strides
        assert strides[:4] == cfg.model.roi_head.bbox_roi_extractor.featmap_strides
        # Layer decay depth = backbone depth.
        assert cfg.optim_wrapper.paramwise_cfg.num_layers == len(model.backbone.blocks)
        assert cfg.optim_wrapper.constructor == 'ViRLayerDecayOptimizerConstructor'


def test_coco_recipe():
    cfg = Config.fromfile(ROOT / 'configs' / 'maskrcnn_vir_s_coco.py')
    backbone = cfg.model.backbone
    assert (backbone.arch, backbone.out_indices, backbone.pyramid, backbone.mask) == (
        'small', (11, ), None, 'bidirectional_2d')
    assert backbone.init_cfg == dict(type='Pretrained',
                                     checkpoint='pretrained/vir_small_patch16_224.pth')
    assert cfg.model.neck.type == 'SimpleFeaturePyramid' and cfg.model.neck.num_outs == 5
    assert cfg.model.data_preprocessor.pad_size_divisor == 32
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 1e-4, 0.1)
    assert cfg.optim_wrapper.paramwise_cfg == dict(num_layers=12, decay_rate=0.7)
    assert cfg.optim_wrapper.type == 'OptimWrapper'  # --amp switches it
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
    assert cfg.train_cfg.max_epochs == 12
    assert cfg.param_scheduler[1].milestones == [8, 11]
    assert cfg.train_dataloader.batch_size * 8 == 16  # 8 GPUs x 2
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    assert cfg.val_evaluator.metric == ['bbox', 'segm']
    three_x = Config.fromfile(ROOT / 'configs' / 'maskrcnn_vir_s_coco_3x.py')
    assert three_x.train_cfg.max_epochs == 36
    assert three_x.train_dataloader.dataset.pipeline[2].type == 'RandomResize'
    for name, arch, width in (('t', 'tiny', 192), ('b', 'base', 768)):
        variant = Config.fromfile(ROOT / 'configs' / f'maskrcnn_vir_{name}_coco.py')
        assert variant.model.backbone.arch == arch
        assert variant.model.neck.in_channels == [width]
        assert f'vir_{arch}_patch16_224' in variant.model.backbone.init_cfg.checkpoint


def flat_diff(ours, theirs, prefix=''):
    """Dotted keys where two config dicts differ (`_scope_`, mmengine's mark of a package
    base, ignored)."""
    if not (isinstance(ours, dict) and isinstance(theirs, dict)):
        return set() if ours == theirs else {prefix}
    keys = (set(ours) | set(theirs)) - {'_scope_'}
    if prefix and ours.get('type') != theirs.get('type'):
        return {prefix}
    return set().union(*(flat_diff(ours.get(k), theirs.get(k), f'{prefix}{k}.')
                         for k in keys)) if keys else set()


@pytest.mark.parametrize('ours, theirs, differences', [
    ('models/mask_rcnn_vir.py', 'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
     {'backbone.', 'neck.', 'roi_head.bbox_head.', 'roi_head.mask_head.norm_cfg.'}),
    ('models/upernet_vir.py', 'mmseg::_base_/models/upernet_mae.py',
     {'backbone.', 'neck.', 'data_preprocessor.mean.', 'data_preprocessor.std.',
      'data_preprocessor.size.', 'decode_head.num_classes.', 'auxiliary_head.num_classes.',
      'test_cfg.mode.', 'test_cfg.crop_size.', 'test_cfg.stride.'}),
])
def test_model_bases_state_only_differences(ours, theirs, differences):
    """Our model bases are mmdet's/mmseg's own, from the installed package, but for these keys
    (a change anywhere else shows up here and needs a reason)."""
    model = Config.fromfile(ROOT / 'configs' / '_base_' / ours).model.to_dict()
    package = get_config(theirs).model.to_dict()  # the installed package's own file
    assert flat_diff(model, package) == differences


def test_synthetic_classes_agree():
    cfg = Config.fromfile(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py')
    for split in ('train', 'val', 'test'):
        metainfo = cfg[f'{split}_dataloader'].dataset.metainfo
        assert tuple(metainfo.classes) == SYNTHETIC_CLASSES
        assert [tuple(c) for c in metainfo.palette] == [tuple(c) for c in SYNTHETIC_PALETTE]
    assert cfg.model.roi_head.bbox_head.num_classes == len(SYNTHETIC_CLASSES)
    assert cfg.model.roi_head.mask_head.num_classes == len(SYNTHETIC_CLASSES)
    assert cfg.model.backbone.init_cfg is None  # random init: no ViR weights exist


def test_cfg_options_checked():
    path = str(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py')
    cfg = Config.fromfile(path)
    with pytest.raises(ConfigError, match=r"no key 'optim_wraper'.*'optim_wrapper'"):
        vconfig.check_cfg_options(cfg, {'optim_wraper.optimizer.lr': 1})
    with pytest.raises(ConfigError, match=r"AdamW .* takes no argument 'lr_rate'"):
        vconfig.check_cfg_options(cfg, {'optim_wrapper.optimizer.lr_rate': 1})
    with pytest.raises(ConfigError, match='drop_path_rate'):
        vconfig.check_cfg_options(cfg, {'model.backbone.drop_path_rat': 0.2})
    with pytest.raises(ConfigError, match='not a valid index'):
        vconfig.check_cfg_options(cfg, {'param_scheduler.7.end': 3})
    with pytest.raises(ConfigError, match='not a dict'):
        vconfig.check_cfg_options(cfg, {'model.backbone.init_cfg.checkpoint': 'x.pth'})
    notes = vconfig.check_cfg_options(cfg, {'optim_wrapper.optimizer.lr': 1e-3,
                                       'model.backbone.normalize_retention': True,
                                       'randomness.seed': 0, 'param_scheduler.0.end': 5})
    assert len(notes) == 2  # two additions, reported; existing keys pass silently


def test_data_root_option_reaches_datasets_and_evaluators():
    path = str(ROOT / 'configs' / 'maskrcnn_vir_s_coco.py')
    cfg = vconfig.load_config(path, {'data_root': '/datasets/coco',
                                'val_dataloader.dataset.data_root': '/elsewhere/'})
    assert cfg.train_dataloader.dataset.data_root == '/datasets/coco/'
    assert cfg.val_dataloader.dataset.data_root == '/elsewhere/'  # explicit option wins
    assert cfg.val_evaluator.ann_file == '/datasets/coco/annotations/instances_val2017.json'
    assert cfg.test_evaluator.ann_file == '/datasets/coco/annotations/instances_val2017.json'


def run_tool_error(capsys, tool, argv):
    module = load_tool(tool)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(module.main, argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_missing_data_root_message(tmp_path, capsys):
    err = run_tool_error(capsys, 'train', [
        str(ROOT / 'configs' / 'maskrcnn_vir_s_coco.py'), '--work-dir', str(tmp_path),
        '--cfg-options', f'data_root={tmp_path}/nowhere/'])
    assert err.count('\n') == 1 and 'Traceback' not in err
    assert f'no data_root {tmp_path}/nowhere/' in err
    assert 'COCO 2017 is expected' in err and '--cfg-options data_root=' in err
    err = run_tool_error(capsys, 'train', [
        str(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py'), '--work-dir', str(tmp_path),
        '--cfg-options', f'data_root={tmp_path}/synthetic_coco/'])
    assert 'python tools/dataset_converters/make_synthetic_data.py coco' in err


def test_missing_annotation_file_message(tmp_path, capsys):
    (tmp_path / 'coco' / 'train2017').mkdir(parents=True)
    err = run_tool_error(capsys, 'train', [
        str(ROOT / 'configs' / 'maskrcnn_vir_s_coco.py'), '--work-dir', str(tmp_path),
        '--cfg-options', f'data_root={tmp_path}/coco/'])
    assert f'annotation file {tmp_path}/coco/annotations/instances_train2017.json' in err


def test_missing_pretrained_and_checkpoint_messages(tmp_path, capsys, monkeypatch):
    from vir_dense.datasets import make_coco_dataset
    root = make_coco_dataset(tmp_path / 'coco', num_train=2, num_val=1, image_size=32)
    err = run_tool_error(capsys, 'train', [
        str(ROOT / 'configs' / 'maskrcnn_vir_s_coco.py'), '--work-dir', str(tmp_path),
        '--cfg-options', f'data_root={root}/'])
    assert 'pretrained weights pretrained/vir_small_patch16_224.pth not found' in err
    assert 'tools/model_converters/convert_checkpoint.py' in err
    assert 'model.backbone.init_cfg=None' in err
    err = run_tool_error(capsys, 'test', [
        str(ROOT / 'configs' / 'maskrcnn_vir_s_coco.py'), str(tmp_path / 'missing.pth'),
        '--cfg-options', f'data_root={root}/'])
    assert f'checkpoint {tmp_path}/missing.pth not found' in err
    err = run_tool_error(capsys, 'train', [
        str(ROOT / 'configs' / 'maskrcnn_vir_s_coco.py'), '--resume', str(tmp_path / 'x.pth')])
    assert 'checkpoint to resume from' in err
    err = run_tool_error(capsys, 'train', [
        str(ROOT / 'configs' / 'maskrcnn_vir_s_coco.py'), '--cfg-options', 'trian_cfg.max_epochs=1'])
    assert "no key 'trian_cfg'" in err and "'train_cfg'" in err
    err = run_tool_error(capsys, 'train', [str(ROOT / 'configs' / 'nope.py')])
    assert 'config file' in err and 'not found' in err


def test_cpu_device_setup():
    import torch
    if torch.cuda.is_available():
        pytest.skip('CPU-only behaviour')
    cfg = Config.fromfile(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py')
    setup_device(cfg, 'pytorch')
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.device_ids is None
    train = load_tool('train')
    train.apply_amp(cfg)
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper' and cfg.optim_wrapper.dtype == 'bfloat16'
    train.apply_auto_scale_lr(cfg)
    assert cfg.auto_scale_lr.enable


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q']))
