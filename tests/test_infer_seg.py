"""Segmentation inference: tools/infer_seg.py outputs, bad inputs, checkpoint mismatch, and
whole-image chunkwise == parallel (logits close, labels identical) at an awkward size."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vir_dense.apis import seg as seg_api
from vir_dense.apis import seg_lean
from vir_dense.datasets.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / 'configs' / 'upernet_vir_t_synthetic.py')
NUM_CLASSES = len(SYNTHETIC_CLASSES)
H, W = 75, 133  # not square, neither side a multiple of 16 (or of 4)


def _load_tool():
    spec = importlib.util.spec_from_file_location('infer_seg', REPO / 'tools' / 'infer_seg.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _wake_up(model, seed=0):
    """Random init has LayerScale 1e-5: the blocks (and so retention) barely touch the tokens.
    Give the residual branches weight so that the retention form matters for the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(('ls1.gamma', 'ls2.gamma')):
                param.copy_(0.5 + 0.5 * torch.rand(param.shape, generator=generator))
    return model


@pytest.fixture(scope='module')
def model():
    return _wake_up(seg_api.init_segmentor(CONFIG, device='cpu'))


@pytest.fixture(scope='module')
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'synthetic_random.pth'
    meta = dict(dataset_meta=dict(classes=SYNTHETIC_CLASSES,
                                  palette=[list(c) for c in SYNTHETIC_PALETTE]))
    torch.save(dict(meta=meta, state_dict=model.state_dict()), path)
    return path


def _image(seed=0, size=(H, W)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    image[10:40, 20:70] = (250, 30, 30)  # some structure
    return image


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp('images')
    image = _image()
    Image.fromarray(image).save(folder / 'rgb.jpg')
    Image.fromarray(image[..., 1]).save(folder / 'grey.png')  # mode L
    Image.fromarray(np.dstack([image, np.full((H, W), 128, np.uint8)])).save(folder / 'rgba.png')
    (folder / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n this is not really a png')
    return folder


def test_cli_writes_three_outputs_per_image_and_skips_broken(checkpoint, image_folder,
                                                              tmp_path):
    out_dir = tmp_path / 'out'
    env = dict(os.environ, PYTHONWARNINGS='ignore')  # OMP_NUM_THREADS: the worker's share
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'infer_seg.py'), CONFIG, str(checkpoint),
         str(image_folder), '--out-dir', str(out_dir), '--retention-mode', 'chunkwise',
         '--chunk-size', '32', '--scale', 'none', '--opacity', '0.4', '--no-progress'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-4000:]  # one image failed
    assert 'broken.png' in proc.stderr and 'failed' in proc.stderr
    assert '3 image(s) segmented' in proc.stderr
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(f'{stem}_{kind}.png' for stem in ('rgb', 'grey', 'rgba')
                           for kind in ('color', 'overlay', 'label'))
    palette = {tuple(c) for c in SYNTHETIC_PALETTE}
    for stem in ('rgb', 'grey', 'rgba'):
        label = np.asarray(Image.open(out_dir / f'{stem}_label.png'))
        color = np.asarray(Image.open(out_dir / f'{stem}_color.png'))
        blend = np.asarray(Image.open(out_dir / f'{stem}_overlay.png'))
        assert label.shape == (H, W) and label.dtype == np.uint8
        assert label.max() < NUM_CLASSES
        assert color.shape == blend.shape == (H, W, 3)
        assert {tuple(c) for c in color.reshape(-1, 3)} <= palette
        expected = np.asarray(SYNTHETIC_PALETTE, np.uint8)[label]
        assert np.array_equal(color, expected)


def test_in_process_matches_segment_array(model, checkpoint, image_folder, tmp_path):
    """tools/infer_seg.py's label map is segment_array's (parallel whole = chunkwise)."""
    tool = _load_tool()
    out_dir = tmp_path / 'out'
    code = tool.main([CONFIG, str(checkpoint), str(image_folder / 'rgb.jpg'), '--out-dir',
                      str(out_dir), '--mode', 'whole', '--scale', 'none', '--no-progress'])
    assert code == 0
    seg_api.configure_inference(model, 'parallel', mode='whole')
    from vir_dense.apis import read_rgb
    expected = seg_api.segment_array(model, read_rgb(image_folder / 'rgb.jpg'), scale='none')
    label = np.asarray(Image.open(out_dir / 'rgb_label.png'))
    assert np.array_equal(label, expected.numpy())


def test_checkpoint_of_another_config_is_refused(model, tmp_path, image_folder):
    tool = _load_tool()
    from vir_dense.errors import CheckpointMismatchError
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state['decode_head.conv_seg.weight'] = torch.zeros(7, *state['decode_head.conv_seg.weight']
                                                       .shape[1:])
    del state['backbone.blocks.11.mlp.fc2.weight']
    wrong = tmp_path / 'other_config.pth'
    torch.save(dict(meta={}, state_dict=state), wrong)
    with pytest.raises(CheckpointMismatchError) as info:
        tool.main([CONFIG, str(wrong), str(image_folder), '--out-dir', str(tmp_path / 'o'),
                   '--no-progress'])
    message = str(info.value)
    assert str(wrong) in message and 'does not fit' in message
    assert 'upernet_vir_t_synthetic' in message
    assert 'another number of classes: decode_head.conv_seg.weight has 7 rows' in message
    assert 'backbone.blocks.11.mlp.fc2.weight' in message
    assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('chunk_size', [16, 40])
