"""timm's model contract on the ViR models.

The checks that timm's own model suite (tests/test_models.py in the timm repository) runs on every
model it ships and that apply to a ViT-like model, written for this project: default config vs
behaviour, forward/backward, TorchScript, torch.fx forward/backward and FX+TorchScript,
forward_intermediates, features_only by getter, hooks and FX; then the same graph checks in every
retention mode and mask, set_input_size, and a local pretrained file through the pretrained cfg.

Models are small (the tiny variant, 2 blocks, 48x64 images: a 3x4 patch grid plus the class
token) so the file stays within the suite's time budget; every registered variant is covered by
creation, its config and a scripted + traced one-block forward.
See docs/timm.md for what a scripted or traced ViR does and does not do.
"""
import io
import math
import warnings

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import get_model_input_config, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import (NodePathTracer, create_feature_extractor,
                                                   get_graph_node_names)

import vir_dense  # noqa: F401  (registers the models)
import vir_dense.models.vir as vir_module
from vir_dense.models.archs import ARCHS, VARIANTS
from vir_dense.models.checkpoint_files import save_vir_checkpoint
from vir_dense.ops.retention import MASKS

MODES = ('parallel', 'chunkwise', 'recurrent', 'auto')
SMALL = dict(depth=2, img_size=(48, 64))  # a 3 x 4 patch grid
pytestmark = [
    # torch 2.13 deprecates TorchScript itself; the checks here are timm's, which script
    pytest.mark.filterwarnings('ignore:`torch.jit.save` is deprecated:DeprecationWarning'),
    # torch.fx's GraphModule.__init__ annotates an empty attribute; TorchScript warns whenever a
    # GraphModule (any model's, timm's ViT's too) is scripted
    pytest.mark.filterwarnings('ignore:The TorchScript type system:UserWarning'),
]
TRACER_KWARGS = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                     param_shapes_constant=True)  # what timm's own FX checks pass


def _tiny(**kwargs):
    torch.manual_seed(0)
    return timm.create_model('vir_tiny_patch16_224', **{**SMALL, **kwargs})


def _input_size(model, target=128):
    """timm's rule (its _get_input_size) on the model's current input config: the size itself
    when fixed, else capped at `target`."""
    config = get_model_input_config(model)
    if config['fixed_input_size']:
        return config['input_size']
    return tuple(min(s, target) for s in config['input_size'])


def _fx_model(model, train=False):
    """timm's FX model for its checks: torchvision's feature extractor returning the graph's
    last node (the outputs feeding the graph's output in train mode)."""
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER_KWARGS)
    train_return, eval_return = [train_nodes[-1]], [eval_nodes[-1]]
    if train:
        graph = NodePathTracer(**TRACER_KWARGS).trace(model)
        output = list(reversed(graph.nodes))
        names = [n.name for n in output]
        train_return = [train_nodes[-names.index(n.name)]
                        for n in output[0]._input_nodes.keys()]
    return create_feature_extractor(model, train_return_nodes=train_return,
                                    eval_return_nodes=eval_return, tracer_kwargs=TRACER_KWARGS)


def _operator_modes(monkeypatch):
    """Record the mode of every call into the retention operator (eager, traced or scripted:
    the scripted model calls retention_op back in Python, which calls this)."""
    seen = []
    original = vir_module.retention

    def spy(*args, **kwargs):
        seen.append(kwargs['mode'])
        return original(*args, **kwargs)
    monkeypatch.setattr(vir_module, 'retention', spy)
    return seen


def _graph_modes(graph_module):
    return [node.args[4] for node in graph_module.graph.nodes
            if node.op == 'call_function' and node.target is vir_module.retention_op]


# --- default config vs behaviour ---------------------------------------------------------
@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_every_variant_config_matches_the_model(name):
    with torch.device('meta'):
        model = timm.create_model(name)
    size, patch = VARIANTS[name]
    cfg = model.pretrained_cfg
    keys = model.state_dict().keys()
    assert cfg['input_size'] == (3, 224, 224) and cfg['fixed_input_size'] is True
    assert tuple(model.patch_embed.img_size) == (224, 224) and model.patch_embed.strict_img_size
    assert get_model_input_config(model) == dict(input_size=(3, 224, 224), fixed_input_size=True,
                                                 first_conv='patch_embed.proj')
    assert f"{cfg['classifier']}.weight" in keys and f"{cfg['first_conv']}.weight" in keys
    assert model.num_classes == cfg['num_classes'] == 1000
    assert model.num_features == model.head_hidden_size == ARCHS[size].embed_dim
    assert model.output_fmt == 'NLC'
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    assert info.channels() == [ARCHS[size].embed_dim] * ARCHS[size].depth
    assert info.reduction() == [patch] * ARCHS[size].depth
    assert timm.data.resolve_data_config(model=model)['input_size'] == (3, 224, 224)


