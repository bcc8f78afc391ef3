"""Checkpoint conversion for ViR, beside the model (timm's `checkpoint_filter_fn` habit).

Sources understood by :func:`convert_to_vir` (detected from the key names):

* this project's timm ViR classifier (``blocks.i.retention.*``): the classifier head is dropped;
* timm ViT / DeiT (``blocks.i.attn.*``): ``attn`` becomes ``retention``, the class (and DeiT
  distillation / register) slots at the front of ``pos_embed`` are removed, and the missing
  LayerScale is filled with ones, which keeps the ViT's function;
* full mmdet / mmseg checkpoints (``backbone.*``): the backbone is kept, neck and heads are
  counted and ignored. A DDP ``module.`` prefix is stripped from any of them.

The position embedding is resampled bicubically when the grids differ. Every conversion ends
in a :class:`CheckpointReport`. Pure state-dict work: nothing here reads files (see
checkpoint_files.py) or knows OpenMMLab (vir_dense.mm.checkpoint loads into a backbone).
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from .archs import label_of_width

__all__ = ['CheckpointReport', 'convert_to_vir', 'vir_shapes', 'infer_vir_shapes',
           'is_vir_pretrained_key']

# Keys a ViR classification model has, minus its head. Anything else in a backbone (a feature
# pyramid, output norms, ...) is newly initialised and never counts as "missing".
_VIR_KEY = re.compile(r'^(patch_embed\.|pos_embed$|cls_token$|blocks\.\d+\.|norm\.)')
_BLOCK = re.compile(r'^blocks\.(\d+)\.')
# Classifier parts of timm models: dropped on purpose, reported as "unused head".
_HEAD = re.compile(r'^(head|head_dist|fc_norm|attn_pool|pre_logits)(\.|$)')
# Wrappers that prefix every key (DDP, torch.compile).
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')

Shape = Tuple[int, ...]
Target = Union[nn.Module, Mapping[str, Union[torch.Tensor, Sequence[int]]]]


def is_vir_pretrained_key(key: str) -> bool:
    """True for the keys of a ViR classifier (without head): what a checkpoint can provide."""
    return bool(_VIR_KEY.match(key))


# --------------------------------------------------------------------------- report


def _ranges(ids: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '{0-2,5}'; a single id stays bare."""
    ids = sorted(set(ids))
    if len(ids) == 1:
        return str(ids[0])
    parts, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None]):
        if b != a + 1:
            parts.append(str(start) if start == a else
                         f'{start},{a}' if a == start + 1 else f'{start}-{a}')
            start = b
    return '{' + ','.join(parts) + '}'


def _compact(keys: Sequence[str], limit: int = 8) -> str:
    """Short summary of a key list: block indices become ranges, whole blocks become '*'."""
    if not keys:
        return 'none'
    entries: List[str] = []  # plain keys in order; '' marks where the blocks go
    by_suffix: Dict[str, List[int]] = OrderedDict()
    for key in keys:
        m = _BLOCK.match(key)
        if m:
            if '' not in entries:
                entries.append('')
            by_suffix.setdefault(key[m.end():], []).append(int(m.group(1)))
        elif key not in entries:
            entries.append(key)
    by_ids: Dict[str, List[str]] = OrderedDict()  # suffixes sharing the same block ids
    for suffix, ids in by_suffix.items():
        by_ids.setdefault(_ranges(ids), []).append(suffix)
    block_parts = []
    for ids, suffixes in by_ids.items():
        if len(suffixes) > 3:
            block_parts.append(f'blocks.{ids}.* ({len(suffixes)} tensors each)')
        else:
            block_parts += [f'blocks.{ids}.{suffix}' for suffix in suffixes]
    parts = [p for entry in entries for p in (block_parts if entry == '' else [entry])]
    more = f' ... (+{len(parts) - limit} more)' if len(parts) > limit else ''
    return ', '.join(parts[:limit]) + more


