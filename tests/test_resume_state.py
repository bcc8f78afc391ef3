"""The pieces of exact resume (vir_dense.mm.resume): generator states as plain data that round-trip,
and a resumed run's config taking the checkpoint's seed. The end-to-end checks (bitwise equal
weights after --resume) are in test_det_train.py and test_seg_train.py."""
import random

import numpy as np
import pytest
import torch
from mmengine.config import Config

from vir_dense.errors import CheckpointError
from vir_dense.mm import resume as vr


def _draws():
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.randn(), torch.rand(3).tolist(), torch.randperm(10).tolist())


def _plain(value):
    """Only data that a weights-only torch.load reads without any allowlist."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (int, float, str, torch.Tensor))


def test_rng_state_round_trips_and_is_plain_data(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # a cached Gaussian in numpy's state
    state = vr.get_rng_state()
    assert _plain(state)
    expected = _draws()
    path = tmp_path / 'state.pth'
    torch.save(state, path)
    loaded = torch.load(path, weights_only=True)
    _draws()  # move every generator on
    vr.set_rng_state(loaded)
    assert _draws() == expected


def test_resumed_config_takes_the_checkpoint_seed(tmp_path, capsys):
    work_dir = tmp_path / 'run'
    work_dir.mkdir()
    ckpt = work_dir / 'epoch_3.pth'
    torch.save({'meta': {'seed': 1234, 'epoch': 3}, 'state_dict': {}}, ckpt)
    (work_dir / 'last_checkpoint').write_text(str(ckpt))
    cfg = Config(dict(work_dir=str(work_dir), resume=True, load_from=None))
    assert vr.use_checkpoint_seed(cfg) == 1234  # --resume without a path: the latest
    assert cfg.randomness == dict(seed=1234)
    cfg = Config(dict(work_dir=str(tmp_path), resume=True, load_from=str(ckpt),
                      randomness=dict(seed=5, deterministic=False)))
    with pytest.warns(UserWarning, match="checkpoint's seed 1234 instead of the configured 5"):
        assert vr.use_checkpoint_seed(cfg) == 1234
    assert cfg.randomness == dict(seed=1234, deterministic=False)
    fresh = Config(dict(work_dir=str(tmp_path / 'empty'), resume=False, load_from=str(ckpt)))
    assert vr.use_checkpoint_seed(fresh) is None and 'randomness' not in fresh
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match='broken.pth could not be read'):
        vr.use_checkpoint_seed(Config(dict(work_dir=str(tmp_path), resume=True,
                                           load_from=str(broken))))