@pytest.mark.parametrize('name', sorted(VARIANTS))
def test_every_variant_scripts_and_traces(name):
    """One block of each variant at three by two patches: scripted and FX-traced = eager."""
    patch = VARIANTS[name][1]
    torch.manual_seed(0)
    model = timm.create_model(name, depth=1, img_size=(3 * patch, 2 * patch), num_classes=3).eval()
    image = torch.randn(1, 3, 3 * patch, 2 * patch)
    with torch.no_grad():
        eager = model(image)
        torch.testing.assert_close(torch.jit.script(model)(image), eager)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(image), eager)
    assert eager.shape == (1, 3) and torch.isfinite(eager).all()


def test_fixed_input_size_is_what_the_model_does():
    """The default model takes its img_size only, as its cfg and timm's traits say (timm's ViT
    does the same); dynamic_img_size=True and features_only=True take any size and say so."""
    model = _tiny(num_classes=4).eval()
    assert get_model_input_config(model)['fixed_input_size'] is True
    assert _input_size(model) == (3, 48, 64)
    with pytest.raises(AssertionError, match=r"Input height \(64\) doesn't match model \(48\)"):
        model(torch.randn(1, 3, 64, 64))
    dynamic = _tiny(num_classes=4, dynamic_img_size=True).eval()
    assert get_model_input_config(dynamic)['fixed_input_size'] is False
    features = _tiny(features_only=True, out_indices=(0, 1))
    assert get_model_input_config(features)['fixed_input_size'] is False
    with torch.no_grad():
        for size in [(32, 80), (64, 64)]:
            assert dynamic(torch.randn(1, 3, *size)).shape == (1, 4)
            assert features(torch.randn(1, 3, *size))[0].shape == (1, 192, size[0] // 16,
                                                                   size[1] // 16)


def test_default_cfg_checks_of_a_token_model():
    """timm's cfg check for ViT-like models (its 'non-standard' branch), with the feature axis
    taken from output_fmt instead of a name list."""
    model = _tiny().eval()
    image = torch.randn(1, *_input_size(model))
    channel_dim = get_channel_dim(model.output_fmt)
    (token_dim,) = get_spatial_dim(model.output_fmt)
    with torch.no_grad():
        features = model.forward_features(image)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape[channel_dim] == model.num_features
        assert features.shape[token_dim] == 3 * 4 + 1  # patches, then the class token
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert model(image).shape == pre_logits.shape
        model.reset_classifier(0, '')
        assert model(image).shape == features.shape  # no pooling: the tokens
        headless = _tiny(num_classes=0).eval()
        assert headless(image).shape == (1, headless.num_features)


# --- forward / backward ------------------------------------------------------------------
@pytest.mark.parametrize('mode', MODES)
def test_forward_and_backward(mode):
    model = _tiny(retention_mode=mode, chunk_size=4).eval()
    image = torch.randn(1, *_input_size(model))
    with torch.no_grad():
        out = model(image)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(image), out, rtol=1e-4, atol=1e-5)
    assert out.shape == (1, 1000) and not torch.isnan(out).any()

    model = _tiny(retention_mode=mode, chunk_size=4, num_classes=42).train()
    out = model(torch.randn(2, *_input_size(model)))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing}'
    assert out.shape == (2, 42) and not torch.isnan(out).any()


# --- TorchScript and torch.fx ------------------------------------------------------------
def test_torchscript_as_timm_does():
    with timm.set_scriptable(True):
        model = _tiny().eval()
    scripted = torch.jit.script(model)
    image = torch.randn(1, *_input_size(model))
    with torch.no_grad():
        out = scripted(image)
        torch.testing.assert_close(out, model(image))
    assert out.shape == (1, 1000) and not torch.isnan(out).any()


def test_scripted_model_cannot_be_saved_and_says_which_call():
    """Measured limit: the operator runs in Python (retention_op), so TorchScript can run the
    model but not serialize it; the error names the call (docs/timm.md: use torch.export)."""
    scripted = torch.jit.script(_tiny(depth=1).eval())
    with pytest.raises(RuntimeError, match="Could not export Python function call 'retention_op'"):
        torch.jit.save(scripted, io.BytesIO())