@dataclass
class CheckpointReport:
    """What a pretrained import did. ``str(report)`` is the table printed by loader and tool."""
    source: str = ''
    source_format: str = ''
    container: str = ''
    num_expected: int = 0                                   # pretrained-able tensors of target
    loaded: List[str] = field(default_factory=list)         # copied from the checkpoint
    filled: Dict[str, str] = field(default_factory=dict)    # key -> how it was filled
    resized: Dict[str, str] = field(default_factory=dict)   # key -> '14x14 -> 32x32'
    missing: List[str] = field(default_factory=list)        # pretrained-able, not provided
    unexpected: List[str] = field(default_factory=list)     # in checkpoint, no home in target
    unused_head: List[str] = field(default_factory=list)    # classifier parts, dropped
    ignored_non_backbone: int = 0                           # neck/head tensors of mm files
    notes: List[str] = field(default_factory=list)

    @property
    def num_loaded(self) -> int:
        """Pretrained-able tensors that got a value (copied or filled)."""
        return self.num_expected - len(self.missing)

    @property
    def fraction(self) -> float:
        return self.num_loaded / self.num_expected if self.num_expected else 0.0

    def __str__(self) -> str:
        n_filled = len(self.filled)
        rows = [
            ('source', f'{self.source_format or "unknown"}'
                       + (f' [container {self.container!r}]' if self.container else '')),
            ('loaded', f'{self.num_loaded} of {self.num_expected} backbone tensors '
                       f'({100 * self.fraction:.1f}%)'
                       + (f', {n_filled} of them filled' if n_filled else '')),
        ]
        for key, how in self.resized.items():
            rows.append(('resized', f'{key} {how}'))
        for how in sorted(set(self.filled.values())):
            keys = [k for k, v in self.filled.items() if v == how]
            rows.append(('filled', f'{_compact(keys)} = {how}'))
        rows += [
            ('missing', _compact(self.missing)),
            ('unexpected', _compact(self.unexpected)),
            ('unused head', _compact(self.unused_head)),
        ]
        if self.ignored_non_backbone:
            rows.append(('ignored', f'{self.ignored_non_backbone} non-backbone tensors '
                                    '(neck/heads of a detector/segmentor checkpoint)'))
        rows += [('note', note) for note in self.notes]
        width = max(len(name) for name, _ in rows)
        lines = [f'Pretrained ViR weights from {self.source or "<state dict>"}']
        lines += [f'  {name:<{width}} : {text}' for name, text in rows]
        return '\n'.join(lines)


# --------------------------------------------------------------------------- conversion


def _strip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _target_shapes(target: Target) -> Tuple[Dict[str, Shape], List[str]]:
    """(shape of every state-dict entry, pretrained-able parameter names) of the target."""
    if isinstance(target, nn.Module):
        shapes = {k: tuple(v.shape) for k, v in target.state_dict().items()}
        # Parameters only: buffers (e.g. fixed decay tables) are recomputed, never "missing".
        params = [k for k, _ in target.named_parameters()]
    else:
        shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)
                  for k, v in target.items()}
        params = list(shapes)
    return shapes, params


def _target_grid(target: Target, num_tokens: int, grid) -> Optional[Tuple[int, int]]:
    """(rows, cols) of the target's pos_embed: explicit, from the module, or square."""
    if grid is None and isinstance(target, nn.Module):
        for owner, attr in ((target, 'grid_size'), (target, 'grid'),
                            (getattr(target, 'patch_embed', None), 'grid_size')):
            value = getattr(owner, attr, None) if owner is not None else None
            if isinstance(value, (tuple, list)) and len(value) == 2:
                grid = value
                break
    if grid is not None:
        grid = (int(grid[0]), int(grid[1]))
        if grid[0] * grid[1] != num_tokens:
            raise ValueError(f'grid {grid} does not fit the model pos_embed ({num_tokens} tokens)')
        return grid
    side = math.isqrt(num_tokens)
    return (side, side) if side * side == num_tokens else None


def _split_prefix_slots(pos: torch.Tensor, slots: int) -> Tuple[torch.Tensor, int]:
    """Drop ``slots`` tokens at the front of a ViT pos_embed if that leaves a square grid."""
    n = pos.shape[1]
    for k in (slots, 0):  # timm's no_embed_class models (DeiT III) have no slots at all
        side = math.isqrt(max(n - k, 0))
        if k <= n and side * side == n - k:
            return pos[:, k:], k
    raise ValueError(f'cannot infer the checkpoint grid: pos_embed has {n} tokens, which is '
                     f'not a square (with or without {slots} class/extra slots at the front)')


def _resample(pos: torch.Tensor, grid: Tuple[int, int]) -> Tuple[torch.Tensor, str]:
    n = pos.shape[1]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f'cannot infer the checkpoint grid: pos_embed has {n} patch tokens, '
                         'which is not a square; convert it with an explicit grid first')
    out = resample_abs_pos_embed(pos.float(), new_size=list(grid), old_size=[side, side],
                                 num_prefix_tokens=0, interpolation='bicubic')
    return out.to(pos.dtype), f'{side}x{side} -> {grid[0]}x{grid[1]}'


def _detect(keys) -> str:
    if any(re.match(r'blocks\.\d+\.retention\.', k) for k in keys):
        return 'vir'
    if any(re.match(r'blocks\.\d+\.attn\.', k) for k in keys):
        return 'vit'
    return 'unknown'


def _embed_dim(shapes: Mapping[str, Shape]) -> Optional[int]:
    if 'patch_embed.proj.weight' in shapes:
        return shapes['patch_embed.proj.weight'][0]
    for key in ('cls_token', 'pos_embed', 'norm.weight'):
        if key in shapes:
            return shapes[key][-1]
    return None


