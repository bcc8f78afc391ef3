"""OpenMMLab side. Importing this is the one registration point of the project's modules:
the ViR backbone and SimpleFeaturePyramid neck (mmdet's and mmseg's MODELS), the layer-decay
optimizer constructor, CPUAmpOptimWrapper (mmengine's OPTIM_WRAPPERS), ExactResumeHook and
RankZeroLoggerHook (mmengine's HOOKS), and the atomic file backend for local paths."""
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.fileio import register_backend
from mmseg.registry import MODELS as MMSEG_MODELS

from vir_dense import compat  # noqa: F401  (mmengine checkpoints under torch's weights-only load)

from .amp import CPUAmpOptimWrapper
from .backbone import ViR
from .file_backend import AtomicLocalBackend
from .layer_decay import ViRLayerDecayOptimizerConstructor
from .logger_hook import RankZeroLoggerHook
from .neck import SimpleFeaturePyramid
from .resume import ExactResumeHook

for _registry in (MMDET_MODELS, MMSEG_MODELS):
    for _module in (ViR, SimpleFeaturePyramid):
        # force: re-importing (e.g. importlib.reload in a notebook) must not fail.
        _registry.register_module(module=_module, force=True)
register_backend('local', AtomicLocalBackend, force=True)

__all__ = ['CPUAmpOptimWrapper', 'ExactResumeHook', 'RankZeroLoggerHook', 'SimpleFeaturePyramid',
           'ViR', 'ViRLayerDecayOptimizerConstructor']
