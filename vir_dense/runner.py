"""Shared logic of tools/train.py, tools/test.py and tools/infer_*.py.

One set of tools serves detection and segmentation: everything here dispatches on the config's
``default_scope`` ('mmdet' or 'mmseg'). The other job of this module is to turn the mistakes a
user makes (a dataset that is not where the config says, a missing checkpoint, a typo in
``--cfg-options``) into one clear message raised as :class:`UserError` *before* the runner
starts, instead of a deep traceback minutes later. The tools catch it with :func:`run_cli`.
"""
import difflib
import inspect
import os
import os.path as osp
import sys
from pathlib import Path

SCOPES = ('mmdet', 'mmseg')

# Where each known dataset is expected, and how to get it (used in the "not found" messages).
_DATASET_HINTS = {
    'CocoDataset': ('COCO 2017 is expected as <data_root>/annotations/instances_{train,val}2017.json '
                    'and <data_root>/{train,val}2017/ (download it from cocodataset.org).'),
    'ADE20KDataset': ('ADE20K is expected as <data_root>/images/{training,validation}/ and '
                      '<data_root>/annotations/{training,validation}/ (ADEChallengeData2016, '
                      'from the MIT scene parsing benchmark).'),
}
_SYNTHETIC_HINTS = {
    'synthetic_coco': 'python tools/make_synthetic_data.py coco',
    'synthetic_ade': 'python tools/make_synthetic_data.py ade20k',
}


class UserError(Exception):
    """A mistake in how a tool was called: reported as one message, without a traceback."""


def run_cli(main, argv=None):
    """Run ``main(argv)``; a :class:`UserError` ends the program with its message (exit 2)."""
    try:
        return main(argv)
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    finally:
        shutdown_distributed()


