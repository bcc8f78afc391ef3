"""torch.compile(fullgraph=True) and torch.export run through every retention mode the dense
models use, with the eager outputs and gradients.

The graphs are checked with the 'aot_eager' backend (Dynamo's full tracing and AOTAutograd,
the same graph breaks as inductor) to keep the suite fast; inductor's compile time and
compiled latency are measured in docs/benchmarks.md
(tools/analysis_tools/benchmark_backbone.py --compile).
"""
import pytest
import timm
import torch
from mmdet.registry import MODELS

import vir_dense  # noqa: F401  (registers the models)

TINY = dict(embed_dims=64, num_layers=1, num_heads=2)


def _relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize('mode', ['parallel', 'chunkwise'])
def test_timm_model_compiles_without_graph_breaks(mode):
    torch.manual_seed(0)
    model = timm.create_model('vir_tiny_patch16_224', depth=1, dynamic_img_size=True,
                              mask='bidirectional_2d', retention_mode=mode, chunk_size=40)
    image = torch.randn(1, 3, 96, 128, requires_grad=True)
    reference = model.forward_features(image)
    reference.square().mean().backward()
    used = [p for p in model.parameters() if p.grad is not None]  # not the classifier head
    assert len(used) > 10
    expected = [image.grad.clone()] + [p.grad.clone() for p in used]
    image.grad = None
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model.forward_features, fullgraph=True, backend='aot_eager')
    out = compiled(image)  # fullgraph=True: any graph break raises
    assert _relative(out, reference) < 1e-5
    out.square().mean().backward()
    grads = [image.grad] + [p.grad for p in used]
    for got, want in zip(grads, expected):
        assert _relative(got, want) < 1e-5


@pytest.mark.parametrize('mode', ['parallel', 'chunkwise'])
def test_mm_backbone_compiles_and_exports(mode):
    torch.manual_seed(0)
    backbone = MODELS.build(dict(type='ViR', arch=TINY, img_size=64, out_indices=(0,),
                                 pyramid=None, retention_mode=mode, chunk_size=40)).eval()
    image = torch.randn(1, 3, 80, 96)
    with torch.no_grad():
        reference = backbone(image)
        torch._dynamo.reset()
        compiled = torch.compile(backbone, fullgraph=True, backend='aot_eager')(image)
        exported = torch.export.export(backbone, (image,)).module()(image)
    for eager, comp, export in zip(reference, compiled, exported):
        assert comp.shape == eager.shape and _relative(comp, eager) < 1e-5
        assert export.shape == eager.shape and _relative(export, eager) < 1e-5
