"""mmengine's LoggerHook, with the test-metrics json written by rank 0 only.

mmengine's ``LoggerHook.after_test_epoch`` dumps the metrics to ``<log_dir>/<timestamp>.json``
on every rank; the ranks share that path, and two truncating writes racing on it can leave a
corrupt file (seen in CI: one rank's line with the other's trailing bytes after it)."""
from mmengine.dist import is_main_process
from mmengine.fileio import dump
from mmengine.hooks import LoggerHook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class RankZeroLoggerHook(LoggerHook):
    """``LoggerHook`` whose test-epoch json is written once, by rank 0; every rank still logs
    the metrics line."""

    def after_test_epoch(self, runner, metrics=None):
        tag, log_str = runner.log_processor.get_log_after_epoch(
            runner, len(runner.test_dataloader), 'test', with_non_scalar=True)
        runner.logger.info(log_str)
        if is_main_process():
            dump(self._process_tags(tag), f'{runner.log_dir}/{self.json_log_path}')


def use_rank_zero_logger(cfg):
    """Swap the config's plain ``LoggerHook`` for :class:`RankZeroLoggerHook` (same settings);
    a logger hook of another type is the user's choice and is left alone."""
    logger = (cfg.get('default_hooks') or {}).get('logger')
    if logger is not None and logger.get('type') in ('LoggerHook', LoggerHook):
        logger['type'] = 'RankZeroLoggerHook'
