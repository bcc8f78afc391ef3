"""vir_dense: ViR backbones for mmdetection / mmsegmentation, and ViR models for timm.

Importing the package registers everything (configs use
``custom_imports = dict(imports=['vir_dense'], allow_failed_imports=False)``):
the timm models (`timm.create_model('vir_small_patch16_224')`, from ``vir_dense.models``,
which imports no OpenMMLab code) and the OpenMMLab modules (``vir_dense.mm``: the `ViR`
backbone, the neck, the layer-decay constructor, the CPU AMP wrapper, the exact-resume hook).
"""
from . import models  # noqa: F401
from . import mm  # noqa: F401

__version__ = '0.1.0'
