"""Run timm's own training script (train.py of pytorch-image-models) with the ViR models registered.

timm's train.py ships with the timm repository, not the pip package, and it does not import
plug-in packages; this wrapper imports vir_dense (which registers `vir_*` models) and then runs
the given script unchanged, with the remaining arguments.

    python tools/timm_train.py /path/to/pytorch-image-models/train.py --model vir_small_patch16_224 ...

See docs/imagenet.md for the paper's recipe as a command line.
"""
import os
import runpy
import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(__doc__.strip())
        return 0 if argv else 2
    script, script_args = argv[0], argv[1:]
    if not os.path.isfile(script):
        sys.exit(f'error: {script} is not a file: pass the path of timm\'s train.py '
                 '(git clone the pytorch-image-models repository to get it)')
    import vir_dense  # noqa: F401  (registers the ViR models with timm)
    sys.argv = [script, *script_args]
    # timm's train.py imports only the installed timm, so the import path is left as it is.
    runpy.run_path(script, run_name='__main__')
    return 0


if __name__ == '__main__':
    sys.exit(main())
