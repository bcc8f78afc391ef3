#!/usr/bin/env python
"""Mixed-precision error of the backbones: relative error of `forward_features` under CPU
autocast (bf16, fp16) vs float32, ViR-S (paper retention, i.e. unnormalized, and normalized)
vs timm ViT-S, side by side in one run.

    .venv/bin/python tools/analysis_tools/benchmark_precision.py [--sizes 512 1024] \\
        [--dtypes bfloat16]
    .venv/bin/python tools/analysis_tools/benchmark_precision.py --quick  # 224² only, prints only

Random weights with LayerScale 1.0 (ViR's default 1e-5 would hide the blocks), the same random
image for every model; error = ||out - out_fp32|| / ||out_fp32||. Writes the table between
`<!-- precision:start/end -->` in docs/benchmarks.md (or --out).
"""
import argparse
import sys
import time

from benchlib import add_output_args, markdown_table, write_outputs


def error(name, size, dtype, **kwargs):
    import timm
    import torch
    import vir_dense  # noqa: F401
    torch.manual_seed(0)
    model = timm.create_model(name, dynamic_img_size=True, init_values=1.0, **kwargs).eval()
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model.forward_features(image)
        with torch.autocast('cpu', dtype=getattr(torch, dtype)):
            out = model.forward_features(image)
    if not torch.isfinite(out).all():
        return 'non-finite'
    return f'{((out.float() - reference).norm() / reference.norm()).item() * 100:.2f}%'


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[512, 1024])
    parser.add_argument('--dtypes', nargs='+', default=['bfloat16'])
    parser.add_argument('--threads', type=int, default=2)
    add_output_args(parser, '224² only')
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes = [224]
    import torch
    torch.set_num_threads(args.threads)
    models = [('ViT-S (timm, SDPA)', 'vit_small_patch16_224', {}),
              ('ViR-S paper retention, chunkwise', 'vir_small_patch16_224',
               dict(mask='bidirectional_2d', retention_mode='chunkwise')),
              ('ViR-S paper retention, parallel', 'vir_small_patch16_224',
               dict(mask='bidirectional_2d', retention_mode='parallel')),
              ('ViR-S normalize_retention, chunkwise', 'vir_small_patch16_224',
               dict(mask='bidirectional_2d', retention_mode='chunkwise',
                    normalize_retention=True))]
    start = time.time()
    rows = []
    for title, name, kwargs in models:
        cells = []
        for dtype in args.dtypes:
            for size in args.sizes:
                if kwargs.get('retention_mode') == 'parallel' and size > 1024:
                    cells.append('-')
                    continue
                cells.append(error(name, size, dtype, **kwargs))
                print(title, dtype, size, cells[-1], flush=True)
        rows.append([title, *cells])
    text = '\n'.join([
        '## Mixed precision: relative error of the features under CPU autocast vs float32', '',
        f'`python tools/analysis_tools/benchmark_precision.py {" ".join(argv)}` '
        f'({(time.time() - start) / 60:.1f}'
        f' min, {args.threads} threads); random weights, LayerScale 1.0, one image; the '
        'retention operator computes in float32 inside autocast.', ''] + markdown_table(
            ['model'] + [f'{d} {s}²' for d in args.dtypes for s in args.sizes], rows))
    write_outputs(args, text, 'precision', rows)


if __name__ == '__main__':
    main(sys.argv[1:])
