"""Model behaviour checked by value through the public APIs (timm.create_model, the mm ViR
backbone, init_cfg Pretrained): position-embedding resampling (bicubic), average pooling
(patch tokens only), the drop-path schedule, the class token in streamed (recurrent /
chunkwise) forms on awkward grids, padding side, gradient checkpointing really on, and
pretrained import of timm ViT variants with register tokens / fc_norm."""
import pytest
import timm
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from safetensors.torch import save_file
from timm.layers import DropPath

import vir_dense  # noqa: F401  (registers the models)
from vir_dense.mm.checkpoint import load_pretrained


def bicubic(grid_field, size):
    """(1, N, D) on a square grid -> (1, rows*cols, D), resized by torch's bicubic kernel
    (align_corners=False, antialias=True: the a=-0.5 kernel), as timm resamples pos_embed."""
    n, dim = grid_field.shape[1:]
    side = int(n ** 0.5)
    image = grid_field.reshape(1, side, side, dim).permute(0, 3, 1, 2).double()
    out = F.interpolate(image, size=size, mode='bicubic', align_corners=False, antialias=True)
    return out.permute(0, 2, 3, 1).reshape(1, -1, dim)


def smooth_field(side, dim, seed=0):
    """A random position field with structure at several scales (bicubic and bilinear differ
    on it by far more than the tolerance)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, side * side, dim, generator=generator)


# --------------------------------------------------------------------------- position embedding


@pytest.mark.parametrize('grid', [(9, 6), (7, 7), (5, 11)])
def test_model_position_embedding_is_bicubic(grid):
    model = timm.create_model('vir_tiny_patch16_224', depth=1, img_size=80,
                              dynamic_img_size=True).eval()  # trained grid 5x5
    with torch.no_grad():
        model.pos_embed.copy_(smooth_field(5, model.embed_dim))
        got = model.position_embedding(grid)
    expected = bicubic(model.pos_embed.detach(), grid)
    assert got.shape == (1, grid[0] * grid[1], model.embed_dim)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-5)
    # With gradients flowing (training at another size) the same values.
    trained = model.position_embedding(grid)
    assert trained.requires_grad
    torch.testing.assert_close(trained.detach().double(), expected, rtol=0, atol=1e-5)


def test_backbone_position_embedding_is_bicubic():
    backbone = MODELS.build(dict(type='ViR', arch=dict(embed_dims=32, num_layers=1, num_heads=1),
                                 img_size=64, out_indices=(0,), pyramid=None,
                                 drop_path_rate=0.0)).eval()
    with torch.no_grad():
        backbone.pos_embed.copy_(smooth_field(4, 32, seed=1))
        got = backbone.position_embedding((6, 9))
    torch.testing.assert_close(got.double(), bicubic(backbone.pos_embed.detach(), (6, 9)),
                               rtol=0, atol=1e-5)


def test_imported_vit_position_embedding_values_are_bicubic(tmp_path):
    """A timm ViT's 14x14 patch slots resampled to the backbone's 16x16 grid, by value."""
    vit = timm.create_model('vit_tiny_patch16_224', num_classes=0, depth=1)
    with torch.no_grad():
        vit.pos_embed[:, 1:] = smooth_field(14, 192, seed=2)
    path = tmp_path / 'vit.safetensors'
    save_file(vit.state_dict(), str(path))
    backbone = MODELS.build(dict(type='ViR', arch=dict(embed_dims=192, num_layers=1,
                                                       num_heads=3),
                                 img_size=256, out_indices=(0,), pyramid=None,
                                 drop_path_rate=0.0))
    report = load_pretrained(backbone, str(path))
    assert report.resized == {'pos_embed': '14x14 -> 16x16'}
    torch.testing.assert_close(backbone.pos_embed.detach().double(),
                               bicubic(vit.pos_embed[:, 1:].detach(), (16, 16)),
                               rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- pooling, drop path


def test_average_pooling_uses_patch_tokens_only():
    torch.manual_seed(0)
    model = timm.create_model('vir_tiny_patch16_224', depth=1, img_size=64, num_classes=3,
                              global_pool='avg', init_values=1.0,
                              mask='bidirectional_2d').eval()
    with torch.no_grad():
        model.cls_token.normal_(0, 5.0)  # a class token far from the patch tokens
        features = model.forward_features(torch.randn(2, 3, 64, 64))
        pooled = model.forward_head(features, pre_logits=True)
        logits = model(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 16 + 1, 192)
    torch.testing.assert_close(pooled, features[:, :-1].mean(dim=1))
    assert not torch.allclose(pooled, features.mean(dim=1), atol=1e-3)
    assert logits.shape == (2, 3)
    token = timm.create_model('vir_tiny_patch16_224', depth=1, img_size=64, num_classes=3)
    with torch.no_grad():
        feats = token.eval().forward_features(torch.randn(1, 3, 64, 64))
        torch.testing.assert_close(token.forward_head(feats, pre_logits=True), feats[:, -1])


@pytest.mark.parametrize('depth,rate', [(4, 0.3), (12, 0.1), (1, 0.2)])
def test_drop_path_rates_rise_linearly_from_zero(depth, rate):
    """timm's (and the paper's) rule: block i drops with rate * i / (depth - 1)."""
    with torch.device('meta'):
        model = timm.create_model('vir_tiny_patch16_224', depth=depth, drop_path_rate=rate)
        backbone = MODELS.build(dict(type='ViR', arch=dict(embed_dims=64, num_layers=depth,
                                                           num_heads=2),
                                     out_indices=(depth - 1,), pyramid=None,
                                     drop_path_rate=rate))
    expected = [rate * i / max(depth - 1, 1) for i in range(depth)]
    for blocks in (model.blocks, backbone.blocks):
        got = []
        for block in blocks:
            for branch in (block.drop_path1, block.drop_path2):
                got.append(branch.drop_prob if isinstance(branch, DropPath) else 0.0)
        assert got == pytest.approx([p for p in expected for _ in range(2)], abs=1e-12)


# --------------------------------------------------------------------------- streamed forms


@pytest.mark.parametrize('mask', ['causal_2d', 'causal_1d', 'bidirectional_2d'])
@pytest.mark.parametrize('rows,cols', [(3, 5), (5, 2), (1, 4), (4, 1), (2, 2)])
def test_class_token_in_streamed_forms_equals_parallel(mask, rows, cols):
    """The class token sits after the last row (its row is empty up to the last column):
    every form gives the parallel form's class-token output (the classifier's input) and
    patch tokens, on grids with one row, one column, or more columns than rows."""
    torch.manual_seed(0)
    model = timm.create_model('vir_tiny_patch16_224', depth=2, embed_dim=32, num_heads=2,
                              img_size=(16 * rows, 16 * cols), mask=mask, init_values=1.0,
                              num_classes=5).double().eval()
    with torch.no_grad():
        model.cls_token.normal_()
        image = torch.randn(2, 3, 16 * rows, 16 * cols, dtype=torch.float64)
        reference = model.forward_features(image)
        logits = model(image)
        for mode, chunk in [('recurrent', 1), ('chunkwise', 1), ('chunkwise', cols + 1)]:
            model.set_retention_mode(mode, chunk)
            torch.testing.assert_close(model.forward_features(image), reference, rtol=0,
                                       atol=1e-10, msg=f'{mode} {chunk}')
            torch.testing.assert_close(model(image), logits, rtol=0, atol=1e-10,
                                       msg=f'{mode} {chunk} logits')


# --------------------------------------------------------------------------- backbone details


@pytest.mark.parametrize('size', [(70, 101), (33, 48), (64, 50)])
def test_backbone_pads_right_and_bottom(size):
    """An image whose sides are not multiples of the patch size gives the features of the
    same image zero-padded at the right and bottom (then cropped), not at the left/top."""
    torch.manual_seed(0)
    backbone = MODELS.build(dict(type='ViR', arch=dict(embed_dims=32, num_layers=2,
                                                       num_heads=2),
                                 img_size=64, out_indices=(0, 1), pyramid=None,
                                 drop_path_rate=0.0, init_values=1.0,
                                 spatial_prior=dict(channels=8))).eval()
    image = torch.randn(1, 3, *size)
    pad_h, pad_w = (-size[0]) % 16, (-size[1]) % 16
    padded = F.pad(image, (0, pad_w, 0, pad_h))
    with torch.no_grad():
        outs = backbone(image)
        reference = backbone(padded)
    for out, ref, stride in zip(outs, reference, backbone.out_strides):
        rows, cols = -(-size[0] // stride), -(-size[1] // stride)
        assert out.shape[-2:] == (rows, cols)
        torch.testing.assert_close(out, ref[..., :rows, :cols])


class _Handle:
    def __init__(self, module):
        self.module = module

    def remove(self):
        del self.module.forward  # back to the class's forward


def _count_block_calls(module):
    """Count the runs of module.forward (forward hooks do not fire in checkpoint's
    recomputation, the forward itself does)."""
    calls, inner = [], module.forward

    def forward(*args, **kwargs):
        calls.append(1)
        return inner(*args, **kwargs)

    module.forward = forward
    return calls, _Handle(module)


def test_backbone_with_cp_recomputes_blocks_in_backward():
    """with_cp=True really checkpoints: each block runs again during backward (and the
    gradients equal those without checkpointing)."""
    image = torch.randn(1, 3, 32, 32)
    grads = {}
    for with_cp in (False, True):
        torch.manual_seed(0)
        backbone = MODELS.build(dict(type='ViR', arch=dict(embed_dims=32, num_layers=2,
                                                           num_heads=2),
                                     img_size=32, out_indices=(0, 1), pyramid=None,
                                     drop_path_rate=0.0, with_cp=with_cp)).train()
        calls, handle = _count_block_calls(backbone.blocks[0])
        outs = backbone(image)
        forward_calls = len(calls)
        sum(o.square().mean() for o in outs).backward()
        handle.remove()
        assert forward_calls == 1
        assert len(calls) == (2 if with_cp else 1), with_cp
        grads[with_cp] = {n: p.grad for n, p in backbone.named_parameters()}
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, msg=name)


def test_timm_grad_checkpointing_recomputes_blocks():
    model = timm.create_model('vir_tiny_patch16_224', depth=2, img_size=32, num_classes=3)
    model.set_grad_checkpointing(True)
    model.train()
    calls, handle = _count_block_calls(model.blocks[1])
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    handle.remove()
    assert len(calls) == 2  # forward + recomputation in backward
    model.set_grad_checkpointing(False)
    calls, handle = _count_block_calls(model.blocks[1])
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    handle.remove()
    assert len(calls) == 1


# --------------------------------------------------------------------------- timm ViT variants


@pytest.mark.parametrize('kwargs,unused', [
    (dict(reg_tokens=4, no_embed_class=True), {'reg_token'}),
    (dict(reg_tokens=4), {'reg_token'}),
    (dict(global_pool='avg', fc_norm=True), {'fc_norm.weight', 'fc_norm.bias'}),
])
def test_timm_vit_variants_import_with_report(tmp_path, kwargs, unused):
    vit = timm.create_model('vit_tiny_patch16_224', num_classes=10, depth=2, **kwargs)
    with torch.no_grad():
        for param in vit.parameters():
            param.normal_()
    path = tmp_path / 'vit.safetensors'
    save_file(vit.state_dict(), str(path))
    backbone = MODELS.build(dict(type='ViR', arch=dict(embed_dims=192, num_layers=2,
                                                       num_heads=3),
                                 img_size=224, out_indices=(1,), pyramid=None,
                                 drop_path_rate=0.0))
    report = load_pretrained(backbone, str(path), allow_partial=True)
    assert unused <= set(report.unused_head), report.unused_head
    assert report.unexpected == []
    # The patch slots of pos_embed, not the class / register slots, are the ViR's.
    slots = vit.pos_embed.shape[1] - 196
    torch.testing.assert_close(backbone.pos_embed, vit.pos_embed[:, slots:])
    torch.testing.assert_close(backbone.blocks[1].retention.qkv.weight,
                               vit.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(backbone.cls_token, vit.cls_token)
    text = str(report)
    assert 'Pretrained ViR weights from' in text
    if 'norm.weight' not in vit.state_dict():  # fc_norm models: the final norm is new weight
        assert {'norm.weight', 'norm.bias'} <= set(report.missing)
        assert 'norm.weight' in text
