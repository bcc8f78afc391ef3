"""Checkpoint files: reading them weights-only, writing them atomically, resolving names
(paths, URLs, ``timm/<model>``).

Knows nothing of the model or of OpenMMLab: it turns a name into a local file and a file into
a plain ``{name: tensor}`` dict, refusing pickles that need arbitrary Python objects; and it
writes the one ViR checkpoint format (``save_vir_checkpoint``) through the one atomic write
(``atomic_write``) that every checkpoint writer of the project uses.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import tempfile
from typing import Dict, Iterator, Mapping, Optional, Tuple, Union

import torch

__all__ = ['read_checkpoint', 'unwrap_state_dict', 'load_checkpoint_file', 'resolve_checkpoint',
           'atomic_write', 'save_vir_checkpoint', 'read_vir_meta']

# Containers that wrap a state dict, plain weights before EMA weights.
_PLAIN_CONTAINERS = ('state_dict', 'model', 'module')
_EMA_CONTAINERS = ('state_dict_ema', 'model_ema', 'ema_state_dict')
_FILE_SUFFIXES = ('.safetensors', '.pth', '.pt', '.bin')
_PICKLE_HELP = (
    'Pretrained files are loaded weights-only (safetensors, or torch.load(weights_only=True)), '
    'because unpickling arbitrary objects can run code. If you trust this file, convert it '
    'once: `python tools/model_converters/convert_checkpoint.py --trust-pickle {path} '
    'converted.safetensors` '
    "(or re-save only its tensors: torch.save(ckpt['state_dict'], 'weights.pth')), then pass "
    'the converted file.')


def read_checkpoint(path: str, map_location='cpu', trust_pickle: bool = False):
    """The raw object of a checkpoint file. Pickles are read weights-only unless
    ``trust_pickle`` (only for files you trust: unpickling can run code)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'pretrained checkpoint not found: {path!r}')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        device = map_location if isinstance(map_location, str) else 'cpu'
        return load_file(path, device=device)
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        # torch raises this for any global outside its weights-only allow-list, malicious
        # (os.system) or merely unusual (an mmengine HistoryBuffer): both are refused.
        found = re.search(r'GLOBAL (\S+)', str(err))
        why = (f'it needs the Python object {found.group(1)!r}, which is not a tensor or a '
               'plain container' if found else _first_line(err))
        raise RuntimeError(f'refused to unpickle {path!r}: {why}.\n'
                           + _PICKLE_HELP.format(path=path)) from err