def shutdown_distributed():
    """Destroy the process group before the interpreter exits. Left to the interpreter's
    teardown, gloo's worker threads can be destroyed still joinable, and the process dies with
    'terminate called without an active exception' (SIGABRT) after a successful run."""
    import gc

    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        # The Runner (reference cycles) still holds the DDP wrapper, whose reducer holds the
        # process group: free it first so the group is really gone when destroyed.
        gc.collect()
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Config loading and --cfg-options checks
# --------------------------------------------------------------------------------------------
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
    Raises UserError.
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
                raise UserError(f'--cfg-options {key}: {where} is a list of {len(node)} items; '
                                f'{part!r} is not a valid index')
            if not isinstance(node, dict):
                shown = repr(node) if len(repr(node)) < 60 else type(node).__name__
                raise UserError(f'--cfg-options {key}: {where} is {shown}, not a dict, so it '
                                f'has no key {part!r}; set {where} as a whole instead')
            if part in node:
                node = node[part]
                continue
            if depth == 0:
                if part in _runner_keys():
                    notes.append(f'--cfg-options {key}: adds the runner setting {part!r}')
                    break
                raise UserError(f'--cfg-options {key}: the config has no key {part!r}'
                                f'{_suggest(part, list(node.keys()) + sorted(_runner_keys()))}')
            hint = _suggest(part, node.keys())
            if hint:
                raise UserError(f'--cfg-options {key}: {where} has no key {part!r}{hint}')
            accepted = _accepted_kwargs(node.get('type'), scope)
            if accepted is not None and part not in accepted:
                raise UserError(f'--cfg-options {key}: {node["type"]} ({where}) takes no '
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
        raise UserError(f'config file {path} not found (configs are in configs/)')
    cfg = Config.fromfile(path)
    options = dict(cfg_options or {})
    for note in check_cfg_options(cfg, options):
        print(f'note: {note}', file=sys.stderr)
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
            raise UserError(f'--cfg-options could not be merged: {err}') from err
    return cfg


# --------------------------------------------------------------------------------------------
# Scope (mmdet / mmseg)
# --------------------------------------------------------------------------------------------
def config_scope(cfg):
    scope = cfg.get('default_scope', 'mmdet')
    if scope not in SCOPES:
        raise UserError(f'default_scope={scope!r} is not supported by these tools; '
                        f'use one of {SCOPES}')
    return scope


def register_scope(scope):
    """Register mmdet's or mmseg's modules (and this project's) and set the default scope."""
    import vir_dense  # noqa: F401  (ViR backbone, neck, layer-decay constructor)
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
        raise UserError(f'{config.filename}: default_scope={found!r}, not a {kind} config'
                        + (f' ({hint})' if hint else ''))
    register_scope(scope)
    return config


def tool_config(args):
    """tools/train.py and tools/test.py: config + --cfg-options, registered scope, launcher
    and work dir (--work-dir, else the config's, else work_dirs/<config name>)."""
    cfg = load_config(args.config, args.cfg_options)
    scope = config_scope(cfg)
    register_scope(scope)
    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(args.config)
    return cfg, scope


def build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def setup_device(cfg, launcher):
    """Without CUDA: gloo for distributed runs, and a DDP wrapper without device ids."""
    import torch
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
    import torch
    import torch.distributed as dist
    if launcher != 'pytorch' or torch.cuda.is_available() or dist.is_initialized():
        return
    kwargs = dict((cfg.get('env_cfg') or {}).get('dist_cfg') or {})
    kwargs['backend'] = 'gloo'
    dist.init_process_group(**kwargs)


# --------------------------------------------------------------------------------------------
# Mixed precision on CPU
# --------------------------------------------------------------------------------------------
def _register_cpu_amp_wrapper():
    """`CPUAmpOptimWrapper`: bf16 autocast on CPU for --amp (mmengine's AmpOptimWrapper
    asserts a GPU). bfloat16 keeps fp32's exponent range, so no loss scaling is needed."""
    from contextlib import contextmanager

    import torch
    from mmengine.optim import OptimWrapper
    from mmengine.registry import OPTIM_WRAPPERS

    if 'CPUAmpOptimWrapper' in OPTIM_WRAPPERS.module_dict:
        return

    def to_float(out):
        if torch.is_tensor(out):
            return out.float() if out.is_floating_point() else out
        if isinstance(out, (list, tuple)):
            return type(out)(to_float(o) for o in out)
        return out

    @OPTIM_WRAPPERS.register_module()
    class CPUAmpOptimWrapper(OptimWrapper):
        """Autocast covers the backbone and the neck, where the dense FLOPs are; their outputs
        go back to float32 because mmcv's CPU kernels for the heads (nms, RoIAlign) take
        float32 only. A model without backbone/neck runs wholly under autocast."""

        def __init__(self, dtype='bfloat16', **kwargs):
            super().__init__(**kwargs)
            self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

        @contextmanager
        def optim_context(self, model):
            module = getattr(model, 'module', model)
            parts = [getattr(module, name, None) for name in ('backbone', 'neck')]
            parts = [part for part in parts if isinstance(part, torch.nn.Module)]
            if not parts:
                with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
                    yield
                return
            active, handles = [], []

            def enter(mod, args):
                active.append(torch.autocast('cpu', dtype=self.cast_dtype))
                active[-1].__enter__()

            def leave(mod, args, out):
                active.pop().__exit__(None, None, None)
                return to_float(out)

            for part in parts:
                handles.append(part.register_forward_pre_hook(enter))
                handles.append(part.register_forward_hook(leave))
            try:
                with super().optim_context(model):
                    yield
            finally:
                for handle in handles:
                    handle.remove()
                while active:  # a forward that raised inside an autocast region
                    active.pop().__exit__(None, None, None)


_register_cpu_amp_wrapper()


# --------------------------------------------------------------------------------------------
# Exact resume: random-number states travel in the checkpoint (docs/resume.md)
# --------------------------------------------------------------------------------------------
RNG_STATE_KEY = 'rng_state'


def get_rng_state():
    """Python, numpy and torch (CPU and, if initialised, CUDA) generator states, as plain
    data (ints, lists, tensors) that a weights-only torch.load reads without an allowlist."""
    import random

    import numpy as np
    import torch
    version, key, gauss = random.getstate()
    name, np_key, pos, has_gauss, cached = np.random.get_state()
    state = dict(python=dict(version=version, key=list(key), gauss=gauss),
                 numpy=dict(name=name, key=torch.from_numpy(np_key.astype(np.int64)),
                            pos=int(pos), has_gauss=int(has_gauss), cached=float(cached)),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Inverse of :func:`get_rng_state`."""
    import random

    import numpy as np
    import torch
    py = state['python']
    random.setstate((py['version'], tuple(py['key']), py['gauss']))
    nps = state['numpy']
    np.random.set_state((nps['name'], nps['key'].numpy().astype(np.uint32), nps['pos'],
                         nps['has_gauss'], nps['cached']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def checkpoint_seed(path):
    """The `meta.seed` of an mmengine checkpoint (None if it has none)."""
    import zipfile

    import torch
    try:  # mmap: only the pickled metadata is read, not the weights
        checkpoint = torch.load(path, map_location='cpu', weights_only=True,
                                mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001  (reported as a user error with the cause)
        raise UserError(f'checkpoint {path} could not be read ({type(err).__name__}: {err}); '
                        'is the file complete?') from err
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    return (meta or {}).get('seed')


def resume_checkpoint_path(cfg):
    """The file a `resume=True` config will resume from (load_from, else the work dir's
    latest), or None."""
    if not cfg.get('resume'):
        return None
    if cfg.get('load_from'):
        return cfg.load_from
    from mmengine.runner import find_latest_checkpoint
    return find_latest_checkpoint(cfg.work_dir)


def use_checkpoint_seed(cfg):
    """Build the resumed run with the seed the checkpoint was trained with.

    mmengine restores the seed in `Runner.resume`, after the data loaders are built: the
    sampler's shuffling seed and the workers' seeds would still come from the new run's seed
    (a fresh random one when the config sets none). Reading it first makes every part of the
    resumed run use the original seed. Returns the seed (None: nothing to resume)."""
    path = resume_checkpoint_path(cfg)
    if not path or not osp.isfile(str(path)):
        return None
    seed = checkpoint_seed(path)
    if seed is None:
        return None
    randomness = dict(cfg.get('randomness') or {})
    if randomness.get('seed') not in (None, seed):
        print(f'note: resuming with the checkpoint\'s seed {seed} instead of the configured '
              f'{randomness["seed"]}', file=sys.stderr)
    randomness['seed'] = seed
    cfg.randomness = randomness
    return seed


def _register_exact_resume_hook():
    """`ExactResumeHook`: with it a resumed run continues exactly as if never interrupted.

    - Each checkpoint stores the generator states the run continues with (meta.rng_state).
    - On resume they are put back at the point where the uninterrupted run continued: at the
      start of the next epoch (epoch-based loops), or, for iteration-based loops, after
      mmengine has replayed the data loader up to the resumed iteration (the replay consumes
      random numbers of data augmentation) and before the first new batch is loaded.
    - Validation runs between saved generator states (before_val / after_val): it neither
      consumes nor shifts the training's random numbers, so a run that validated at the
      checkpoint and one that resumed from it continue identically.
    """
    from mmengine.hooks import Hook
    from mmengine.registry import HOOKS

    if 'ExactResumeHook' in HOOKS.module_dict:
        return HOOKS.get('ExactResumeHook')

    class _RestoreAfterReplay:
        """Wraps IterBasedTrainLoop's data iterator: `skip` replayed batches, then the saved
        generator states, then the wrapped iterator is put back."""

        def __init__(self, loop, skip, state):
            self.loop, self.inner, self.skip, self.state = loop, loop.dataloader_iterator, skip, state

        def __iter__(self):
            return self

        def __next__(self):
            if self.skip > 0:
                self.skip -= 1
                return next(self.inner)
            set_rng_state(self.state)
            self.loop.dataloader_iterator = self.inner
            return next(self.inner)

    @HOOKS.register_module()
    class ExactResumeHook(Hook):
        priority = 'VERY_LOW'  # after every other hook of the same stage

        def __init__(self):
            self._resume_state = None
            self._resume_iter = None
            self._before_val = None

        def before_save_checkpoint(self, runner, checkpoint):
            # A checkpoint saved during validation (save_best) stores the training's state.
            state = self._before_val if self._before_val is not None else get_rng_state()
            checkpoint.setdefault('meta', {})[RNG_STATE_KEY] = state

        def after_load_checkpoint(self, runner, checkpoint):
            meta = checkpoint.get('meta') or {}
            self._resume_state = meta.get(RNG_STATE_KEY)
            self._resume_iter = meta.get('iter')

        def before_train_epoch(self, runner):
            state, self._resume_state = self._resume_state, None
            if state is None or not runner.iter or runner.iter != self._resume_iter:
                return  # not a resume (load_from, or a checkpoint without generator states)
            loop = runner.train_loop
            if hasattr(loop, 'dataloader_iterator'):  # iteration-based: restore after replay
                loop.dataloader_iterator = _RestoreAfterReplay(loop, runner.iter, state)
            else:
                set_rng_state(state)

        def before_val(self, runner):
            self._before_val = get_rng_state()

        def after_val(self, runner):
            state, self._before_val = self._before_val, None
            if state is not None:
                set_rng_state(state)

    return ExactResumeHook


ExactResumeHook = _register_exact_resume_hook()


def add_exact_resume_hook(runner):
    """Register ExactResumeHook on a built runner (not in the config, so the config the run
    dumps and the checkpoints it writes stay usable without vir_dense)."""
    if not any(type(hook).__name__ == 'ExactResumeHook' for hook in runner.hooks):
        runner.register_hook(ExactResumeHook())
    return runner


# --------------------------------------------------------------------------------------------
# File checks
# --------------------------------------------------------------------------------------------
def check_file(path, what, hint=''):
    if not path or not osp.isfile(str(path)):
        raise UserError(f'{what} {path} not found{(": " + hint) if hint else ""}')
    return str(path)


def check_checkpoint(path, what='checkpoint'):
    """check_file, and the file must be a readable torch checkpoint: a truncated copy (a
    download or a save that stopped early) or another kind of file is one clear message here
    instead of a traceback from deep inside the runner. Types outside the weights-only
    allowlist are not judged here (the loader that follows decides about those)."""
    import pickle
    import zipfile

    import torch
    path = check_file(path, what)
    try:
        torch.load(path, map_location='cpu', weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # noqa: BLE001  (the unpickler raises many kinds on bad bytes)
        if isinstance(err, pickle.UnpicklingError) and (
                'Unsupported global' in str(err) or 'allowed global' in str(err)):
            return path  # complete, with Python objects: for the trusted loader to decide
        raise UserError(_unreadable(what, path, err)) from err
    return path


def _unreadable(what, path, err):
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    size = osp.getsize(path)
    return (f'{what} {path} ({size} bytes) is not a readable torch checkpoint ({first}); '
            'the file may be truncated (a copy, download or save that stopped early) or not '
            'a checkpoint at all')


def _iter_datasets(dataset):
    """The leaf datasets of a dataset config (through Repeat/ClassBalanced/Concat wrappers)."""
    if not isinstance(dataset, dict):
        return
    if isinstance(dataset.get('datasets'), (list, tuple)):
        for child in dataset['datasets']:
            yield from _iter_datasets(child)
    elif isinstance(dataset.get('dataset'), dict):
        yield from _iter_datasets(dataset['dataset'])
    else:
        yield dataset


def _join(root, path):
    return path if not root or osp.isabs(path) else osp.join(root, path)


def _dataset_hint(dataset, root):
    text = str(root or '')
    for marker, command in _SYNTHETIC_HINTS.items():
        if marker in text:
            return (f'the embedded synthetic dataset is written by `{command}` '
                    f'(default root data/{marker}/)')
    hint = _DATASET_HINTS.get(str(dataset.get('type', '')).split('.')[-1], '')
    return (f'{hint} Point the config at your copy with --cfg-options data_root=/path/to/'
            'dataset/ (or edit data_root in the config).').strip()


def check_dataset(dataset, split):
    """Raise UserError if the dataset's root, annotation file or image folders are missing."""
    for leaf in _iter_datasets(dataset):
        root = leaf.get('data_root')
        missing = []
        if root and not osp.isdir(root):
            missing.append(f'data_root {root}')
        else:
            ann_file = leaf.get('ann_file')
            if ann_file:
                ann_path = _join(root, ann_file)
                if not osp.isfile(ann_path):
                    missing.append(f'annotation file {ann_path}')
            prefixes = leaf.get('data_prefix') or {}
            for name, prefix in (prefixes.items() if isinstance(prefixes, dict) else []):
                if prefix and isinstance(prefix, str):
                    folder = _join(root, prefix)
                    if not osp.isdir(folder):
                        missing.append(f'{name} folder {folder}')
        if missing:
            raise UserError(f'{split} dataset not found: no {", no ".join(missing)}. '
                            f'{_dataset_hint(leaf, root)}')


def check_datasets(cfg, splits):
    """Check the datasets of ``splits`` ('train', 'val', 'test') and their evaluators."""
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if not loader or not isinstance(loader, dict):
            continue
        check_dataset(loader.get('dataset'), split)
        evaluators = cfg.get(f'{split}_evaluator')
        evaluators = evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]
        for evaluator in evaluators:
            ann_file = evaluator.get('ann_file') if isinstance(evaluator, dict) else None
            if ann_file and not evaluator.get('format_only') and not osp.isfile(ann_file):
                raise UserError(f'{split} evaluator annotation file {ann_file} not found. '
                                f'{_dataset_hint(loader.get("dataset") or {}, ann_file)}')


def _pretrained_checkpoints(node, path=''):
    """(config path, checkpoint) of every init_cfg=dict(type='Pretrained', checkpoint=...)."""
    if isinstance(node, dict):
        init_cfg = node.get('init_cfg')
        for item in init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]:
            if isinstance(item, dict) and item.get('type') == 'Pretrained' and \
                    isinstance(item.get('checkpoint'), str):
                yield f'{path}.init_cfg' if path else 'init_cfg', item['checkpoint']
        for key, value in node.items():
            if key != 'init_cfg':
                yield from _pretrained_checkpoints(value, f'{path}.{key}' if path else key)
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            yield from _pretrained_checkpoints(item, f'{path}.{i}')


