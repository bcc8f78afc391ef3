"""timm's feature API on the ViR models: forward_intermediates and features_only."""
import pytest
import timm
import torch

import vir_dense  # noqa: F401  (registers the timm models)


def test_features_only_gives_nchw_maps_at_stride_16_for_any_size_in_every_mode():
    torch.manual_seed(0)
    model = timm.create_model('vir_tiny_patch16_224', features_only=True, depth=4,
                              out_indices=(1, 3), mask='bidirectional_2d').eval()
    assert model.feature_info.channels() == [192, 192]
    assert model.feature_info.reduction() == [16, 16]
    assert len(model.model.blocks) == 4
    image = torch.randn(2, 3, 96, 160)
    outputs = {}
    with torch.no_grad():
        for mode in ('parallel', 'chunkwise', 'recurrent', 'auto'):
            model.model.set_retention_mode(mode, chunk_size=20)
            outputs[mode] = model(image)
    for mode, maps in outputs.items():
        assert [tuple(m.shape) for m in maps] == [(2, 192, 6, 10)] * 2, mode
        for got, want in zip(maps, outputs['parallel']):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=mode)


def test_forward_intermediates_match_the_blocks():
    torch.manual_seed(0)
    model = timm.create_model('vir_tiny_patch16_224', depth=3, dynamic_img_size=True).eval()
    image = torch.randn(1, 3, 64, 96)
    taps = []
    hooks = [b.register_forward_hook(lambda m, i, o: taps.append(o)) for b in model.blocks]
    with torch.no_grad():
        final, maps = model.forward_intermediates(image, indices=[0, 2])
        reference = model.forward_features(image)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(final, reference)
    grid_maps = [t[:, :-1].reshape(1, 4, 6, -1).permute(0, 3, 1, 2) for t in (taps[0], taps[2])]
    for got, want in zip(maps, grid_maps):
        torch.testing.assert_close(got, want)
    nlc = model.forward_intermediates(image, indices=1, output_fmt='NLC',
                                      intermediates_only=True)
    assert nlc[0].shape == (1, 24, 192)
    with pytest.raises(ValueError, match='output_fmt'):
        model.forward_intermediates(image, output_fmt='NHWC')
