"""Starting an mmengine run on the machine at hand: CUDA, or CPU with gloo; the environment
dump in the log file, not on the console."""
import logging
import os
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist
from mmengine.logging import MMLogger
from mmengine.runner import Runner

from .logger_hook import use_rank_zero_logger


def setup_device(cfg, launcher):
    """Without CUDA: gloo for distributed runs, and a DDP wrapper without device ids."""
    if torch.cuda.is_available():
        return
    env_cfg = cfg.setdefault('env_cfg', {})
    env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    if launcher != 'none':
        wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
        wrapper['device_ids'] = None  # CPU modules: DDP refuses device ids
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        cfg.model_wrapper_cfg = wrapper


def init_distributed_cpu(cfg, launcher):
    """mmengine's pytorch launcher calls torch.cuda.set_device; on CPU start gloo ourselves."""
    if launcher != 'pytorch' or torch.cuda.is_available() or dist.is_initialized():
        return
    kwargs = dict((cfg.get('env_cfg') or {}).get('dist_cfg') or {})
    kwargs['backend'] = 'gloo'
    dist.init_process_group(**kwargs)


class FileLoggedEnvRunner(Runner):
    """mmengine's Runner, whose start-up dump (system environment, runtime settings and the
    whole config: several kilobytes) goes to the run's log file only, not the console."""

    def _log_env(self, env_cfg):
        with _console_quiet(self.logger):
            super()._log_env(env_cfg)


@contextmanager
def _console_quiet(logger):
    consoles = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    levels = [h.level for h in consoles]
    for handler in consoles:
        handler.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for handler, level in zip(consoles, levels):
            handler.setLevel(level)


def avoid_reused_run_name(cfg):
    """mmengine names a run '<config>_<second>' and reuses the logger of that name: a second
    run of one config in the same process within one second (an in-process tool run) would log
    into the first run's directory. Only then, the run gets a numbered name of its own."""
    if cfg.get('experiment_name') or not cfg.filename:
        return
    base = f'{os.path.splitext(os.path.basename(cfg.filename))[0]}_' \
           f'{time.strftime("%Y%m%d_%H%M%S", time.localtime())}'
    name, number = base, 1
    while MMLogger.check_instance_created(name):
        number += 1
        name = f'{base}_{number}'
    if name != base:
        cfg.experiment_name = name


def build_runner(cfg, verbose=False):
    """The config's runner (``runner_type``), else mmengine's Runner; unless ``verbose``, one
    that keeps the environment dump out of the console (it is still in the log file). The
    plain LoggerHook becomes RankZeroLoggerHook (distributed test runs wrote one json from
    every rank)."""
    from mmengine.registry import RUNNERS
    use_rank_zero_logger(cfg)
    avoid_reused_run_name(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return (Runner if verbose else FileLoggedEnvRunner).from_cfg(cfg)