def test_chunkwise_whole_image_matches_parallel(model, chunk_size):
    image = _image(1)
    seg_api.configure_inference(model, 'parallel', mode='whole')
    labels_p, logits_p = seg_api.segment_array(model, image, scale='none', return_logits=True)
    seg_api.configure_inference(model, 'chunkwise', chunk_size)
    assert model.test_cfg.mode == 'whole' and model.backbone.retention_mode == 'chunkwise'
    labels_c, logits_c = seg_api.segment_array(model, image, scale='none', return_logits=True)
    assert labels_p.shape == (H, W)
    assert logits_p.shape == logits_c.shape == (1, NUM_CLASSES, -(-H // 4), -(-W // 4))
    scale = logits_p.abs().max().item()
    assert scale > 0 and logits_p.std() > 1e-3 * scale  # not a degenerate (constant) output
    torch.testing.assert_close(logits_c, logits_p, rtol=1e-4, atol=1e-4 * scale)
    assert torch.equal(labels_c, labels_p)
    # a memory budget slices the operator (head groups): the same logits. Budgets between
    # the least and the unsliced need of this grid (0.78-2.2 MB at 16 cells, 0.30-0.77 at 40)
    budget = {16: 1_200_000, 40: 500_000}[chunk_size]
    seg_api.configure_inference(model, 'chunkwise', chunk_size, memory_budget=budget)
    assert model.backbone.retention_memory_budget == budget
    assert model.cfg.model.backbone.retention_memory_budget == budget
    try:
        _, logits_b = seg_api.segment_array(model, image, scale='none', return_logits=True)
    finally:
        model.backbone.retention_memory_budget = None
    torch.testing.assert_close(logits_b, logits_c, rtol=1e-5, atol=1e-5 * scale)


def test_recurrent_matches_parallel(model):
    image = _image(2, size=(37, 50))
    seg_api.configure_inference(model, 'parallel', mode='whole')
    labels_p, logits_p = seg_api.segment_array(model, image, scale='none', return_logits=True)
    seg_api.configure_inference(model, 'recurrent')
    labels_r, logits_r = seg_api.segment_array(model, image, scale='none', return_logits=True)
    scale = logits_p.abs().max().item()
    torch.testing.assert_close(logits_r, logits_p, rtol=1e-4, atol=1e-4 * scale)
    assert torch.equal(labels_r, labels_p)


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('in_size,out_size', [((9, 13), (75, 133)), ((19, 34), (19, 34)),
                                               ((20, 8), (7, 31)), ((1, 5), (3, 1))])
def test_banded_upsample_argmax_equals_interpolate(monkeypatch, align_corners, in_size,
                                                   out_size):
    monkeypatch.setattr(seg_lean, 'BAND_ELEMENTS', 5 * 40)  # a few rows per band
    logits = torch.randn(5, *in_size, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(logits[None], size=out_size, mode='bilinear',
                             align_corners=align_corners)[0].argmax(0)
    got = seg_lean.upsample_argmax(logits, out_size, align_corners=align_corners)
    assert torch.equal(got, expected)


def test_slide_mode_matches_mmseg(model):
    """Slide mode: the same windows and logits as mmseg's slide_inference, and the same labels
    as mmseg's inference_model (which also resizes to the config's test scale)."""
    from mmseg.apis import inference_model
    image = _image(3, size=(40, 70))
    seg_api.configure_inference(model, 'parallel', mode='slide', crop_size=(64, 64),
                                stride=(48, 48))
    ours = seg_api.segment_array(model, image, scale='config')
    theirs = inference_model(model, np.ascontiguousarray(image[..., ::-1]))  # mmseg wants BGR
    assert torch.equal(ours, theirs.pred_sem_seg.data[0].long())
    inputs = torch.randn(1, 3, 70, 150, generator=torch.Generator().manual_seed(0))
    meta = dict(ori_shape=(70, 150), img_shape=(70, 150))
    with torch.no_grad():
        lean = seg_lean._slide_logits(model, inputs, dict(meta))
        reference = model.slide_inference(inputs, [dict(meta)])
    torch.testing.assert_close(lean, reference)


def test_whole_mode_matches_mmseg(model):
    from mmseg.apis import inference_model
    image = _image(4, size=(40, 70))
    seg_api.configure_inference(model, 'chunkwise', 32)
    assert model.test_cfg.mode == 'whole'
    ours = seg_api.segment_array(model, image, scale='config')  # resized to 146 x 256
    theirs = inference_model(model, np.ascontiguousarray(image[..., ::-1]))
    assert torch.equal(ours, theirs.pred_sem_seg.data[0].long())


@pytest.mark.parametrize('band_rows', [None, 1, 4])
def test_lean_uper_head_equals_uper_head(model, monkeypatch, band_rows):
    head = model.decode_head
    assert seg_lean._lean_uper_possible(head)
    if band_rows:  # stride-4 maps of 22 x 30 cells in bands of this many rows (or fewer)
        monkeypatch.setattr(seg_lean, 'BAND_ELEMENTS', band_rows * 30 * head.channels)
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 88, 120))
        reference = head.forward(feats)
        lean = seg_lean._lean_uper_forward(head, list(feats))
    scale = reference.abs().max().item()
    torch.testing.assert_close(lean, reference, rtol=1e-5, atol=1e-5 * scale)


def test_works_with_mmseg_init_model(checkpoint, image_folder, tmp_path):
    from mmseg.apis import init_model
    model = init_model(CONFIG, str(checkpoint), device='cpu')
    seg_api.configure_inference(model, 'chunkwise', 64)
    report = seg_api.segment_images(model, [str(image_folder / '*.png')], str(tmp_path),
                                    progress=False, log=lambda msg: None)
    assert sorted(Path(p).name for p in report.outputs) == ['grey.png', 'rgba.png']
    assert [Path(p).name for p, _ in report.failed] == ['broken.png']
    assert model.dataset_meta['classes'] == SYNTHETIC_CLASSES