def _first_line(err: Exception) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def unwrap_state_dict(obj) -> Tuple[Dict[str, torch.Tensor], str]:
    """Return (state dict, container key used or '') of a loaded checkpoint object."""
    used = []
    for _ in range(2):  # {'model': {'state_dict': ...}} is rare but seen
        key = next((k for k in _PLAIN_CONTAINERS + _EMA_CONTAINERS
                    if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
        if key is None:
            break
        obj = obj[key]
        used.append(key)
    if not isinstance(obj, Mapping):
        raise ValueError(f'checkpoint holds a {type(obj).__name__}, not a dict of tensors')
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError('checkpoint contains no tensors (looked at the top level and under '
                         + ', '.join(_PLAIN_CONTAINERS + _EMA_CONTAINERS) + ')')
    return tensors, '.'.join(used)


def load_checkpoint_file(path: Union[str, os.PathLike], map_location='cpu') -> dict:
    """Read a ``.safetensors``/``.pth``/``.pt``/``.bin`` file weights-only; return its state dict.

    Containers (``state_dict``, ``model``, ``module``, then EMA ones) are unwrapped; the plain
    model is preferred over EMA weights. Pickles that need arbitrary globals are refused.
    """
    state_dict, container = unwrap_state_dict(read_checkpoint(os.fspath(path), map_location))
    if container:
        logging.getLogger(__name__).info('%s: using the weights under %r', path, container)
    return state_dict


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def atomic_write(path: Union[str, os.PathLike]) -> Iterator[str]:
    """Yield a temporary path next to ``path``; once the block has written it, the file is
    synced and renamed over ``path``. A writer killed mid-way leaves the previous file intact,
    never a truncated one (a truncated ``latest`` checkpoint would break a resume)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    os.close(handle)
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file 0600; give the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_vir_checkpoint(weights, path: Union[str, os.PathLike],
                        meta: Optional[Mapping] = None) -> str:
    """Write a ViR checkpoint: ``weights`` (a state dict, or a module whose state dict is
    taken) as ``{'state_dict': ..., 'meta': ...}`` in a ``.pth`` file, or as a ``.safetensors``
    file whose metadata holds each ``meta`` value JSON-encoded. The backbone's Pretrained
    init_cfg, timm's ``pretrained_cfg_overlay=dict(file=...)`` and :func:`read_vir_meta` read
    both. ``meta`` values must be JSON-serialisable."""
    path = os.fspath(path)
    state_dict = weights.state_dict() if hasattr(weights, 'state_dict') else weights
    # safetensors refuses views sharing storage (e.g. a sliced pos_embed): store copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    meta = json.loads(json.dumps(dict(meta or {})))  # plain JSON types in both formats
    with atomic_write(path) as tmp:
        if path.endswith('.safetensors'):
            from safetensors.torch import save_file
            save_file(tensors, tmp, metadata={k: json.dumps(v) for k, v in meta.items()})
        else:
            torch.save({'state_dict': tensors, 'meta': meta}, tmp)
    return path


def read_vir_meta(path: Union[str, os.PathLike]) -> dict:
    """The ``meta`` of a file written by :func:`save_vir_checkpoint`. Older safetensors files
    stored some values with ``str()``: a value that is not JSON is returned as its string."""
    path = os.fspath(path)
    if path.endswith('.safetensors'):
        from safetensors import safe_open
        with safe_open(path, framework='pt') as f:
            raw = f.metadata() or {}
        meta = {}
        for key, text in raw.items():
            try:
                meta[key] = json.loads(text)
            except ValueError:
                meta[key] = text
        return meta
    obj = read_checkpoint(path)
    return dict(obj.get('meta') or {}) if isinstance(obj, Mapping) else {}


# --------------------------------------------------------------------------- resolving names


def _download_file(repo_id: Optional[str] = None, filename: Optional[str] = None,
                   url: Optional[str] = None, revision: Optional[str] = None) -> str:
    """Fetch into the usual caches (HF hub cache / torch hub dir). Tests mock this."""
    if repo_id is not None:
        from huggingface_hub import hf_hub_download
        return hf_hub_download(repo_id, filename, revision=revision)
    from torch.hub import download_url_to_file, get_dir
    cache = os.path.join(get_dir(), 'checkpoints')
    os.makedirs(cache, exist_ok=True)
    dst = os.path.join(cache, os.path.basename(url.split('?')[0]))
    if not os.path.isfile(dst):
        download_url_to_file(url, dst, progress=True)
    return dst


def _offline_error(what: str, where: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f'could not download pretrained weights {what} from {where}: '
        f'{type(err).__name__}: {_first_line(err)}\n'
        'This machine may be offline. Download the file on a machine with network access, '
        'copy it here and pass its local path (checkpoint=\'/path/to/weights.safetensors\').')


def resolve_checkpoint(name_or_path: Union[str, os.PathLike]) -> str:
    """Return a local file for a path, an http(s) URL, or ``timm/<model>`` / ``timm:<model>``."""
    name = os.fspath(name_or_path)
    for scheme in ('timm/', 'timm:'):
        if name.startswith(scheme) and not os.path.exists(name):
            return _resolve_timm(name[len(scheme):], name)
    if name.startswith(('http://', 'https://')):
        try:
            return _download_file(url=name)
        except Exception as err:  # noqa: BLE001  (any network failure gets the same advice)
            raise _offline_error(repr(name), 'the URL', err) from err
    path = os.path.expanduser(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'pretrained checkpoint not found: {path!r} (timm weights are named '
            "'timm/<model_name>', e.g. 'timm/vit_small_patch16_224.augreg_in21k_ft_in1k')")
    return path


def _resolve_timm(model_name: str, original: str) -> str:
    from timm.models import get_pretrained_cfg
    try:
        cfg = get_pretrained_cfg(model_name)
    except RuntimeError as err:  # known architecture, unknown tag
        raise ValueError(f'{original!r}: {err}') from err
    if cfg is None:
        raise ValueError(f'{original!r}: timm has no pretrained weights registered under '
                         f'{model_name!r} (see timm.list_pretrained())')
    if getattr(cfg, 'file', None) and os.path.isfile(cfg.file):
        return cfg.file
    attempts = []
    if getattr(cfg, 'hf_hub_id', None):
        repo_id, _, revision = cfg.hf_hub_id.partition('@')
        names = [cfg.hf_hub_filename] if getattr(cfg, 'hf_hub_filename', None) else \
            ['model.safetensors', 'pytorch_model.bin']  # timm's preference order
        for filename in names:
            attempts.append((f'the Hugging Face hub ({repo_id}/{filename})',
                             dict(repo_id=repo_id, filename=filename, revision=revision or None)))
    url = cfg.url[0] if isinstance(getattr(cfg, 'url', None), (tuple, list)) else cfg.url
    if url and url.split('?')[0].endswith(_FILE_SUFFIXES):  # not JAX .npz files
        attempts.append((url, dict(url=url)))
    if not attempts:
        raise ValueError(f'{original!r}: timm lists no download location for these weights')
    errors = []
    for where, kwargs in attempts:
        try:
            return _download_file(**kwargs)
        except Exception as err:  # noqa: BLE001
            errors.append((where, err))
    where, err = errors[0]
    raise _offline_error(repr(original), where, err) from err
