"""Loading a config the way the tools and the Python APIs share: checked ``--cfg-options``,
``data_root`` carried into every dataset, and mmdet's or mmseg's registries chosen by the
config's ``default_scope``. Mistakes raise :class:`~vir_dense.errors.ConfigError`, before any
model is built.
"""
import difflib
import inspect
import os
import os.path as osp
import warnings
from pathlib import Path

from vir_dense.errors import ConfigError

SCOPES = ('mmdet', 'mmseg')


class ConfigNote(UserWarning):
    """A --cfg-options key that adds something new to the config (allowed, but worth a look)."""


def _runner_keys():
    """Top-level keys that mmengine's Runner reads even when a config does not set them."""
    from mmengine.runner import Runner
    keys = set(inspect.signature(Runner.__init__).parameters) - {'self'}
    keys |= {'custom_imports', 'default_scope', 'model_wrapper_cfg', 'find_unused_parameters',
             'runner_type', 'data_root', 'backend_args', 'compile', 'work_dir', 'launcher'}
    return keys


def _suggest(name, candidates):
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=3, cutoff=0.75)
    return f'; did you mean {" or ".join(repr(c) for c in close)}?' if close else ''


def _accepted_kwargs(type_name, scope):
    """Argument names of the class registered as ``type_name`` in ``scope``'s registries, or
    None when unknown or when it takes **kwargs (then any new key may be legitimate)."""
    if not isinstance(type_name, str) or scope not in SCOPES:
        return None
    import importlib

    from mmengine.registry import Registry
    module = importlib.import_module(f'{scope}.registry')
    found = []
    for value in vars(module).values():
        if isinstance(value, Registry):
            try:
                obj = value.get(type_name)
            except Exception:  # a registry that cannot import its modules: no verdict
                obj = None
            if obj is not None and obj not in found:
                found.append(obj)
    if not found:
        return None
    accepted = set()
    for obj in found:
        try:
            params = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
        except (TypeError, ValueError):
            return None
        if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        accepted |= set(params) - {'self'}
    return accepted


def check_cfg_options(cfg, options):
    """Check that every ``--cfg-options`` key names something that exists in ``cfg``.

    Rules: a top-level key must be in the config or be one that the Runner reads. Below the top
    level, a missing key is refused when it is close to an existing sibling (``drop_path_rat``
    vs ``drop_path_rate``: a probable typo) or when the dict builds a registered class
    (``type=...``) whose constructor has no such argument and no ``**kwargs`` (``AdamW`` has no
    ``lr_rate``). Any other new key is allowed (many dicts take new keys) and listed in the
    returned notes. A path through a list needs a valid index; one through a scalar is refused.
    Raises ConfigError.
    """
    notes = []
    scope = cfg.get('default_scope') or 'mmdet'
    for key in options or {}:
        parts = key.split('.')
        node = getattr(cfg, '_cfg_dict', cfg)  # an mmengine Config wraps a ConfigDict
        for depth, part in enumerate(parts):
            where = '.'.join(parts[:depth]) or 'the config'
            if isinstance(node, (list, tuple)):
                if part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                    continue
                raise ConfigError(f'--cfg-options {key}: {where} is a list of {len(node)} items; '
                                f'{part!r} is not a valid index')
            if not isinstance(node, dict):
                shown = repr(node) if len(repr(node)) < 60 else type(node).__name__
                raise ConfigError(f'--cfg-options {key}: {where} is {shown}, not a dict, so it '
                                f'has no key {part!r}; set {where} as a whole instead')
            if part in node:
                node = node[part]
                continue
            if depth == 0:
                if part in _runner_keys():
                    notes.append(f'--cfg-options {key}: adds the runner setting {part!r}')
                    break
                raise ConfigError(f'--cfg-options {key}: the config has no key {part!r}'
                                f'{_suggest(part, list(node.keys()) + sorted(_runner_keys()))}')
            hint = _suggest(part, node.keys())
            if hint:
                raise ConfigError(f'--cfg-options {key}: {where} has no key {part!r}{hint}')
            accepted = _accepted_kwargs(node.get('type'), scope)
            if accepted is not None and part not in accepted:
                raise ConfigError(f'--cfg-options {key}: {node["type"]} ({where}) takes no '
                                f'argument {part!r}{_suggest(part, accepted)}')
            notes.append(f'--cfg-options {key}: adds the new key {part!r} to {where}')
            break
    return notes


