"""Training checkpoints save, load and resume under torch>=2.6; pickles that run code are refused."""
import os

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModel
from mmengine.runner import Runner

import vir_dense  # noqa: F401  (installs the compat layer)
from vir_dense.mm.checkpoint import load_checkpoint_file


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
    with pytest.raises(Exception, match='os.system|system|Unsupported global'):
        torch.load(path)  # the compat layer did not open a hole for arbitrary globals