def test_fx_forward_backward_and_torchscript_as_timm_does():
    # Training first: see test_inference_mode_then_training for why the order matters today.
    model = _tiny(num_classes=42).train()
    fx_model = _fx_model(model, train=True)
    out = torch.cat(tuple(fx_model(torch.randn(2, *_input_size(model))).values()))
    out.mean().backward()
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing and out.shape == (2, 42) and not torch.isnan(out).any()

    model = _tiny().eval()
    image = torch.randn(1, *_input_size(model))
    with torch.inference_mode():
        out = model(image)
        fx_out = torch.cat(tuple(_fx_model(model)(image).values()))
    assert torch.equal(fx_out, out)  # parallel mode: the same ops, bit for bit

    with timm.set_scriptable(True):
        model = _tiny().eval()
    scripted_fx = torch.jit.script(_fx_model(model))
    with torch.inference_mode():
        out = torch.cat(tuple(scripted_fx(image).values()))
        torch.testing.assert_close(out, model(image))


@pytest.mark.parametrize('mode', ['parallel', 'chunkwise'])
def test_inference_mode_then_training(mode):
    """timm runs its FX checks in inference mode, then trains: the operator's per-geometry
    caches (decay masks, tile plans) hold normal tensors that autograd can save."""
    # A 3 x 7 grid that no other check uses: the first call of this geometry is the one below.
    model = _tiny(depth=1, img_size=(48, 112), retention_mode=mode, chunk_size=4)
    image = torch.randn(1, 3, 48, 112)
    with torch.inference_mode():
        model(image)  # causal chunkwise: the streaming classifier path
    model(image).sum().backward()


@pytest.mark.parametrize('mask', sorted(MASKS))
@pytest.mark.parametrize('mode', MODES)
def test_graphs_run_the_selected_mode(mode, mask, monkeypatch):
    """Scripted, FX-traced and FX+scripted models give the eager outputs and call the operator
    in the mode the model was set to ('auto' is passed on: the operator picks per input size),
    never another. A causal classifier in recurrent or chunkwise mode streams in eager mode
    (one piece through every block); graphs run the blocks one by one in that same mode."""
    model = _tiny(mask=mask, retention_mode=mode, chunk_size=4, num_classes=5).eval()
    image = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        eager = model(image)
        traced = torch.fx.symbolic_trace(model)
        assert _graph_modes(traced) == [mode] * 2  # one operator call per block
        graphs = dict(scripted=torch.jit.script(model), traced=traced,
                      traced_scripted=torch.jit.script(traced))
        seen = _operator_modes(monkeypatch)
        for kind, graph in graphs.items():
            seen.clear()
            torch.testing.assert_close(graph(image), eager, rtol=1e-5, atol=1e-6, msg=kind)
            assert seen == [mode] * 2, kind


def test_traced_dynamic_model_takes_other_sizes():
    """A dynamic_img_size model traced once runs at other sizes (the pos-embed resize and the
    operator are graph leaves that see the real grid)."""
    model = _tiny(dynamic_img_size=True, mask='bidirectional_2d', num_classes=3).eval()
    traced = torch.fx.symbolic_trace(model)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for size in [(48, 64), (80, 32), (32, 32)]:
            image = torch.randn(2, 3, *size)
            torch.testing.assert_close(traced(image), model(image))
            torch.testing.assert_close(scripted(image), model(image))


# --- feature API -------------------------------------------------------------------------
def _check_maps(maps, channels, reductions, input_size, batch=1):
    assert len(maps) == len(channels)
    for tensor, chs, reduction in zip(maps, channels, reductions):
        assert tensor.shape[0] == batch and tensor.shape[1] == chs
        assert tensor.shape[2] <= math.ceil(input_size[-2] / reduction) + 1
        assert tensor.shape[3] <= math.ceil(input_size[-1] / reduction) + 1
        assert not torch.isnan(tensor).any()


def test_forward_intermediates_as_timm_does():
    model = _tiny(depth=3).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(info.channels()) >= 3
    image = torch.randn(1, *_input_size(model))
    with torch.no_grad():
        final, maps = model.forward_intermediates(image, output_fmt='NCHW')
        _check_maps(maps, info.channels(), info.reduction(), image.shape)
        torch.testing.assert_close(final, model.forward_features(image))
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(image)[0], final, rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.parametrize('mode', ['parallel', 'recurrent'])
def test_features_only_by_getter_hooks_and_fx(mode):
    """Getter (the default): NCHW maps. Hooks and FX: the blocks' own outputs, tokens with the
    class token last, labelled output_fmt 'NLC'. All three hold the same numbers, also in
    recurrent mode (a hooked block is never streamed past)."""
    kwargs = dict(features_only=True, depth=3, out_indices=(0, 2), mask='causal_2d',
                  retention_mode=mode)
    image = torch.randn(1, 3, 64, 96)  # features take any size
    outputs = {}
    for feature_cls in ('getter', 'hook', 'fx'):
        model = _tiny(feature_cls=feature_cls, **kwargs).eval()
        with torch.no_grad():
            outputs[feature_cls] = model(image)
        fmt = model.output_fmt.value
        assert fmt == ('NCHW' if feature_cls == 'getter' else 'NLC'), feature_cls
        assert model.feature_info.channels() == [192, 192]
        assert model.feature_info.reduction() == [16, 16]
        channel_dim = get_channel_dim(fmt)
        for tensor in outputs[feature_cls]:
            assert tensor.shape[channel_dim] == 192
    _check_maps(outputs['getter'], [192, 192], [16, 16], image.shape)
    for tokens_kind in ('hook', 'fx'):
        for maps, tokens in zip(outputs['getter'], outputs[tokens_kind]):
            assert tokens.shape == (1, 4 * 6 + 1, 192)
            as_maps = tokens[:, :-1].reshape(1, 4, 6, 192).permute(0, 3, 1, 2)
            torch.testing.assert_close(as_maps, maps, msg=tokens_kind)


