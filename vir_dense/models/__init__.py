"""timm models; importing registers them with `timm.create_model`."""
from .vir import ARCHS, Block, MultiHeadRetention, ViRTrunk, VisionRetention, run_blocks  # noqa: F401