def check_pretrained(cfg):
    """Every local Pretrained checkpoint of the model must exist (URLs and timm/ names pass)."""
    for where, checkpoint in _pretrained_checkpoints(cfg.get('model', {}), 'model'):
        if checkpoint.startswith(('timm/', 'timm:', 'http://', 'https://', 'torchvision://',
                                  'open-mmlab://', 'mmcls://', 'pretrained://')):
            continue
        if not osp.isfile(checkpoint):
            raise UserError(
                f'pretrained weights {checkpoint} not found ({where}). No ImageNet ViR weights '
                'exist: make a warm start from timm ViT/DeiT weights with `python '
                f'tools/convert_checkpoint.py timm/deit_small_patch16_224.fb_in1k {checkpoint} '
                '--arch small` (match --arch to the config), point the config at your file '
                f'with --cfg-options {where}.checkpoint=PATH, or train from random init with '
                f'--cfg-options {where}=None')


# --------------------------------------------------------------------------------------------
# Small helpers for the tools
# --------------------------------------------------------------------------------------------
def default_work_dir(config_path):
    return osp.join('./work_dirs', Path(config_path).stem)


def set_local_rank(local_rank):
    if 'LOCAL_RANK' not in os.environ and local_rank is not None:
        os.environ['LOCAL_RANK'] = str(local_rank)