def _mismatch_cause(ckpt: Mapping[str, Shape], model: Mapping[str, Shape]) -> str:
    d_ckpt, d_model = _embed_dim(ckpt), _embed_dim(model)
    if d_ckpt and d_model and d_ckpt != d_model:
        return (f'the checkpoint has embed dim {d_ckpt} ({label_of_width(d_ckpt)}), the model '
                f'{d_model} ({label_of_width(d_model)}): weights for another model size')
    key = 'patch_embed.proj.weight'
    if key in ckpt and key in model and ckpt[key] != model[key]:
        return f'patch/channels {list(ckpt[key][1:])} in the checkpoint vs {list(model[key][1:])}'
    if any('mlp.fc1' in k and ckpt[k] != model.get(k) for k in ckpt if k in model):
        return 'a different MLP ratio'
    return 'a checkpoint for a different architecture or configuration'


_FORMATS = {'vir': 'timm ViR', 'vit': 'timm ViT/DeiT (attn -> retention)',
            'unknown': 'unrecognised layout (names used as they are)'}


def _normalise(state_dict: Mapping[str, torch.Tensor], prefix: str, report: CheckpointReport):
    """Strip wrapper / sub-model prefixes, rename to ViR names, drop classifier parts and the
    front slots of a ViT pos_embed. Returns (state dict, source format)."""
    sd = dict(state_dict)
    for wrap in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(wrap) for k in sd):
            sd = _strip(sd, wrap)
            report.notes.append(f'stripped wrapper prefix {wrap!r}')
    mm = ''
    if prefix or any(k.startswith('backbone.') for k in sd):
        prefix = prefix or 'backbone.'
        kept = _strip(sd, prefix)
        report.ignored_non_backbone = len(sd) - len(kept)
        mm = f' inside an mm checkpoint (prefix {prefix!r})'
        sd = kept
    fmt = _detect(sd)
    report.source_format = _FORMATS[fmt] + mm

    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if _HEAD.match(key) or key in ('dist_token', 'reg_token'):
            report.unused_head.append(key)
            continue
        if fmt == 'vit':
            key = re.sub(r'^(blocks\.\d+\.)attn\.', r'\1retention.', key)
        out[key] = value
    if fmt == 'vit' and 'pos_embed' in out:
        slots = sum(1 for t in ('cls_token', 'dist_token') if t in sd)
        slots += sd['reg_token'].shape[1] if 'reg_token' in sd else 0
        out['pos_embed'], removed = _split_prefix_slots(out['pos_embed'], slots)
        if removed:
            names = 'class-token slot' if removed == 1 else f'{removed} class/extra-token slots'
            report.notes.append(f'{names} at the front of pos_embed removed '
                                '(ViR: patches only, class token last without position)')
    return out, fmt


def convert_to_vir(state_dict: Mapping[str, torch.Tensor], target: Target, *,
                   grid: Optional[Sequence[int]] = None, prefix: str = '',
                   is_pretrained_key: Callable[[str], bool] = is_vir_pretrained_key,
                   source: str = '') -> Tuple[Dict[str, torch.Tensor], CheckpointReport]:
    """Map a ViR / ViT / DeiT / mm checkpoint onto the names and shapes of ``target``.

    ``target`` is the backbone module or a ``{name: shape}`` mapping; ``grid`` is the target's
    (rows, cols) patch grid (else read from the module's ``grid_size``, else assumed square).
    ``prefix`` selects and strips a sub-model of the checkpoint (mmengine's ``Pretrained``
    meaning, e.g. ``'backbone.'``; detected automatically for mm checkpoints).
    Raises ``ValueError`` for shape mismatches other than the position embedding.
    """
    report = CheckpointReport(source=source)
    out, fmt = _normalise(state_dict, prefix, report)
    shapes, params = _target_shapes(target)
    expected = [k for k in params if is_pretrained_key(k)]
    report.num_expected = len(expected)
    _note_depth(report, out, shapes)

    if 'pos_embed' in out and 'pos_embed' in shapes:
        pos, n_target = out['pos_embed'], shapes['pos_embed'][1]
        # Equal token counts are taken as the same grid (e.g. a converted non-square ViR file).
        if pos.shape[1] != n_target:
            tgrid = _target_grid(target, n_target, grid)
            if tgrid is None:
                raise ValueError(f'model pos_embed has {n_target} tokens, not a square grid: '
                                 'pass grid=(rows, cols) (or give the module a grid_size)')
            out['pos_embed'], report.resized['pos_embed'] = _resample(pos, tgrid)

    if fmt == 'vit':  # fill what a ViT lacks with the values that keep its function
        blocks = {int(m.group(1)) for m in map(_BLOCK.match, out) if m}
        for key in expected:
            m = re.match(r'^blocks\.(\d+)\.(ls[12]\.gamma|retention\.qkv\.bias)$', key)
            if not m or key in out or int(m.group(1)) not in blocks:
                continue
            if m.group(2).startswith('ls'):
                out[key] = torch.ones(shapes[key])
                report.filled[key] = '1 (ViT has no LayerScale: identity, as in the ViT)'
            else:
                out[key] = torch.zeros(shapes[key])
                report.filled[key] = '0 (checkpoint has no qkv bias: as in the ViT)'

    mismatched = [(k, tuple(v.shape), shapes[k]) for k, v in out.items()
                  if k in shapes and tuple(v.shape) != shapes[k]]
    if mismatched:
        cause = _mismatch_cause({k: tuple(v.shape) for k, v in out.items()}, shapes)
        lines = [f'  {k}: checkpoint {list(c)} vs model {list(m)}' for k, c, m in mismatched[:8]]
        if len(mismatched) > 8:
            lines.append(f'  ... and {len(mismatched) - 8} more')
        raise ValueError(f'pretrained weights {source} do not fit the model ({len(mismatched)} '
                         f'shape mismatches); likely cause: {cause}\n' + '\n'.join(lines))

    report.unexpected = [k for k in out if k not in shapes]
    out = {k: v for k, v in out.items() if k in shapes}
    report.loaded = [k for k in out if k not in report.filled]
    report.missing = [k for k in expected if k not in out]
    return out, report


