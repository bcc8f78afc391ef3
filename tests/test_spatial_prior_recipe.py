"""The spatial-prior recipe at patch 16 (configs/maskrcnn_vir_{t,s}_sp_coco.py and the demo
variant configs/maskrcnn_vir_t_sp16_synthetic.py): the conv spatial prior gives strides 4 and 8,
the ViR 16 and (pooled) 32, mmdet's FPN fuses the four; a few training iterations of the
COCO recipe and of the demo variant on generated data reach every new part.
"""
import copy
import math
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook

from inprocess import forget_visualizers
from vir_dense.datasets import make_coco_dataset
from vir_dense.mm.backbone import ViR
from vir_dense.mm.spatial_prior import SpatialPriorStem

ROOT = Path(__file__).resolve().parents[1]
COCO_CONFIGS = ('maskrcnn_vir_t_sp_coco.py', 'maskrcnn_vir_s_sp_coco.py')
DEMO_CONFIG = 'maskrcnn_vir_t_sp16_synthetic.py'
SIZE = 64


def test_stem_stages_double_channels_and_keep_one_stage_names():
    stem = SpatialPriorStem(channels=16, num_stages=3).eval()
    maps = stem(torch.zeros(1, 3, 70, 50))
    assert [tuple(m.shape) for m in maps] == [(1, 16, 18, 13), (1, 32, 9, 7), (1, 64, 5, 4)]
    assert stem.out_strides == [4, 8, 16] and stem.out_channels == [16, 32, 64]
    # The one-stage stem of the patch-8 demo keeps its parameter names (its checkpoints load).
    one = SpatialPriorStem(channels=16)
    assert set(one.state_dict()) < set(stem.state_dict())
    assert not any(k.startswith('4.') for k in one.state_dict())
    with pytest.raises(ValueError, match='num_stages'):
        SpatialPriorStem(num_stages=0)


