"""Loading a whole detector or segmentor checkpoint: strictly, with a report of what differs.

One loader for every tool and API (tools/test.py, tools/infer_*.py, ``load_from`` and
``--resume`` in tools/train.py, ``vir_dense.apis``). mmengine's own ``load_checkpoint`` is not
strict for ``load_from``/``resume`` and only warns, so a checkpoint of another config used to
give a half-random model that evaluated, predicted and trained without a word. Here a misfit
stops with the tensors, the shapes and the likely cause; ``allow_partial=True`` is the explicit
opt-in for loading what fits (e.g. a detector with another number of classes).
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch

from vir_dense.errors import CheckpointError, CheckpointMismatchError

# Tensors whose first dimension is the number of classes (mmseg's decode/auxiliary heads,
# mmdet's box classifier, which has one more row: background).
_CLASS_KEYS = ('decode_head.conv_seg.weight', 'auxiliary_head.conv_seg.weight',
               'roi_head.bbox_head.fc_cls.weight', 'roi_head.mask_head.conv_logits.weight')
_WRAPPER_PREFIX = re.compile(r'^(module\.|_orig_mod\.)')  # DDP / torch.compile wrappers


@dataclass
class ModelCheckpointFit:
    """How a checkpoint's tensors fit a model's state dict."""
    missing: List[str] = field(default_factory=list)        # in the model, not in the file
    unexpected: List[str] = field(default_factory=list)     # in the file, not in the model
    shapes: List[Tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, file, model)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes)


def read_model_checkpoint(path: str, mmap: bool = False) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state dict, meta) of an mmengine checkpoint (or a bare state dict), read weights-only
    (mmengine's own types are allowed by vir_dense.compat). ``mmap``: map the tensors instead
    of reading them (enough to compare names and shapes)."""
    import zipfile

    import vir_dense.compat  # noqa: F401  (allowlist of what mmengine pickles)
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True,
                          mmap=mmap and zipfile.is_zipfile(path))
    except FileNotFoundError:
        raise CheckpointError(f'checkpoint {path} not found') from None
    except Exception as err:  # noqa: BLE001  (unpickling errors have many types)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ''
        raise CheckpointError(f'cannot read checkpoint {path}: {type(err).__name__}: {first}; '
                              'is the file complete?') from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'checkpoint {path} holds a {type(ckpt).__name__}, not a '
                              'state dict')
    state_dict = ckpt.get('state_dict', ckpt)
    state_dict = {_WRAPPER_PREFIX.sub('', k): v for k, v in state_dict.items()
                  if torch.is_tensor(v)}
    return state_dict, dict(ckpt.get('meta') or {})


def model_checkpoint_fit(own: Dict[str, torch.Tensor],
                         loaded: Dict[str, torch.Tensor]) -> ModelCheckpointFit:
    return ModelCheckpointFit(
        missing=[k for k in own if k not in loaded],
        unexpected=[k for k in loaded if k not in own],
        shapes=[(k, tuple(loaded[k].shape), tuple(own[k].shape)) for k in own
                if k in loaded and tuple(loaded[k].shape) != tuple(own[k].shape)])


def load_model_checkpoint(model: torch.nn.Module, path: str, config_name: str = 'the config',
                          allow_partial: bool = False, logger=None) -> dict:
    """Load ``model``'s weights from a checkpoint of the same config; return its meta.

    Missing or unexpected keys or shape mismatches raise :class:`CheckpointMismatchError`
    naming what differs and the likely cause. With ``allow_partial=True`` the tensors that fit
    are loaded, the rest keep their current values, and the same report is logged as a
    warning (``logger``: an mmengine logger name or object; default 'current').
    """
    model = getattr(model, 'module', model)  # DDP
    state_dict, meta = read_model_checkpoint(path)
    own = model.state_dict()
    fit = _judge(path, config_name, state_dict, own, allow_partial, logger)
    if fit.exact:
        model.load_state_dict(state_dict, strict=True)
    else:
        mismatched = {k for k, _, _ in fit.shapes}
        model.load_state_dict({k: v for k, v in state_dict.items()
                               if k in own and k not in mismatched}, strict=False)
    return meta


