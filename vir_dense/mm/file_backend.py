"""Atomic checkpoint writes for mmengine's runner.

mmengine's local file backend writes in place, so a run killed mid-save would leave a
truncated `latest` checkpoint that breaks `--resume`. This backend writes through
`vir_dense.models.checkpoint_files.atomic_write` instead (registered for local paths in
`vir_dense.mm`).
"""
from mmengine.fileio import LocalBackend

from vir_dense.models.checkpoint_files import atomic_write


class AtomicLocalBackend(LocalBackend):
    """LocalBackend whose writes go to a temporary file first, then replace the target."""

    def put(self, obj, filepath):
        with atomic_write(filepath) as tmp, open(tmp, 'wb') as f:
            f.write(obj)

    def put_text(self, obj, filepath, encoding='utf-8'):
        self.put(obj.encode(encoding), filepath)
