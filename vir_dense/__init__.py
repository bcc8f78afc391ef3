"""vir_dense: ViR backbones for mmdetection / mmsegmentation, and ViR models for timm.

Importing the package registers everything (configs use
``custom_imports = dict(imports=['vir_dense'], allow_failed_imports=False)``).
"""
from . import compat  # noqa: F401  (torch>=2.6 checkpoint loading for mmengine; see compat.py)

__version__ = '0.1.0'
