"""OpenMMLab side: importing this registers the ViR backbone, the SimpleFeaturePyramid neck and
the layer-decay optimizer constructor in mmdet's and mmseg's registries."""
from mmdet.registry import MODELS as MMDET_MODELS
from mmseg.registry import MODELS as MMSEG_MODELS

from .backbone import ViR
from .layer_decay import ViRLayerDecayOptimizerConstructor
from .neck import SimpleFeaturePyramid

for _registry in (MMDET_MODELS, MMSEG_MODELS):
    for _module in (ViR, SimpleFeaturePyramid):
        # force: re-importing (e.g. importlib.reload in a notebook) must not fail.
        _registry.register_module(module=_module, force=True)

__all__ = ['SimpleFeaturePyramid', 'ViR', 'ViRLayerDecayOptimizerConstructor']
