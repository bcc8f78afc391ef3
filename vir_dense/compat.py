"""Making mmengine 0.10.7 checkpoints load under torch >= 2.6, without unpickling arbitrary code
and without changing what is written.

torch >= 2.6 loads with `weights_only=True`: mmengine's own training checkpoints (resume,
`load_from`, tools/test.py) then fail on the few non-tensor types they hold: the message
hub's `HistoryBuffer` and numpy arrays/scalars. Rather than turning weights-only off (which
would let any downloaded "pretrained" pickle run code), we allow exactly those data types in
the weights-only unpickler. Every load stays weights-only; a pickle that calls `os.system`
or any other function is still refused.

HistoryBuffer pickles its statistics functions as `getattr(HistoryBuffer, 'mean')` (pickle
protocol 2 writes methods that way). Allowing the real `getattr` would open the unpickler to
arbitrary attribute access, so the name `builtins.getattr` is mapped, for the weights-only
unpickler only, to :func:`_history_buffer_getattr`, which returns HistoryBuffer's own public
methods and refuses everything else.

Nothing here changes how checkpoints are *written*: the files are plain mmengine checkpoints
that a fresh interpreter with only torch + mmengine opens (`torch.load(weights_only=False)`,
`mmengine.runner.load_checkpoint`); tests/test_checkpoint_compat.py and
tests/test_det_train.py check that in a process that never imports vir_dense (docs/resume.md).
(An earlier version of this module changed HistoryBuffer's pickled state; files written then
hold a list of names where mmengine expects a dict, and do not load any more: train them again
or re-save them with that older version.)
"""
import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer


def _numpy_safe_globals():
    """numpy types that pickled arrays and scalars reference (data only, no callables).
    numpy 2 pickles them under numpy._core, numpy 1 under numpy.core: both names are allowed."""
    from numpy.core.multiarray import _reconstruct, scalar  # numpy 2: numpy._core alias
    dtype_classes = [type(np.dtype(name)) for name in
                     ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                      'uint64', 'float16', 'float32', 'float64', 'complex64', 'complex128')]
    aliases = [(_reconstruct, 'numpy.core.multiarray._reconstruct'),
               (scalar, 'numpy.core.multiarray.scalar')]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes, *aliases]


def _history_buffer_getattr(obj, name, *default):
    """What `builtins.getattr` means inside a weights-only load: HistoryBuffer's public methods
    (its statistics functions, as mmengine pickles them) and nothing else."""
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_') and \
            callable(vars(HistoryBuffer).get(name)):
        return getattr(HistoryBuffer, name)
    raise RuntimeError(f'weights-only load refused getattr({obj!r}, {name!r}): only '
                       'HistoryBuffer statistics methods may be looked up in a checkpoint')


def mmengine_safe_globals():
    """The allowlist for mmengine training checkpoints (usable with torch.serialization.safe_globals)."""
    return [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr'), *_numpy_safe_globals()]


def allow_mmengine_checkpoint_types():
    """Allow mmengine's checkpoint types in every weights-only torch.load of this process."""
    torch.serialization.add_safe_globals(mmengine_safe_globals())


allow_mmengine_checkpoint_types()
