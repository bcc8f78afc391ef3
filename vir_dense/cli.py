"""The command-line error protocol of the tools in tools/.

A tool's ``main(argv)`` runs under :func:`run_cli`: a :class:`~vir_dense.errors.ViRDenseError`
(raised by the library, or :class:`UsageError` by the tool itself) ends the program with
``error: <message>`` and exit status 2 instead of a traceback.
"""
import os
import sys

from vir_dense.errors import ViRDenseError


class UsageError(ViRDenseError):
    """A tool called with arguments that do not go together."""


def run_cli(main, argv=None):
    """Run ``main(argv)``; a ViRDenseError ends the program with its message (exit 2)."""
    try:
        return main(argv)
    except ViRDenseError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)
    finally:
        shutdown_distributed()


def shutdown_distributed():
    """Destroy the process group before the interpreter exits. Left to the interpreter's
    teardown, gloo's worker threads can be destroyed still joinable, and the process dies with
    'terminate called without an active exception' (SIGABRT) after a successful run."""
    import gc

    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        # The Runner (reference cycles) still holds the DDP wrapper, whose reducer holds the
        # process group: free it first so the group is really gone when destroyed.
        gc.collect()
        dist.destroy_process_group()


def set_local_rank(local_rank):
    """torch.distributed.launch passes --local-rank; mmengine reads LOCAL_RANK."""
    if 'LOCAL_RANK' not in os.environ and local_rank is not None:
        os.environ['LOCAL_RANK'] = str(local_rank)
