"""Distributed test runs: the metrics json is written by rank 0 alone (mmengine's LoggerHook
writes it from every rank to one shared path, and the racing writes corrupted it in CI)."""
import json
import logging
from types import SimpleNamespace

import pytest
from mmengine.config import Config

import vir_dense.mm.logger_hook as logger_hook
from vir_dense.mm.logger_hook import RankZeroLoggerHook, use_rank_zero_logger


def fake_runner(log_dir):
    log_processor = SimpleNamespace(
        get_log_after_epoch=lambda runner, n, mode, with_non_scalar: (
            {'coco/bbox_mAP': 0.25}, 'Epoch(test) [4/4] coco/bbox_mAP: 0.25'))
    return SimpleNamespace(log_processor=log_processor, test_dataloader=[0] * 4,
                           logger=logging.getLogger('test_logger_hook'), log_dir=str(log_dir),
                           timestamp='20261130_000000')


@pytest.mark.parametrize('main_process', [True, False])
def test_only_rank_zero_writes_the_test_json(tmp_path, monkeypatch, main_process):
    monkeypatch.setattr(logger_hook, 'is_main_process', lambda: main_process)
    hook = RankZeroLoggerHook()
    hook.json_log_path = '20261130_000000.json'
    hook.after_test_epoch(fake_runner(tmp_path))
    path = tmp_path / hook.json_log_path
    if main_process:
        assert json.loads(path.read_text()) == {'coco/bbox_mAP': 0.25}
    else:
        assert not path.exists()


def test_the_plain_logger_hook_is_swapped_and_keeps_its_settings():
    cfg = Config(dict(default_hooks=dict(logger=dict(type='LoggerHook', interval=7))))
    use_rank_zero_logger(cfg)
    assert cfg.default_hooks.logger == dict(type='RankZeroLoggerHook', interval=7)
    custom = Config(dict(default_hooks=dict(logger=dict(type='MyLoggerHook'))))
    use_rank_zero_logger(custom)
    assert custom.default_hooks.logger.type == 'MyLoggerHook'
