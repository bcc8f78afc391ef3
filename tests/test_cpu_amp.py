"""--amp on CPU: tools/train.py picks CPUAmpOptimWrapper, and its training steps run the
backbone and neck in bfloat16 (the heads in float32), give finite losses and change the
weights."""
import argparse
import importlib.util
import math
from pathlib import Path

import torch
from mmengine.config import Config, DictAction

from vir_dense.config import load_config, register_scope

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py')
OPTIONS = ['model.backbone.arch.num_layers=1', 'model.backbone.out_indices=(0,)',
           'optim_wrapper.paramwise_cfg.num_layers=1']


def _train_tool():
    spec = importlib.util.spec_from_file_location('_vir_train', ROOT / 'tools' / 'train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config():
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = parser.parse_args(['--cfg-options', *OPTIONS]).cfg_options
    cfg = load_config(CONFIG, options)
    register_scope('mmdet')
    return cfg


def test_cpu_amp_training_steps_run_in_bfloat16():
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmengine.optim import build_optim_wrapper

    cfg = _config()
    _train_tool().apply_amp(cfg)  # what --amp does on a machine without CUDA
    assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
    assert cfg.optim_wrapper.dtype == 'bfloat16'

    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(optim_wrapper).__name__ == 'CPUAmpOptimWrapper'

    dtypes = {}

    def record(name):
        def hook(module, args, out):
            dtypes.setdefault(name, set()).add(out.dtype)
        return hook

    model.backbone.blocks[0].mlp.fc1.register_forward_hook(record('backbone'))
    model.neck.fpn_convs[0].conv.register_forward_hook(record('neck'))
    model.rpn_head.rpn_conv.register_forward_hook(record('rpn_head'))

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(1)
    data = demo_mm_inputs(batch_size=2, image_shapes=[(3, 64, 64)] * 2, num_items=[2, 3],
                          num_classes=4, with_mask=True)
    losses = []
    for _ in range(2):
        log_vars = model.train_step(data, optim_wrapper)
        losses.append(float(log_vars['loss'].detach()))
    assert all(math.isfinite(loss) for loss in losses), losses
    assert dtypes['backbone'] == {torch.bfloat16}  # autocast really ran there
    assert dtypes['neck'] == {torch.bfloat16}
    assert dtypes['rpn_head'] == {torch.float32}  # heads (mmcv CPU kernels) stay float32
    changed = [n for n, p in model.named_parameters()
               if p.requires_grad and not torch.equal(p.detach(), before[n])]
    assert any(n.startswith('backbone.blocks.0.') for n in changed)
    assert any(n.startswith('roi_head.') for n in changed)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights fp32
