"""Bad inputs to the tools, each with its clear error or its documented handling:
a missing config, a truncated checkpoint, a truncated JPEG, a 16-bit PNG, a CMYK JPEG and an
EXIF-rotated photo (read as the test pipeline reads it: orientation applied, 16 bits scaled to
8). The tools run in this process (as `python tools/X.py ARGS` would run them)."""
import io
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch
from PIL import Image

from vir_dense.errors import CheckpointError
from vir_dense.preflight import check_checkpoint
from vir_dense.apis import read_rgb
from inprocess import run_tool

ROOT = Path(__file__).resolve().parents[1]
DET_CONFIG = str(ROOT / 'configs' / 'maskrcnn_vir_t_synthetic.py')


@pytest.fixture(scope='module')
def truncated_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp('ckpt')
    full = folder / 'full.pth'
    torch.save({'state_dict': {'w': torch.randn(64, 64)}, 'meta': {'epoch': 1}}, full)
    data = full.read_bytes()
    cut = folder / 'truncated.pth'
    cut.write_bytes(data[:len(data) // 2])
    return cut


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_missing_config_is_one_message(tool, tmp_path, capsys):
    args = [str(tmp_path / 'nope.py')] + (['x.pth'] if tool == 'test' else [])
    proc = run_tool(tool, args, capsys)
    assert proc.returncode == 2
    assert f'config file {tmp_path / "nope.py"} not found' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_truncated_checkpoint_is_named_by_test_and_train(truncated_checkpoint, tmp_path,
                                                         capsys):
    for tool, args in (('test', [DET_CONFIG, str(truncated_checkpoint)]),
                       ('train', [DET_CONFIG, '--resume', str(truncated_checkpoint)])):
        proc = run_tool(tool, args + ['--work-dir', str(tmp_path / tool)], capsys)
        assert proc.returncode == 2, (tool, proc.stderr[-3000:])
        assert str(truncated_checkpoint) in proc.stderr
        assert 'not a readable torch checkpoint' in proc.stderr and 'truncated' in proc.stderr
        assert 'Traceback' not in proc.stderr


def test_check_checkpoint_accepts_complete_files(truncated_checkpoint, tmp_path):
    full = truncated_checkpoint.parent / 'full.pth'
    assert check_checkpoint(full) == str(full)
    with pytest.raises(CheckpointError, match='not a readable torch checkpoint'):
        check_checkpoint(truncated_checkpoint)
    text = tmp_path / 'notes.pth'
    text.write_text('these are not weights')
    with pytest.raises(CheckpointError, match='not a readable torch checkpoint'):
        check_checkpoint(text)
    with pytest.raises(CheckpointError, match='not found'):
        check_checkpoint(tmp_path / 'missing.pth')


# --------------------------------------------------------------------------- images


def _photo(height=40, width=60):
    """An image whose orientation is visible: a red block at the top left."""
    image = np.full((height, width, 3), 40, np.uint8)
    image[:10, :20] = (230, 20, 20)
    image[-5:, :, 1] = 200
    return image


def test_exif_rotated_photo_is_read_upright(tmp_path):
    """A camera JPEG stored landscape with EXIF orientation 6 (rotate 90 degrees clockwise to
    display): read_rgb gives what viewers show, as mmcv's loader (the test pipeline) does."""
    stored = _photo()
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / 'portrait.jpg'
    image.save(path, quality=95, exif=exif)
    rgb = read_rgb(path)
    assert rgb.shape == (60, 40, 3)  # upright: the stored width is now the height
    expected = np.rot90(stored, k=-1)  # clockwise
    assert np.abs(rgb.astype(int) - expected).mean() < 3
    assert np.array_equal(rgb, mmcv.imread(str(path), channel_order='rgb'))


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    """16-bit grey PNGs (scientific and depth images): the high byte, like cv2 in the pipeline,
    not values clipped at 255."""
    values = np.linspace(0, 65535, 32 * 48).reshape(32, 48).astype(np.uint16)
    path = tmp_path / 'deep.png'
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith('I')
    rgb = read_rgb(path)
    assert rgb.shape == (32, 48, 3) and rgb.dtype == np.uint8
    expected = (values >> 8).astype(np.uint8)
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], expected)
    assert np.array_equal(rgb, mmcv.imread(str(path), channel_order='rgb'))


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    rgb = _photo()
    path = tmp_path / 'print.jpg'
    Image.fromarray(rgb).convert('CMYK').save(path, quality=95)
    assert Image.open(path).mode == 'CMYK'
    got = read_rgb(path)
    assert got.shape == rgb.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - rgb).mean() < 4  # colours kept, not inverted
    assert np.abs(got.astype(int) - mmcv.imread(str(path), channel_order='rgb')).mean() < 4


def test_truncated_jpeg_is_refused_with_its_path(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, 'JPEG')
    path = tmp_path / 'cut.jpg'
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match='cut.jpg.*truncated'):
        read_rgb(path)
