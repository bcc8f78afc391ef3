"""Exact resume: a resumed run continues as if it had never been interrupted (docs/resume.md).

The random-number states travel in the checkpoint (``meta.rng_state``, plain data that a
weights-only ``torch.load`` reads), the resumed run is built with the checkpoint's seed, and
:class:`ExactResumeHook` puts the states back where the uninterrupted run continued.
"""
import os.path as osp
import warnings

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from vir_dense.errors import CheckpointError

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
        raise CheckpointError(f'checkpoint {path} could not be read ({type(err).__name__}: {err}); '
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
        warnings.warn(f'resuming with the checkpoint\'s seed {seed} instead of the configured '
                      f'{randomness["seed"]}', stacklevel=2)
    randomness['seed'] = seed
    cfg.randomness = randomness
    return seed


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


@HOOKS.register_module(force=True)
class ExactResumeHook(Hook):
    """With it a resumed run continues exactly as if never interrupted.

    - Each checkpoint stores the generator states the run continues with (meta.rng_state).
    - On resume they are put back at the point where the uninterrupted run continued: at the
      start of the next epoch (epoch-based loops), or, for iteration-based loops, after
      mmengine has replayed the data loader up to the resumed iteration (the replay consumes
      random numbers of data augmentation) and before the first new batch is loaded.
    - Validation runs between saved generator states (before_val / after_val): it neither
      consumes nor shifts the training's random numbers, so a run that validated at the
      checkpoint and one that resumed from it continue identically.
    """
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


def add_exact_resume_hook(runner):
    """Register ExactResumeHook on a built runner (not in the config, so the config the run
    dumps and the checkpoints it writes stay usable without vir_dense)."""
    if not any(type(hook).__name__ == 'ExactResumeHook' for hook in runner.hooks):
        runner.register_hook(ExactResumeHook())
    return runner
