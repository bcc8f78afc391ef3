"""ONNX export (vir_dense.deploy, tools/deployment/export_onnx.py): each target exports with
torch's dynamo exporter and onnxruntime (CPU) gives PyTorch's outputs; the missing extra is named.

Small models (one block) and shapes keep the exports quick; both retention forms the
exports use are covered: parallel (auto at these sizes) and chunkwise with several chunks. The
512²/1024² ViR-S checks and latencies are in docs/deployment.md (run once, not here).
"""
import builtins
import sys
from pathlib import Path

import pytest
import torch

from inprocess import load_tool
from vir_dense.deploy import (DeployError, DeployExtraMissing, build_target, export_and_check,
                              relative_error, require_deploy)

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # max|onnx - torch| / max|torch|, fp32
SMALL_UPERNET = {
    # one block tapped four times: the four pyramid levels at the cost of one block
    'model.backbone.arch': dict(_delete_=True, embed_dims=64, num_layers=1, num_heads=2),
    'model.backbone.out_indices': (0, 0, 0, 0),
    'model.decode_head.in_channels': [64, 64, 64, 64],
    'model.decode_head.channels': 32,
    'model.auxiliary_head.in_channels': 64,
    'model.auxiliary_head.channels': 16,
}


def _export_tool():
    return load_tool('deployment/export_onnx')


def _assert_matches(check, outputs):
    assert len(check.errors) == outputs
    assert check.max_error <= TOLERANCE, check.errors
    assert check.passed(TOLERANCE)


def test_timm_backbone_chunkwise(tmp_path):
    """The timm backbone in the chunkwise form: 4 rows + the class token's in 3 chunks."""
    built = build_target('vir_tiny_patch16_224', retention_mode='chunkwise', chunk_size=12,
                         overrides=dict(depth=1))
    assert built.kind == 'timm' and built.resolved_mode((64, 96)) == 'chunkwise'
    check = export_and_check(built, (64, 96), str(tmp_path / 'vir_tiny.onnx'))
    assert check.shapes == [(1, 4 * 6 + 1, 192)]  # tokens, class token last
    _assert_matches(check, 1)


def test_mm_backbone_exports(tmp_path):
    built = build_target(str(ROOT / 'configs/upernet_vir_t_synthetic.py'), target='backbone',
                         overrides=SMALL_UPERNET)
    assert built.kind == 'mmseg' and built.resolved_mode((80, 112)) == 'parallel'
    check = export_and_check(built, (80, 112), str(tmp_path / 'backbone.onnx'))
    assert check.shapes == [(1, 64, 20, 28), (1, 64, 10, 14), (1, 64, 5, 7), (1, 64, 3, 4)]
    _assert_matches(check, 4)


def test_upernet_segmentor_image_to_logits(tmp_path):
    built = build_target(str(ROOT / 'configs/upernet_vir_t_synthetic.py'),
                         overrides=SMALL_UPERNET)
    assert built.target == 'model'
    check = export_and_check(built, (96, 128), str(tmp_path / 'upernet.onnx'), repeats=1)
    assert check.shapes == [(1, 4, 96, 128)]  # 4 classes at the input's size
    _assert_matches(check, 1)
    assert check.torch_ms > 0 and check.onnx_ms > 0


def test_detector_backbone_and_neck_chunkwise_through_the_cli(tmp_path, capsys):
    out = tmp_path / 'neck.onnx'
    code = _export_tool().main([
        str(ROOT / 'configs/maskrcnn_vir_t_synthetic.py'), '--shape', '96', '128',
        '--out', str(out), '--retention-mode', 'chunkwise', '--chunk-size', '40', '--verify',
        '--cfg-options', 'model.backbone.arch.embed_dims=64', 'model.backbone.arch.num_layers=1',
        'model.backbone.arch.num_heads=2', 'model.backbone.out_indices=(0,)',
        'model.neck.in_channels=[64,64]'])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert '[mmdet backbone_neck]' in printed and 'retention chunkwise' in printed
    # The FPN's five maps: strides 4, 8 (patch 8), 16, 32, 64.
    assert '(1, 128, 24, 32), (1, 128, 12, 16), (1, 128, 6, 8), (1, 128, 3, 4), ' \
           '(1, 128, 2, 2)' in printed
    assert 'tolerance 1e-04: ok' in printed and out.stat().st_size > 0


def test_relative_error_is_max_abs_difference_over_max_abs_reference():
    want = torch.tensor([[1.0, -4.0], [2.0, 0.0]]).numpy()
    got = want.copy()
    got[1, 1] = 0.02
    assert relative_error(got, want) == pytest.approx(0.02 / 4.0)
    with pytest.raises(DeployError, match='shape'):
        relative_error(got[:1], want)


def test_unknown_target_and_source_are_named():
    with pytest.raises(DeployError, match=r"target 'rpn' does not exist for a timm model"):
        build_target('vir_tiny_patch16_224', target='rpn')
    with pytest.raises(DeployError, match='neither a config file nor a timm model'):
        build_target('vir_huge_patch99')


@pytest.fixture
def without_onnxruntime(monkeypatch):
    real_import = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name.split('.')[0] == 'onnxruntime':
            raise ModuleNotFoundError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)
    monkeypatch.delitem(sys.modules, 'onnxruntime', raising=False)
    monkeypatch.setattr(builtins, '__import__', refuse)


def test_missing_extra_names_the_install_command(without_onnxruntime, tmp_path, capsys):
    with pytest.raises(DeployExtraMissing, match=r'missing: onnxruntime .*pip install -e '
                                                 r'\.\[deploy\]'):
        require_deploy()
    tool = _export_tool()
    with pytest.raises(SystemExit) as exit_info:
        tool.run_cli(tool.main, ['vir_tiny_patch16_224', '--shape', '32', '32',
                                 '--out', str(tmp_path / 'x.onnx')])
    assert exit_info.value.code == 2
    assert 'pip install -e .[deploy]' in capsys.readouterr().err
    assert not (tmp_path / 'x.onnx').exists()
