"""Convert a timm ViT / DeiT / ViR or an mmdet/mmseg checkpoint into a ViR backbone checkpoint.

    python tools/model_converters/convert_checkpoint.py SRC DST [--model-grid ROWSxCOLS]
        [--arch small] [--prefix backbone.] [--trust-pickle]

SRC is a local file or ``timm/<model_name>``. DST ending in ``.safetensors`` is written with
safetensors, anything else as a ``.pth`` holding ``{'state_dict': ..., 'meta': ...}``
(``vir_dense.models.checkpoint_files.save_vir_checkpoint``).
The backbone loader reads every source directly; converting is useful to resize the position
embedding once, to shrink a full detector checkpoint to its backbone, or to turn a trusted
pickle that the weights-only loader refuses (``--trust-pickle``) into a safe file.
"""
import argparse
import os
import sys

from vir_dense.models.archs import ARCHS
from vir_dense.models.checkpoint_files import (read_checkpoint, resolve_checkpoint,
                                               save_vir_checkpoint, unwrap_state_dict)
from vir_dense.models.convert import convert_to_vir, infer_vir_shapes


def parse_grid(text):
    try:
        rows, cols = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'grid must look like 32x32, got {text!r}')
    return rows, cols


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='checkpoint file or timm/<model_name>')
    parser.add_argument('dst', help='output .pth or .safetensors')
    parser.add_argument('--model-grid', type=parse_grid, default=None,
                        help='target patch grid ROWSxCOLS (default: the checkpoint grid)')
    parser.add_argument('--arch', choices=sorted(ARCHS), default=None,
                        help='check the checkpoint against this ViR size (default: inferred)')
    parser.add_argument('--prefix', default='',
                        help="sub-model of the checkpoint to take (default: 'backbone.' if any)")
    parser.add_argument('--trust-pickle', action='store_true',
                        help='unpickle SRC fully: runs code from the file, trusted files only')
    args = parser.parse_args(argv)
    try:
        return convert(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1


def convert(args):
    src = resolve_checkpoint(args.src)
    state_dict, container = unwrap_state_dict(read_checkpoint(src, trust_pickle=args.trust_pickle))
    arch = ARCHS.get(args.arch)
    embed_dim, depth = (arch.embed_dim, arch.depth) if arch else (None, None)
    shapes, grid = infer_vir_shapes(state_dict, prefix=args.prefix, grid=args.model_grid,
                                    embed_dim=embed_dim, depth=depth)
    converted, report = convert_to_vir(state_dict, shapes, grid=grid, prefix=args.prefix,
                                       source=src)
    report.container = container
    print(report)
    meta = dict(converted_from=os.path.basename(src), grid=f'{grid[0]}x{grid[1]}',
                embed_dim=shapes['cls_token'][-1],
                depth=sum(1 for k in shapes if k.endswith('.norm1.weight')))
    save_vir_checkpoint(converted, args.dst, meta)
    print(f'wrote {len(converted)} tensors to {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