def _replace_data_root(node, old, new):
    """Replace ``old`` (the config's data_root) by ``new`` in every dataset and evaluator."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and value == old and key == 'data_root':
                node[key] = new
            elif isinstance(value, str) and key == 'ann_file' and value.startswith(old):
                node[key] = new + value[len(old):]
            else:
                _replace_data_root(value, old, new)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _replace_data_root(item, old, new)


def load_config(path, cfg_options=None):
    """``Config.fromfile`` + checked ``--cfg-options``; returns the merged config.

    ``--cfg-options data_root=DIR`` is carried into every dataloader and evaluator that used the
    config's data_root (a top-level variable is copied into them when the config is parsed, so
    changing only the variable would change nothing).
    """
    from mmengine.config import Config
    if not osp.isfile(path):
        raise ConfigError(f'config file {path} not found (configs are in configs/)')
    cfg = Config.fromfile(path)
    options = dict(cfg_options or {})
    for note in check_cfg_options(cfg, options):
        warnings.warn(note, ConfigNote, stacklevel=2)
    old_root = cfg.get('data_root')
    new_root = options.get('data_root')
    if isinstance(old_root, str) and isinstance(new_root, str) and new_root != old_root:
        if old_root.endswith('/') and not new_root.endswith('/'):
            new_root += '/'  # configs build paths as data_root + 'annotations/...'
            options['data_root'] = new_root
        # Carry the new root first, so explicit per-dataloader options still win.
        for key in ('train_dataloader', 'val_dataloader', 'test_dataloader',
                    'val_evaluator', 'test_evaluator'):
            if key in cfg:
                _replace_data_root(cfg[key], old_root, new_root)
    if options:
        try:
            cfg.merge_from_dict(options)
        except (TypeError, KeyError) as err:
            raise ConfigError(f'--cfg-options could not be merged: {err}') from err
    return cfg


def config_scope(cfg):
    scope = cfg.get('default_scope', 'mmdet')
    if scope not in SCOPES:
        raise ConfigError(f'default_scope={scope!r} is not supported by these tools; '
                        f'use one of {SCOPES}')
    return scope


def register_scope(scope):
    """Register mmdet's or mmseg's modules (and this project's) and set the default scope."""
    import vir_dense.mm  # noqa: F401  (registers this project's modules: one place)
    if scope == 'mmseg':
        from mmseg.utils import register_all_modules
    else:
        from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)


def scoped_config(config, cfg_options=None, scope='mmdet', hint=''):
    """A config (path or mmengine Config, plus checked overrides) that must be of `scope`;
    that scope's modules are registered. For the Python inference APIs."""
    from mmengine.config import Config
    if isinstance(config, (str, bytes)) or hasattr(config, '__fspath__'):
        config = load_config(os.fspath(config), cfg_options)
    elif cfg_options:
        config = Config(config.to_dict() if hasattr(config, 'to_dict') else dict(config))
        config.merge_from_dict(cfg_options)
    found = config_scope(config)
    if found != scope:
        kind = 'detection' if scope == 'mmdet' else 'segmentation'
        raise ConfigError(f'{config.filename}: default_scope={found!r}, not a {kind} config'
                        + (f' ({hint})' if hint else ''))
    register_scope(scope)
    return config


def run_config(path, cfg_options=None, work_dir=None, launcher='none'):
    """The config of a training or test run: loaded, its scope registered, with the launcher
    and the work dir (``work_dir``, else the config's, else work_dirs/<config name>)."""
    cfg = load_config(path, cfg_options)
    scope = config_scope(cfg)
    register_scope(scope)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(path)
    return cfg, scope


def default_work_dir(config_path):
    return osp.join('./work_dirs', Path(config_path).stem)
