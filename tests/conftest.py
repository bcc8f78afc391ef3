"""Shared test set-up: torch threads per parallel worker, and no test leaks mmengine's default
scope into the next one.

mmengine keeps the current default scope in a process-wide registry of DefaultScope
instances; a Runner (or register_all_modules(init_default_scope=True)) makes its own the
current one. A test that built a Runner with default_scope='mmengine' made the next tests'
`mmdet.registry.MODELS.build(dict(type='ViR'))` look in mmengine's root registry. Each test
starts from the scopes that existed before it and gets them back afterwards.

`make test` runs the suite in parallel (pytest-xdist, one worker per core, a test file per
worker at a time). Each worker gets its share of the cores as torch threads, and so do the
processes it starts (OMP_NUM_THREADS): two workers with a full thread pool each slowed
small-tensor tests by 10-15x on 2 cores.

Config loading: for every `mmdet::` / `mmseg::` base, mmengine first looks the name up in the
package's model index, parsing its ~400 metafile YAMLs each time (~0.5 s per base, 1-2 s per
config; the suite loads configs hundreds of times). The parsed files are kept for the session;
mmengine only reads them. Likewise yapf's formatting of a config's text (`Config.pretty_text`,
0.2-2 s, asked for several times per run: log, dumped config, every checkpoint) is kept per text.
"""
import functools
import os

import pytest
import mmengine.config.config as config_module
import mmengine.config.utils as config_utils
import torch
from mmengine.registry import DefaultScope

_load_metafile = functools.lru_cache(maxsize=None)(config_utils.load)
config_utils.load = lambda path: _load_metafile(path)


_yapf_format = config_module.FormatCode


@functools.lru_cache(maxsize=64)
def _format_code(text, style):
    return _yapf_format(text, style_config=dict(style))


config_module.FormatCode = lambda text, style_config: _format_code(
    text, tuple(sorted(style_config.items())))


def pytest_configure(config):
    workers = getattr(config, 'workerinput', {}).get('workercount')
    if workers:
        threads = max(1, (os.cpu_count() or 1) // int(workers))
        torch.set_num_threads(threads)
        os.environ['OMP_NUM_THREADS'] = str(threads)


@pytest.fixture(autouse=True)
def _restore_default_scope():
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)
