"""The ViR model sizes: the one table that the timm models, the OpenMMLab backbone
(`arch='small'`), the checkpoint converter and tools/model_converters/convert_checkpoint.py
all read."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Arch:
    """One ViR size (the MLP ratio is 4 and the patch size a choice of the variant)."""
    embed_dim: int
    depth: int
    num_heads: int
    label: str  # how messages name it


ARCHS = {
    'tiny': Arch(192, 12, 3, 'ViR-T'),  # ours, for fast experiments
    'small': Arch(384, 12, 6, 'ViR-S'),
    'base': Arch(768, 12, 12, 'ViR-B'),
    'large': Arch(1024, 24, 16, 'ViR-L'),
}

VARIANTS = {  # the registered timm models: name -> (size in ARCHS, patch size)
    'vir_tiny_patch16_224': ('tiny', 16),
    'vir_small_patch16_224': ('small', 16),
    'vir_base_patch16_224': ('base', 16),
    'vir_large_patch16_224': ('large', 16),
    'vir_large_patch14_224': ('large', 14),
}


def variant_kwargs(variant):
    """ViRTrunk keyword arguments (patch_size, embed_dim, depth, num_heads) of a timm variant."""
    size, patch_size = VARIANTS[variant]
    arch = ARCHS[size]
    return dict(patch_size=patch_size, embed_dim=arch.embed_dim, depth=arch.depth,
                num_heads=arch.num_heads)


def label_of_width(embed_dim):
    """'ViR-S' for 384, ...; '?' for a width no ViR size has."""
    return next((a.label for a in ARCHS.values() if a.embed_dim == embed_dim), '?')
