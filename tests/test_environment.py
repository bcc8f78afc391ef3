"""The stack the set-up installs: pinned versions and mmcv's compiled ops on CPU."""
import importlib.metadata as metadata

import pytest
import torch


def test_pinned_versions():
    assert metadata.version('torch') == '2.13.0'
    assert not torch.__version__.endswith('+cpu')  # the +cpu build breaks torchvision ops
    assert metadata.version('torchvision') == '0.28.0'
    assert metadata.version('mmcv') == '2.1.0'
    assert metadata.version('mmengine') == '0.10.7'
    assert metadata.version('mmdet') == '3.3.0'
    assert metadata.version('mmsegmentation') == '1.2.2'
    assert metadata.version('timm').startswith('1.0.')


def test_mmcv_has_compiled_ops():
    import mmcv._ext  # noqa: F401  (absent when mmcv was built without ops)


def test_mmcv_nms_on_cpu():
    from mmcv.ops import nms
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert dets.shape == (2, 5)


def test_mmcv_roi_align_forward_backward_on_cpu():
    from mmcv.ops import RoIAlign
    feats = torch.arange(2 * 16 * 16, dtype=torch.float32).view(1, 2, 16, 16).requires_grad_()
    rois = torch.tensor([[0, 2.0, 2.0, 10.0, 10.0]])
    out = RoIAlign((4, 4), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feats, rois)
    assert out.shape == (1, 2, 4, 4)
    # a linear ramp image: RoIAlign of x + 16 y is exactly its value at the bin centres
    centres = 2.0 + (torch.arange(4) + 0.5) * 2.0 - 0.5
    expected = centres[None, :] + 16 * centres[:, None]
    torch.testing.assert_close(out[0, 0], expected)
    out.sum().backward()
    assert feats.grad.sum().item() == pytest.approx(2 * 16)  # each bin spreads weight 1


def test_torchvision_ops_run():
    from torchvision.ops import nms, roi_align
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10.]])
    assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
    out = roi_align(torch.ones(1, 1, 8, 8), [torch.tensor([[0, 0, 4, 4.]])], (2, 2))
    assert torch.allclose(out, torch.ones_like(out))


def test_openmmlab_packages_import_and_register_vir():
    import mmdet.registry
    import mmseg.registry
    import vir_dense  # noqa: F401
    from vir_dense.mm.backbone import ViR
    from vir_dense.mm.neck import SimpleFeaturePyramid
    for registry in (mmdet.registry.MODELS, mmseg.registry.MODELS):
        assert registry.get('ViR') is ViR  # ours, not another package's of the same name
        assert registry.get('SimpleFeaturePyramid') is SimpleFeaturePyramid