def check_model_checkpoint(model: torch.nn.Module, path: str, config_name: str = 'the config',
                           allow_partial: bool = False, logger=None) -> ModelCheckpointFit:
    """What :func:`load_model_checkpoint` decides, without loading: for a run whose runner
    loads the file itself (mmengine's ``load_from`` / ``resume``, not strict there)."""
    model = getattr(model, 'module', model)
    state_dict, _ = read_model_checkpoint(path, mmap=True)
    return _judge(path, config_name, state_dict, model.state_dict(), allow_partial, logger)


def _judge(path, config_name, state_dict, own, allow_partial, logger) -> ModelCheckpointFit:
    fit = model_checkpoint_fit(own, state_dict)
    if fit.exact:
        return fit
    message = mismatch_message(path, config_name, state_dict, own, fit)
    if not allow_partial:
        raise CheckpointMismatchError(
            message + '\n  (to load only the tensors that fit, opt in: allow_partial=True; '
            'the tools take --allow-partial)')
    from mmengine.logging import print_log
    loaded = len(own) - len(fit.missing) - len(fit.shapes)
    print_log(f'partial load (allow_partial), {loaded} of {len(own)} tensors from the '
              f'checkpoint:\n{message}', logger=logger or 'current', level=30)
    return fit


def mismatch_message(path, config_name, ckpt, own, fit: ModelCheckpointFit) -> str:
    def sample(items, fmt=str):
        text = ', '.join(fmt(i) for i in items[:4])
        return text + (f', ... ({len(items)} in all)' if len(items) > 4 else '')

    lines = [f'checkpoint {path} does not fit the model of {config_name}']
    lines += [f'  likely cause: {cause}' for cause in _likely_causes(ckpt, own, fit)]
    if fit.shapes:
        lines.append(f'  {len(fit.shapes)} shape mismatches: ' + sample(
            fit.shapes, lambda s: f'{s[0]} {list(s[1])} (checkpoint) vs {list(s[2])} (model)'))
    if fit.missing:
        lines.append(f'  {len(fit.missing)} keys missing from the checkpoint: '
                     f'{sample(fit.missing)}')
    if fit.unexpected:
        lines.append(f'  {len(fit.unexpected)} unexpected keys in the checkpoint: '
                     f'{sample(fit.unexpected)}')
    return '\n'.join(lines)


def _likely_causes(ckpt, own, fit: ModelCheckpointFit) -> List[str]:
    causes = []
    if ckpt and all(not k.startswith(('neck.', 'decode_head.', 'rpn_head.', 'roi_head.'))
                    for k in ckpt) and any(k.startswith(('neck.', 'decode_head.', 'roi_head.'))
                                           for k in own):
        causes.append('a backbone-only file (pretrained weights): use it as '
                      "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...) instead")
    elif {k.split('.')[0] for k in ckpt} != {k.split('.')[0] for k in own}:
        causes.append(f'another kind of model: the checkpoint has '
                      f'{sorted({k.split(".")[0] for k in ckpt})}, the config '
                      f'{sorted({k.split(".")[0] for k in own})}')
    for key in _CLASS_KEYS:
        if key in ckpt and key in own and ckpt[key].shape[0] != own[key].shape[0]:
            causes.append(f'another number of classes: {key} has {ckpt[key].shape[0]} rows in '
                          f'the checkpoint vs {own[key].shape[0]} in the config')
            break
    pos = 'backbone.pos_embed'
    if pos in ckpt and pos in own and ckpt[pos].shape != own[pos].shape:
        causes.append(f'another backbone: {pos} {list(ckpt[pos].shape)} in the checkpoint vs '
                      f'{list(own[pos].shape)} in the config (arch, patch size or img_size '
                      'differ)')
    elif any(k.startswith('backbone.') for k in fit.missing + fit.unexpected):
        causes.append('another backbone depth or layout (backbone keys differ)')
    if not causes:
        causes.append('a checkpoint trained with another config')
    return causes
