"""timm models; importing registers them with `timm.create_model`."""
from .archs import ARCHS, VARIANTS, Arch  # noqa: F401
from .vir import Block, MultiHeadRetention, ViRTrunk, VisionRetention, run_blocks  # noqa: F401
