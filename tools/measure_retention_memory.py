#!/usr/bin/env python
"""Transient memory of one chunkwise retention call vs the docstring's formula.

    .venv/bin/python tools/measure_retention_memory.py [--sizes 1024 2048] [--chunk 1024]

Each (size, mask) runs in a fresh child: q, k, v for ViR-S's 6 heads of dim 64 on the size/16
patch grid (+ class token) are built first, then the peak RSS of one forward call (no grad)
minus the RSS before it is the operator's transient peak. The prediction is
`vir_dense.ops.retention.chunkwise.transient_elements` x 4 bytes.
"""
import argparse
import json
import sys

from benchlib import MALLOC_ENV, MIB, emit, failure, launch, reset_peak_rss, status_bytes


def child(cfg):
    import torch
    from vir_dense.ops.retention import decay_gammas, retention
    from vir_dense.ops.retention.chunkwise import transient_elements
    torch.set_num_threads(1)
    side = cfg['size'] // 16
    q, k, v = (torch.randn(1, 6, side * side + 1, 64) for _ in range(3))
    gamma = decay_gammas(6)
    kwargs = dict(mask=cfg['mask'], mode='chunkwise', grid=(side, side), cls_token=True,
                  chunk_size=cfg['chunk'], gamma=gamma)
    with torch.no_grad():
        retention(q[:, :, :2 * side + 1], k[:, :, :2 * side + 1], v[:, :, :2 * side + 1],
                  **dict(kwargs, grid=(2, side)))  # warm the allocator, not this geometry
        base = status_bytes('VmRSS')
        reset_peak_rss()
        retention(q, k, v, **kwargs)
        peak = status_bytes('VmHWM')
    predicted = transient_elements(1, 6, side + 1, side, 64, cfg['chunk'] // side,
                                   cfg['mask'].startswith('causal')) * 4
    emit(status='ok', measured=peak - base, predicted=predicted)


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument('--sizes', type=int, nargs='+', default=[1024, 2048])
    parser.add_argument('--chunk', type=int, default=1024)
    parser.add_argument('--default-malloc', action='store_true',
                        help="keep glibc's mmap threshold: every large tensor is its own "
                             'mapping, returned when freed, so RSS follows the live tensors')
    args = parser.parse_args(argv)
    print('| size | mask | measured MiB | formula MiB |\n|---|---|---|---|')
    for size in args.sizes:
        for mask in ('bidirectional_2d', 'causal_2d'):
            records, code, err = launch(__file__, 'run', dict(size=size, mask=mask,
                                                              chunk=args.chunk), 900,
                                        env=None if args.default_malloc else MALLOC_ENV)
            r = records[-1] if records else failure(code, err, 900)
            if r['status'] != 'ok':
                print(f'| {size}² | {mask} | {r["note"]} | |')
                continue
            print(f'| {size}² | {mask} | {r["measured"] / MIB:,.0f} | '
                  f'{r["predicted"] / MIB:,.0f} |', flush=True)


if __name__ == '__main__':
    if sys.argv[1:2] == ['--_child']:
        child(json.loads(sys.argv[3]))
    else:
        main(sys.argv[1:])