def vir_shapes(embed_dim: int, depth: int, grid: Sequence[int], patch_size: int = 16,
               in_chans: int = 3, mlp_hidden: Optional[int] = None) -> Dict[str, Shape]:
    """State-dict shapes of a ViR backbone (design.md names), for targets without a module."""
    d, h = embed_dim, mlp_hidden or 4 * embed_dim
    shapes = {'patch_embed.proj.weight': (d, in_chans, patch_size, patch_size),
              'patch_embed.proj.bias': (d,), 'pos_embed': (1, grid[0] * grid[1], d),
              'cls_token': (1, 1, d)}
    for i in range(depth):
        b = f'blocks.{i}.'
        shapes.update({
            b + 'norm1.weight': (d,), b + 'norm1.bias': (d,),
            b + 'retention.qkv.weight': (3 * d, d), b + 'retention.qkv.bias': (3 * d,),
            b + 'retention.proj.weight': (d, d), b + 'retention.proj.bias': (d,),
            b + 'ls1.gamma': (d,), b + 'norm2.weight': (d,), b + 'norm2.bias': (d,),
            b + 'mlp.fc1.weight': (h, d), b + 'mlp.fc1.bias': (h,),
            b + 'mlp.fc2.weight': (d, h), b + 'mlp.fc2.bias': (d,), b + 'ls2.gamma': (d,)})
    shapes.update({'norm.weight': (d,), 'norm.bias': (d,)})
    return shapes


def infer_vir_shapes(state_dict: Mapping[str, torch.Tensor], prefix: str = '',
                     grid: Optional[Sequence[int]] = None, embed_dim: Optional[int] = None,
                     depth: Optional[int] = None) -> Tuple[Dict[str, Shape], Tuple[int, int]]:
    """ViR shapes matching a checkpoint (any supported source); explicit values override.

    Returns (shapes, grid). The grid defaults to the checkpoint's own (square) grid."""
    sd, _ = _normalise(state_dict, prefix, CheckpointReport())
    if 'patch_embed.proj.weight' not in sd:
        raise ValueError('checkpoint has no patch_embed.proj.weight: not a ViT/ViR backbone')
    d_ckpt, in_chans, patch, _ = sd['patch_embed.proj.weight'].shape
    fc1 = sd.get('blocks.0.mlp.fc1.weight')
    if grid is None:
        n = sd['pos_embed'].shape[1] if 'pos_embed' in sd else 0
        side = math.isqrt(n)
        if not n or side * side != n:
            raise ValueError(f'cannot infer the grid from a pos_embed of {n} tokens: give it')
        grid = (side, side)
    grid = (int(grid[0]), int(grid[1]))
    shapes = vir_shapes(embed_dim or d_ckpt, depth or _depth(sd), grid, patch, in_chans,
                        fc1.shape[0] if fc1 is not None and not embed_dim else None)
    return shapes, grid


def _depth(keys) -> int:
    ids = [int(m.group(1)) for m in map(_BLOCK.match, keys) if m]
    return max(ids) + 1 if ids else 0


def _note_depth(report: CheckpointReport, sd, shapes) -> None:
    d_ckpt, d_model = _depth(sd), _depth(shapes)
    if d_ckpt and d_model and d_ckpt != d_model:
        report.notes.append(f'depth differs: checkpoint has {d_ckpt} blocks, model {d_model}')
