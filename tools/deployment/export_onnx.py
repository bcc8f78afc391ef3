"""Export a ViR model to ONNX, optionally checked against PyTorch with onnxruntime (CPU).

    python tools/deployment/export_onnx.py CONFIG_OR_TIMM_NAME [CHECKPOINT] --shape H W
        --out FILE.onnx [--target backbone|model|backbone_neck|rpn] [--retention-mode auto|parallel|chunkwise|
        recurrent] [--chunk-size N] [--cfg-options K=V ...] [--verify] [--repeats N]
        [--threads N] [--batch N] [--opset N]

Sources: a timm model name (vir_small_patch16_224, ...; targets backbone (default) and model),
an mmseg config (configs/upernet_vir_*; targets model = image -> logits (default) and
backbone) or an mmdet config (configs/maskrcnn_vir_*; targets backbone_neck (default),
backbone, rpn, and model, which stops at mmcv's RoIAlign/NMS: see docs/deployment.md).

The input is the image batch as the model's data preprocessor leaves it (normalised float,
N x 3 x H x W); the graph is fixed to --shape. --retention-mode auto (default) exports the
parallel form up to 2048 tokens and the chunkwise form above (e.g. 1024x1024 at patch
16). --verify runs the file with onnxruntime and the model with PyTorch
on the same random input: max|onnx - torch| / max|torch| must be <= --tolerance (1e-4), and
with --repeats N both are timed in this process (median ms).

Exit status: 0 done (and verified), 1 verification exceeded the tolerance, 2 a usage error,
an export the exporter refused (with its reason) or the deploy extra missing.
"""
import argparse
import sys

from mmengine.config import DictAction

from vir_dense.cli import UsageError, run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('source', help='config file or timm model name')
    parser.add_argument('checkpoint', nargs='?', default=None)
    parser.add_argument('--shape', nargs=2, type=int, required=True, metavar=('H', 'W'))
    parser.add_argument('--out', required=True, help='the .onnx file to write')
    parser.add_argument('--target', default=None,
                        help='what to export (default: backbone for timm names, model for '
                             'segmentors, backbone_neck for detectors)')
    parser.add_argument('--retention-mode', default='auto',
                        choices=('auto', 'parallel', 'chunkwise', 'recurrent'))
    parser.add_argument('--chunk-size', type=int, default=None,
                        help="tokens per chunk (default: the model's)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                        help='config overrides (key=value), as tools/train.py takes them')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--opset', type=int, default=None)
    parser.add_argument('--verify', action='store_true',
                        help='compare onnxruntime (CPU) with PyTorch on a random input')
    parser.add_argument('--tolerance', type=float, default=1e-4)
    parser.add_argument('--repeats', type=int, default=0,
                        help='with --verify: time PyTorch and onnxruntime N times each')
    parser.add_argument('--threads', type=int, default=None,
                        help="with --verify: threads of both runtimes (default: torch's)")
    args = parser.parse_args(argv)
    if min(args.shape) < 1 or args.batch < 1:
        raise UsageError(f'--shape and --batch must be positive, got {args.shape}, {args.batch}')
    if args.repeats and not args.verify:
        raise UsageError('--repeats times the verification run: add --verify')
    return args


def main(argv=None):
    args = parse_args(argv)
    from vir_dense.deploy import (build_target, check_onnx, describe, example_input,
                                  export_onnx, require_deploy)
    require_deploy()  # before building anything: the missing extra is the first thing to say
    from vir_dense.deploy.targets import is_config
    if args.cfg_options and not is_config(args.source):
        raise UsageError('--cfg-options needs a config file, not a timm model name')
    built = build_target(args.source, args.checkpoint, args.target, args.retention_mode,
                         args.chunk_size, args.cfg_options)
    shape = tuple(args.shape)
    print(f'exporting {args.source} [{built.kind} {built.target}] at {shape[0]}x{shape[1]}, '
          f'retention {built.resolved_mode(shape)} (asked: {args.retention_mode}, chunk '
          f'{built.backbone.chunk_size}) -> {args.out}')
    example = example_input(shape, args.batch, built.in_channels)
    export_onnx(built.module, example, args.out, args.opset)
    if not args.verify:
        return 0
    check = check_onnx(args.out, built.module, example, args.repeats, args.threads)
    for line in describe(check, args.tolerance):
        print(line)
    return 0 if check.passed(args.tolerance) else 1


if __name__ == '__main__':
    sys.exit(run_cli(main))
