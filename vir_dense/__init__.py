"""vir_dense: ViR backbones for mmdetection / mmsegmentation, and ViR models for timm.

Importing the package registers everything (configs use
``custom_imports = dict(imports=['vir_dense'], allow_failed_imports=False)``):
the timm models (`timm.create_model('vir_small_patch16_224')`), the `ViR` backbone and
`SimpleFeaturePyramid` neck in mmdet's and mmseg's MODELS, and the
`ViRLayerDecayOptimizerConstructor`.
"""
from . import compat  # noqa: F401  (torch>=2.6 checkpoint loading for mmengine; see compat.py)
from . import models  # noqa: F401
from . import mm  # noqa: F401

__version__ = '0.1.0'
