#!/usr/bin/env python
"""Transient memory of one chunkwise retention call vs the docstring's formula.

    .venv/bin/python tools/analysis_tools/measure_retention_memory.py [--sizes 1024 2048 4096] \\
        [--chunk 256] [--malloc default|live|raised]

Each (size, mask) runs in a fresh child: q, k, v for ViR-S's 6 heads of dim 64 on the size/16
patch grid (+ class token), slices of one projection as in the model, are built first and one
call builds the geometry's constants (tile indices, masks: kept per geometry); then the peak
RSS of the next forward call (no grad) minus the RSS before it is the operator's transient
peak. The prediction is
`vir_dense.ops.retention.chunkwise.transient_elements` x 4 bytes, at the geometry the operator
itself uses (its `make_layout` grid, its `tile_shape`). --malloc: glibc's default settings
(tensors under its dynamic mmap threshold, up to 32 MB, stay in the heap, which keeps freed
holes), 'live' (mmap threshold 64 KiB: every tensor is its own mapping, returned when freed, so
RSS follows the live tensors) or 'raised' (freed pages are kept and reused).

    .venv/bin/python tools/analysis_tools/measure_retention_memory.py --quick     # 256² only

--budgets 64 128 adds rows with memory_budget (MiB): the operator then runs in the slices that
`slices_for_budget` picks, and the prediction is the formula at those slices.
"""
import argparse
import json
import sys

from benchlib import (MALLOC_ENV, MIB, add_output_args, emit, failure, launch,
                      markdown_table, reset_peak_rss, status_bytes, write_outputs)


MALLOC_MODES = {'default': None, 'live': {'MALLOC_MMAP_THRESHOLD_': str(1 << 16)},
                'raised': MALLOC_ENV}


def child(cfg):
    import torch
    from vir_dense.ops.retention import decay_gammas, make_layout, retention
    from vir_dense.ops.retention.chunkwise import slices_for_budget, transient_elements
    torch.set_num_threads(1)
    side = cfg['size'] // 16
    # q, k, v as the model makes them: (B, H, N, d) views of one (B, N, 3, H, d) projection
    projection = torch.randn(1, side * side + 1, 3, 6, 64)
    q, k, v = projection.permute(2, 0, 3, 1, 4).unbind(0)
    gamma = decay_gammas(6)
    kwargs = dict(mask=cfg['mask'], mode='chunkwise', grid=(side, side), cls_token=True,
                  chunk_size=cfg['chunk'], gamma=gamma, memory_budget=cfg.get('budget'))
    with torch.no_grad():
        retention(q, k, v, **kwargs)  # builds this geometry's constants (kept per geometry)
        base = status_bytes('VmRSS')
        reset_peak_rss()
        retention(q, k, v, **kwargs)
        peak = status_bytes('VmHWM')
    layout = make_layout(cfg['mask'], q.shape[-2], (side, side), cls_token=True)
    geometry = (1, 6, layout.grid_rows, layout.cols, 64, cfg['chunk'],
                cfg['mask'].startswith('causal'))
    slices = (1, 1) if cfg.get('budget') is None else slices_for_budget(cfg['budget'], *geometry)
    predicted = transient_elements(*geometry, *slices) * 4
    emit(status='ok', measured=peak - base, predicted=predicted, slices=list(slices))


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[1024, 2048, 4096])
    parser.add_argument('--chunk', type=int, default=256, help='cells per tile')
    parser.add_argument('--budgets', type=float, nargs='*', default=[], metavar='MIB',
                        help='also measure bidirectional_2d under these memory budgets')
    parser.add_argument('--malloc', choices=sorted(MALLOC_MODES), default='default',
                        help="glibc's allocator settings for the children (see above)")
    add_output_args(parser, '256² only', default_out=None)  # prints; --out to keep the table
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [256]
    from vir_dense.ops.retention.chunkwise import least_budget
    rows, results = [], []
    runs = [(size, mask, None) for size in args.sizes
            for mask in ('bidirectional_2d', 'causal_2d')]
    runs += [(size, 'bidirectional_2d', mib) for size in args.sizes for mib in args.budgets]
    for size, mask, mib in runs:
        budget = None if mib is None else int(mib * MIB)
        side = size // 16  # the grid of the child's ViR-S call, plus its class-token row
        least = least_budget(1, 6, side + 1, side, 64, args.chunk, False)
        if budget is not None and budget < least:
            r = dict(status='skipped', note=f'below the least this grid needs '
                                            f'({least / MIB:,.0f} MiB, one head at a time)')
        else:
            records, code, err = launch(__file__, 'run', dict(size=size, mask=mask,
                                                              budget=budget, chunk=args.chunk),
                                        900, env=MALLOC_MODES[args.malloc])
            r = records[-1] if records else failure(code, err, 900)
        results.append(dict(r, size=size, mask=mask, budget_mib=mib))
        label = 'none' if mib is None else f'{mib:g} MiB'
        if r['status'] != 'ok':
            rows.append([f'{size}²', mask, label, '', r['note'], ''])
        else:
            rows.append([f'{size}²', mask, label, 'x'.join(map(str, r['slices'])),
                         f'{r["measured"] / MIB:,.0f}', f'{r["predicted"] / MIB:,.0f}'])
        print(' '.join(map(str, rows[-1])), flush=True)
    malloc = {'default': "glibc's default", 'live': '64 KiB (RSS = live tensors)',
              'raised': 'raised (freed pages kept)'}[args.malloc]
    text = '\n'.join([
        '## Transient memory of one chunkwise retention call: measured vs formula', '',
        f'`python tools/analysis_tools/measure_retention_memory.py {" ".join(argv)}`: '
        'ViR-S heads (6 x 64), '
        f'tiles of {args.chunk} cells, fresh process per row, mmap threshold {malloc}.', '']
        + markdown_table(['size', 'mask', 'memory_budget', 'head groups x query slices',
                        'measured MiB', 'formula MiB'], rows))
    write_outputs(args, text, 'retention_memory', results)

if __name__ == '__main__':
    if sys.argv[1:2] == ['--_child']:
        child(json.loads(sys.argv[3]))
    else:
        main(sys.argv[1:])