@pytest.mark.parametrize('size', [(64, 64), (100, 132), (75, 33)])
def test_backbone_gives_strides_4_8_16_32(size):
    torch.manual_seed(0)
    backbone = ViR(arch=dict(embed_dims=32, num_layers=2, num_heads=2), patch_size=16,
                   out_indices=(1,), pyramid=None, drop_path_rate=0.0,
                   spatial_prior=dict(channels=8, num_stages=2), extra_pool=True).eval()
    assert backbone.out_strides == (4, 8, 16, 32)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs = backbone(x)
    assert [o.shape[1] for o in outs] == [8, 16, 32, 32]
    for out, stride in zip(outs, backbone.out_strides):
        assert out.shape[-2:] == (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    # The stride-32 map is the max-pool of the ViR's own (stride-16) map.
    pooled = torch.nn.functional.max_pool2d(outs[2], 2, 2, ceil_mode=True)
    assert torch.equal(outs[3], pooled)
    # The spatial-prior maps depend on the pixels of their own region only: changing the
    # bottom-right corner leaves the top-left of the stride-4/8 maps alone.
    y = x.clone()
    y[..., -16:, -16:] += 1.0
    with torch.no_grad():
        again = backbone(y)
    assert torch.equal(again[0][..., :4, :4], outs[0][..., :4, :4])
    assert not torch.equal(again[0], outs[0])


def test_extra_pool_needs_single_scale_maps():
    with pytest.raises(ValueError, match='extra_pool'):
        ViR(arch=dict(embed_dims=32, num_layers=12, num_heads=2), pyramid='taps',
            extra_pool=True)


def build_detector(cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # the pretrained files are placeholders
    return MODELS.build(model_cfg)


@pytest.mark.parametrize('name', COCO_CONFIGS + (DEMO_CONFIG,))
def test_config_builds_with_fpn_levels_on_the_head_strides(name):
    cfg = Config.fromfile(ROOT / 'configs' / name)
    backbone = cfg.model.backbone
    assert backbone.patch_size == 16 and backbone.extra_pool and backbone.pyramid is None
    assert backbone.spatial_prior.num_stages == 2
    assert cfg.model.neck.type == 'FPN' and cfg.model.neck.num_outs == 5
    with torch.device('meta'):
        model = build_detector(cfg)
    model = model.to_empty(device='cpu')
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():  # structure and shapes only: skip the random init
                tensor.normal_()
            else:
                tensor.zero_()
    model.eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 128, 192))
        levels = model.neck(feats)
    assert [f.shape[1] for f in feats] == cfg.model.neck.in_channels
    assert [128 // f.shape[-2] for f in feats] == [4, 8, 16, 32]
    strides = [192 // level.shape[-1] for level in levels]
    assert strides == [4, 8, 16, 32, 64] == cfg.model.rpn_head.anchor_generator.strides
    assert strides[:4] == cfg.model.roi_head.bbox_roi_extractor.featmap_strides
    assert strides[:4] == cfg.model.roi_head.mask_roi_extractor.featmap_strides


def test_coco_configs_differ_from_their_simple_pyramid_base_only_in_the_maps():
    for sp_name, base_name in zip(COCO_CONFIGS, ('maskrcnn_vir_t_coco.py',
                                                 'maskrcnn_vir_s_coco.py')):
        sp, base = (Config.fromfile(ROOT / 'configs' / n) for n in (sp_name, base_name))
        for key in ('optim_wrapper', 'param_scheduler', 'train_cfg', 'train_dataloader'):
            assert sp[key] == base[key], (sp_name, key)
        assert sp.model.roi_head == base.model.roi_head and sp.model.rpn_head == base.model.rpn_head
        assert sp.model.backbone.arch == base.model.backbone.arch
        assert sp.model.backbone.init_cfg == base.model.backbone.init_cfg
        width = {'tiny': 192, 'small': 384}[base.model.backbone.arch]
        assert sp.model.neck.in_channels == [64, 128, width, width]


class Recorder(Hook):
    """Keeps the weights when training starts and every iteration's losses."""

    def __init__(self):
        self.start, self.losses = None, []

    def before_train(self, runner):
        self.start = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append({k: float(v.detach()) for k, v in outputs.items()})


def tiny_run_cfg(name, data_root, work_dir):
    """The recipe's model and optimizer (2 ViR blocks, 4 classes) on generated 64 px data,
    3 iterations at the recipe's lr (no warm-up or lr steps: the weights must move)."""
    cfg = Config.fromfile(ROOT / 'configs' / name)
    data = Config.fromfile(ROOT / 'configs' / DEMO_CONFIG)  # the synthetic data pipeline
    backbone = cfg.model.backbone
    width = cfg.model.neck.in_channels[-1]
    backbone.arch = dict(embed_dims=width, num_layers=2, num_heads=3 if width == 192 else 6)
    backbone.out_indices = (1,)
    backbone.init_cfg = None
    cfg.model.roi_head.bbox_head.num_classes = 4
    cfg.model.roi_head.mask_head.num_classes = 4
    cfg.optim_wrapper.paramwise_cfg.num_layers = 2
    # Fewer proposals and RoIs than on COCO (CPU seconds): the heads are the recipe's.
    cfg.model.train_cfg.rpn_proposal.max_per_img = 64
    cfg.model.train_cfg.rcnn.sampler.num = 32
    loader = data.train_dataloader
    loader.dataset.data_root = f'{data_root}/'
    loader.dataset.pipeline[2].scale = (SIZE, SIZE)
    loader.batch_size = 2
    cfg.train_dataloader = loader
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=3, val_interval=100)
    cfg.param_scheduler = []
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator', 'auto_scale_lr', 'load_from'):
        cfg.pop(key, None)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1, save_last=False)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.log_processor = dict(type='LogProcessor', window_size=1, by_epoch=False)
    cfg.randomness = dict(seed=0)
    cfg.work_dir = str(work_dir)
    return cfg


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return make_coco_dataset(tmp_path_factory.mktemp('sp_coco') / 'coco', num_train=6,
                             num_val=2, image_size=SIZE)


@pytest.mark.parametrize('name', ['maskrcnn_vir_t_sp_coco.py', DEMO_CONFIG])
def test_a_few_iterations_train_every_level(name, data_root, tmp_path):
    from mmengine.runner import Runner
    cfg = tiny_run_cfg(name, data_root, tmp_path / 'run')
    forget_visualizers()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = Runner.from_cfg(cfg)
        recorder = Recorder()
        runner.register_hook(recorder, priority='LOWEST')
        runner.train()
    finally:
        torch.set_num_threads(threads)
    assert len(recorder.losses) == 3
    for losses in recorder.losses:
        assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(losses)
        assert all(math.isfinite(v) for v in losses.values()), losses
    end = runner.model.state_dict()
    moved = {k for k, v in recorder.start.items() if v.is_floating_point()
             and not torch.equal(v, end[k])}
    # Every new part was trained: each spatial-prior layer (strides 4 and 8), the ViR blocks,
    # and the FPN's lateral and output convs of all four backbone levels.
    for prefix in ['backbone.spatial_prior.0.', 'backbone.spatial_prior.4.', 'backbone.blocks.1.',
                   *[f'neck.lateral_convs.{i}.' for i in range(4)],
                   *[f'neck.fpn_convs.{i}.' for i in range(4)]]:
        assert any(k.startswith(prefix) for k in moved), f'{prefix}* did not change'