def test_features_fx_scripted_as_timm_does():
    with timm.set_scriptable(True):
        model = _tiny(features_only=True, feature_cfg=dict(feature_cls='fx'),
                      out_indices=(0, 1)).eval()
    scripted = torch.jit.script(model)
    with torch.inference_mode():
        outputs = scripted(torch.randn(1, 3, 48, 64))
    assert isinstance(outputs, list) and [tuple(t.shape) for t in outputs] == [(1, 13, 192)] * 2


# --- set_input_size and a local pretrained file ------------------------------------------
def test_set_input_size_resamples_like_timm_vit():
    model = _tiny(depth=1, num_classes=3).eval()
    pos_embed = model.pos_embed.detach().clone()
    model.set_input_size(img_size=(96, 32))
    assert model.pos_embed.shape == (1, 6 * 2, 192)
    want = timm.layers.resample_abs_pos_embed(pos_embed, new_size=(6, 2), old_size=(3, 4),
                                              num_prefix_tokens=0)
    torch.testing.assert_close(model.pos_embed.detach(), want)
    assert get_model_input_config(model)['input_size'] == (3, 96, 32)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 32)).shape == (1, 3)
        with pytest.raises(AssertionError, match='Input height'):
            model(torch.randn(1, 3, 48, 64))  # the old size is no longer the model's

    model.set_input_size(patch_size=8)
    assert model.patch_embed.proj.weight.shape == (192, 3, 8, 8)
    assert model.pos_embed.shape == (1, 12 * 4, 192)
    assert [info['reduction'] for info in model.feature_info] == [8]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 96, 32))
        torch.testing.assert_close(torch.jit.script(model)(torch.randn(1, 3, 96, 32)).shape,
                                   out.shape)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_pretrained_cfg_overlay_loads_a_local_distilled_checkpoint(tmp_path, suffix):
    """timm's pretrained=True with pretrained_cfg_overlay=dict(file=...) reads a distilled ViR
    file (vir_dense.distill writes it with save_vir_checkpoint) through the model's own
    checkpoint filter: the trunk always, the head when it fits."""
    student = _tiny(mask='bidirectional_2d')
    path = save_vir_checkpoint(student, tmp_path / f'vir_distilled{suffix}',
                               meta=dict(distilled_from='vit_tiny_patch16_224'))
    loaded = _tiny(mask='bidirectional_2d', pretrained=True,
                   pretrained_cfg_overlay=dict(file=str(path)))
    for key, value in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.pretrained_cfg['file'] == str(path)

    new_head = _tiny(pretrained=True, num_classes=7, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(new_head.blocks[1].mlp.fc2.weight, student.blocks[1].mlp.fc2.weight)
    assert new_head.head.weight.shape == (7, 192)

    # timm's pretrained check: another channel count (timm adapts the first conv after our
    # filter: RGB summed for one channel), and features_only.
    for num_classes in (5, 0):
        grey = _tiny(pretrained=True, in_chans=1, num_classes=num_classes,
                     pretrained_cfg_overlay=dict(file=str(path)))
        torch.testing.assert_close(grey.patch_embed.proj.weight,
                                   student.patch_embed.proj.weight.sum(dim=1, keepdim=True))
        assert torch.equal(grey.pos_embed, student.pos_embed)
    features = _tiny(pretrained=True, features_only=True, out_indices=(0, 1),
                     mask='bidirectional_2d', pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(features.model.blocks[0].retention.qkv.weight,
                       student.blocks[0].retention.qkv.weight)


def test_jit_trace_of_a_dynamic_model_warns_that_it_is_size_specific():
    model = _tiny(depth=1, dynamic_img_size=True).eval()
    with warnings.catch_warnings(record=True) as caught:  # torch's own TracerWarnings too
        warnings.simplefilter('always')
        torch.jit.trace(model, torch.randn(1, 3, 48, 64), check_trace=False)
    assert any('records this ViR for a 3x4 patch grid only' in str(w.message) for w in caught)
