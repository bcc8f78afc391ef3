"""Making mmengine 0.10.7 checkpoints work with torch >= 2.6, without unpickling arbitrary code.

torch >= 2.6 loads with `weights_only=True`: mmengine's own training checkpoints (resume,
`load_from`, tools/test.py) then fail on the few non-tensor types they hold: the message
hub's `HistoryBuffer` and numpy arrays/scalars. Rather than turning weights-only off (which
would let any downloaded "pretrained" pickle run code), we allow exactly those data types in
the weights-only unpickler. Every load stays weights-only; a pickle that calls `os.system`
or any other function is still refused.

HistoryBuffer also pickles its statistics functions, as `getattr(HistoryBuffer, 'mean')`;
allowing `getattr` would open the unpickler to arbitrary attribute access, so checkpoints
written here store the functions' *names* and loading looks them up again. (Checkpoints
written by plain mmengine with torch >= 2.6 hold `getattr`; re-save them from a trusted
environment with `weights_only=False` if needed.)

Checkpoints are also written atomically: mmengine's local file backend writes in place, so a
run killed mid-save would leave a truncated `latest` checkpoint that breaks `--resume`.
"""
import os
import tempfile

import numpy as np
import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging.history_buffer import HistoryBuffer


def _numpy_safe_globals():
    """numpy types that pickled arrays and scalars reference (data only, no callables)."""
    from numpy.core.multiarray import _reconstruct, scalar  # numpy 2: numpy._core alias
    dtype_classes = [type(np.dtype(name)) for name in
                     ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                      'uint64', 'float16', 'float32', 'float64', 'complex64', 'complex128')]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def _history_buffer_getstate(self):
    state = dict(self.__dict__)
    state['statistics_methods'] = sorted(type(self)._statistics_methods)  # names only
    return state


def _history_buffer_setstate(self, state):
    state = dict(state)
    methods = state.pop('statistics_methods', ())
    self._set_default_statistics()
    if isinstance(methods, dict):  # written by plain mmengine (trusted, loaded without us)
        self._statistics_methods.update(methods)
    else:
        unknown = [name for name in methods if name not in self._statistics_methods]
        if unknown:  # custom statistics must be registered (imported) before loading
            raise KeyError(f'HistoryBuffer statistics {unknown} are not registered; import '
                           'the module that calls HistoryBuffer.register_statistics first')
    self.__dict__.update(state)


def allow_mmengine_checkpoint_types():
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    HistoryBuffer.__setstate__ = _history_buffer_setstate
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_safe_globals()])


class AtomicLocalBackend(LocalBackend):
    """LocalBackend whose writes go to a temporary file first, then replace the target."""

    def _atomic_write(self, data, filepath, mode):
        filepath = str(filepath)
        directory = os.path.dirname(os.path.abspath(filepath))
        os.makedirs(directory, exist_ok=True)
        handle, tmp_path = tempfile.mkstemp(prefix='.tmp-', dir=directory)
        try:
            with os.fdopen(handle, mode) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_path, filepath)
        except BaseException:
            if os.path.exists(tmp_path):
                os.remove(tmp_path)
            raise

    def put(self, obj, filepath):
        self._atomic_write(obj, filepath, 'wb')

    def put_text(self, obj, filepath, encoding='utf-8'):
        self._atomic_write(obj.encode(encoding), filepath, 'wb')


allow_mmengine_checkpoint_types()
register_backend('local', AtomicLocalBackend, force=True)
