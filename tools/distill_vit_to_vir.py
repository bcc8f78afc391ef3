"""Distil a pretrained timm ViT/DeiT into the ViR of the same width and depth.

    python tools/distill_vit_to_vir.py --teacher deit_small_patch16_224 \\
        --teacher-checkpoint deit_small.pth --data /data/imagenet/train \\
        --work-dir work_dirs/distill_vir_s --output pretrained/vir_small_patch16_224.pth
    torchrun --nproc_per_node 8 tools/distill_vit_to_vir.py ... --amp    # DDP (gloo on CPU)

Stage 1 trains every block's retention branch to reproduce the teacher's attention branch on
the teacher's own block inputs (all blocks at once, independently); stage 2 matches the final
tokens end to end. Options may also come from a JSON file (--config; keys are the long option
names with '_'); command-line options win. --resume continues from <work-dir>/latest.pth.
The output loads with init_cfg=dict(type='Pretrained', checkpoint=OUTPUT) in the mm configs and
with timm.create_model('vir_small_patch16_224', pretrained=True,
pretrained_cfg_overlay=dict(file=OUTPUT)). See docs/distillation.md.
"""
import argparse
import dataclasses
import json
import os

from vir_dense.cli import UsageError, run_cli


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--config', help='JSON file of option defaults (keys as below, with _)')
    g = p.add_argument_group('teacher, student, data')
    g.add_argument('--teacher', dest='teacher_model', help='timm model name of the teacher')
    g.add_argument('--teacher-checkpoint', help='local file with the teacher weights')
    g.add_argument('--teacher-kwargs', type=json.loads, default=None,
                   help='extra timm.create_model kwargs as JSON, e.g. \'{"qkv_bias": false}\'')
    g.add_argument('--data', help='folder of images (searched recursively; labels ignored)')
    g.add_argument('--max-images', type=int, help='use only the first N images (sorted)')
    g.add_argument('--student-arch', help="check the result fits this ViR, e.g. "
                   "'vir_small_patch16_224'")
    g.add_argument('--mask', choices=['bidirectional_2d', 'causal_2d', 'bidirectional_1d',
                                      'causal_1d'], help='default bidirectional_2d (the configs)')
    g.add_argument('--normalize-retention', action='store_true', default=None,
                   help='decay-weighted mean retention (the config must then set it too)')
    g.add_argument('--decay-exponents', type=float, nargs=2, metavar=('FIRST', 'LAST'),
                   help='default 5 9')
    g.add_argument('--img-size', type=int, help='resolution (default: the teacher file\'s)')
    g.add_argument('--mean', type=float, nargs=3, help='default: the teacher\'s pretrained_cfg')
    g.add_argument('--std', type=float, nargs=3)
    g.add_argument('--crop-pct', type=float)
    g.add_argument('--interpolation', choices=['bicubic', 'bilinear', 'nearest'])
    g.add_argument('--augment', choices=['rrc', 'flip', 'none'],
                   help='rrc: random resized crop + flip (default); flip; none')
    g = p.add_argument_group('training')
    g.add_argument('--work-dir', help='logs and latest.pth (default work_dirs/distill)')
    g.add_argument('--output', help='ViR checkpoint (.pth or .safetensors; default '
                   '<work-dir>/vir_distilled.pth)')
    g.add_argument('--batch-size', type=int, help='per process (default 64)')
    g.add_argument('--workers', type=int, help='data loader workers per process (default 4)')
    g.add_argument('--stage1-epochs', type=float, help='default 1')
    g.add_argument('--stage2-epochs', type=float, help='default 1')
    g.add_argument('--stage1-steps', type=int, help='overrides --stage1-epochs')
    g.add_argument('--stage2-steps', type=int, help='overrides --stage2-epochs')
    g.add_argument('--lr1', type=float, help='stage 1 peak lr (default 5e-4)')
    g.add_argument('--lr2', type=float, help='stage 2 peak lr (default 1e-4)')
    g.add_argument('--weight-decay', type=float)
    g.add_argument('--clip-grad', type=float)
    g.add_argument('--calibrate', choices=['proj', 'scale', 'none'],
                   help='closed-form start of stage 1: least-squares fit of each block\'s '
                   'output projection (proj, default) or LayerScale (scale), or none')
    g.add_argument('--no-calibrate', dest='calibrate', action='store_const', const='none',
                   help='same as --calibrate none')
    g.add_argument('--calibration-images', type=int,
                   help='images per process the calibration fits on (default 256)')
    g.add_argument('--stage1-pool', type=int, help='stage 1 reuses the teacher\'s block '
                   'inputs/targets of this many images per process, computed once (default 0: '
                   'a teacher forward per step); costs depth x 2 x tokens x width floats each')
    g.add_argument('--stage2-from-pool', action='store_true', default=None,
                   help='stage 2 draws its batches from the --stage1-pool images too, with '
                   'the teacher\'s targets derived from the pool: no teacher forward per '
                   'stage-2 step (needs --stage1-pool)')
    g.add_argument('--taps', type=int, nargs='+', help='stage 2: also match these block '
                   'outputs, e.g. --taps 0 1 2')
    g.add_argument('--cls-weight', type=float, help='stage 2: extra weight of the class '
                   'token (default 1)')
    g.add_argument('--tap-weight', type=float, help='weight of each tap (default 1)')
    g.add_argument('--logit-weight', type=float, help='stage 2: KL between the teacher head '
                   'on teacher and student tokens (default 0; needs a classifier teacher)')
    g.add_argument('--stage1-cls-weight', type=float, help='stage 1: extra weight of the '
                   'class token (default 0)')
    g.add_argument('--amp', action='store_true', default=None,
                   help='autocast (bf16; on CPU too)')
    g.add_argument('--amp-dtype', choices=['bfloat16', 'float16'])
    g.add_argument('--log-every', type=int)
    g.add_argument('--checkpoint-every', type=int, help='steps between checkpoints')
    g.add_argument('--seed', type=int)
    g.add_argument('--resume', nargs='?', const='auto',
                   help='continue from CKPT, or without a value from <work-dir>/latest.pth')
    g.add_argument('--device', help="'auto' (default), 'cpu' or 'cuda'")
    return p


def make_config(argv=None):
    from vir_dense.distill import DistillConfig
    args = build_parser().parse_args(argv)
    fields = {f.name for f in dataclasses.fields(DistillConfig)}
    values = {}
    if args.config:
        if not os.path.isfile(args.config):
            raise UsageError(f'config file {args.config} not found')
        with open(args.config) as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as err:
                raise UsageError(f'config file {args.config} is not valid JSON: {err}')
        unknown = sorted(set(values) - fields)
        if unknown:
            raise UsageError(f'unknown keys in {args.config}: {unknown}; known: {sorted(fields)}')
    values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    missing = [name for name in ('teacher_model', 'teacher_checkpoint', 'data')
               if not values.get(name)]
    if missing:
        raise UsageError('missing ' + ', '.join('--' + m.replace('_model', '').replace('_', '-')
                                               for m in missing))
    return DistillConfig(**values)


def main(argv=None):
    import torch
    from vir_dense.distill import DistillError, distill
    cfg = make_config(argv)
    if os.environ.get('OMP_NUM_THREADS'):
        torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    try:
        distill(cfg)
    except DistillError as err:
        raise UsageError(str(err)) from err
    return 0


if __name__ == '__main__':
    run_cli(main)
