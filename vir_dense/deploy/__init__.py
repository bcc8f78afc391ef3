"""Deployment: ONNX export of ViR backbones and of the UperNet / Mask R-CNN models, checked
against PyTorch with onnxruntime. Needs the optional extra: ``pip install -e .[deploy]``.

    from vir_dense.deploy import build_target, export_and_check
    built = build_target('configs/upernet_vir_s_ade20k.py', 'ckpt.pth')   # image -> logits
    check = export_and_check(built, (512, 512), 'upernet.onnx', repeats=5)
    check.max_error  # max|onnx - torch| / max|torch|

The command line: tools/deployment/export_onnx.py; the measured errors and latencies:
docs/deployment.md.
"""
from .errors import INSTALL_HINT, DeployError, DeployExtraMissing, ExportFailed
from .extra import DEPLOY_PACKAGES, require_deploy
from .onnx_export import (DEFAULT_TOLERANCE, Check, check_onnx, describe, example_input,
                          export_and_check, export_onnx, relative_error, session)
from .targets import (DEFAULT_TARGET, DET_TARGETS, RETENTION_MODES, SEG_TARGETS, TIMM_TARGETS,
                      ExportTarget, build_target)

__all__ = ['INSTALL_HINT', 'DeployError', 'DeployExtraMissing', 'ExportFailed',
           'DEPLOY_PACKAGES', 'require_deploy', 'DEFAULT_TOLERANCE', 'Check', 'check_onnx',
           'describe', 'example_input', 'export_and_check', 'export_onnx', 'relative_error',
           'session', 'DEFAULT_TARGET', 'DET_TARGETS', 'RETENTION_MODES', 'SEG_TARGETS',
           'TIMM_TARGETS', 'ExportTarget', 'build_target']
