"""Training checkpoints save, load and resume under torch>=2.6; pickles that run code are
refused; what is written is a plain mmengine checkpoint that opens without vir_dense."""
import json
import os
import pickle
import subprocess
import sys

import collections

import pytest
import torch
import torch.nn as nn
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner

import vir_dense  # noqa: F401  (installs the compat layer)
from vir_dense.models.checkpoint_files import load_checkpoint_file


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.linear(inputs)  # default_collate gives (B, 2) inputs and (B,) labels
        if mode == 'loss':
            return {'loss': ((out.squeeze(-1) - labels) ** 2).mean()}
        return out


class ToyDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        x = torch.tensor([index / 8.0, 1.0])
        return dict(inputs=x, labels=x.sum())


def _runner(work_dir, max_iters, resume=False, load_from=None):
    return Runner(
        model=ToyModel(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyDataset(), batch_size=2,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        resume=resume, load_from=load_from, default_scope='mmengine',
        experiment_name=f'toy-{max_iters}-{resume}')


def test_resume_round_trip(tmp_path):
    first = _runner(tmp_path, max_iters=4)
    first.train()
    checkpoint = tmp_path / 'iter_4.pth'
    assert checkpoint.exists()
    saved = torch.load(checkpoint, map_location='cpu')  # weights-only, the torch default
    assert saved['meta']['iter'] == 4 and 'message_hub' in saved

    second = _runner(tmp_path, max_iters=6, resume=True)
    second.train()  # resumes from iter_4 (last_checkpoint) and runs 2 more iterations
    assert second.iter == 6
    resumed = torch.load(tmp_path / 'iter_6.pth', map_location='cpu')
    assert resumed['meta']['iter'] == 6
    # AdamW's step count continued from the first run instead of restarting
    steps = [s['step'] for s in resumed['optimizer']['state'].values()]
    assert all(float(step) == 6 for step in steps)
    # no temporary files left behind by the atomic writer
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.tmp-')]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ('echo pwned > /dev/null',))


def test_pickle_that_runs_code_is_refused_as_pretrained(tmp_path):
    path = tmp_path / 'pretrained.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'evil': _RunsCode()}, path)
    with pytest.raises((RuntimeError, ValueError), match='weights-only'):
        load_checkpoint_file(str(path))
    with pytest.raises(pickle.UnpicklingError, match='posix.system|os.system'):
        torch.load(path)  # the compat layer did not open a hole for arbitrary globals


class _Getattr:
    """A pickle that looks up an attribute with builtins.getattr (as HistoryBuffer's statistics
    methods are pickled), here one that is not a HistoryBuffer statistics method."""

    def __init__(self, owner, name):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return (getattr, (self.owner, self.name))


@pytest.mark.parametrize('owner,name', [(HistoryBuffer, '__init__'),
                                        (HistoryBuffer, '_set_default_statistics'),
                                        (HistoryBuffer, '__class__'),
                                        (collections.OrderedDict, 'fromkeys')])
def test_getattr_in_a_pickle_reaches_only_history_buffer_methods(tmp_path, owner, name):
    path = tmp_path / 'attr.pth'
    torch.save({'x': _Getattr(owner, name)}, path)
    with pytest.raises((pickle.UnpicklingError, RuntimeError), match='getattr|Unsupported'):
        torch.load(path)
    ok = tmp_path / 'ok.pth'
    torch.save({'x': _Getattr(HistoryBuffer, 'mean')}, ok)
    assert torch.load(ok)['x'] is HistoryBuffer.mean


def test_history_buffer_pickles_as_mmengine_writes_it():
    """The compat layer does not change what is written (mmengine's own __getstate__)."""
    assert HistoryBuffer.__getstate__.__module__ == 'mmengine.logging.history_buffer'
    assert HistoryBuffer.__setstate__.__module__ == 'mmengine.logging.history_buffer'
    buffer = HistoryBuffer([1.0, 3.0], [1, 1])
    state = buffer.__getstate__()
    assert state['statistics_methods']['mean'] is HistoryBuffer.mean


FRESH_LOAD = """
import json, sys, torch
ckpt = torch.load(sys.argv[1], map_location='cpu', weights_only=False)
buffer = ckpt['message_hub']['log_scalars']['train/loss']
print(json.dumps(dict(iter=ckpt['meta']['iter'], mean=float(buffer.mean()),
                      weight=ckpt['state_dict']['linear.weight'].tolist(),
                      vir_dense=[m for m in sys.modules if m.startswith('vir_dense')])))
"""


def test_checkpoint_written_with_vir_dense_opens_without_it(tmp_path):
    _runner(tmp_path, max_iters=2).train()
    path = tmp_path / 'iter_2.pth'
    proc = subprocess.run([sys.executable, '-c', FRESH_LOAD, str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['vir_dense'] == []
    ours = torch.load(path)  # weights-only here, through the allowlist
    assert result['iter'] == ours['meta']['iter'] == 2
    assert result['weight'] == ours['state_dict']['linear.weight'].tolist()
    assert result['mean'] == pytest.approx(float(ours['message_hub']['log_scalars'][
        'train/loss'].mean()))
