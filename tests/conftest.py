"""Shared test set-up: no test leaks mmengine's default scope into the next one.

mmengine keeps the current default scope in a process-wide registry of DefaultScope
instances; a Runner (or register_all_modules(init_default_scope=True)) makes its own the
current one. A test that built a Runner with default_scope='mmengine' made the next tests'
`mmdet.registry.MODELS.build(dict(type='ViR'))` look in mmengine's root registry. Each test
starts from the scopes that existed before it and gets them back afterwards.
"""
import pytest
from mmengine.registry import DefaultScope


@pytest.fixture(autouse=True)
def _restore_default_scope():
    saved = DefaultScope._instance_dict.copy()
    yield
    DefaultScope._instance_dict.clear()
    DefaultScope._instance_dict.update(saved)
