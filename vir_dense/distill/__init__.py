"""Retention transfer: a working ViR from a pretrained timm ViT/DeiT, by distillation.

The naive conversion (``vir_dense.models.convert.convert_to_vir``) copies the attention weights
into the retention weights; retention has no softmax, so that model computes another function.
Here the copied model is the starting point of two short trainings against the frozen ViT:

* stage 1 (:class:`BlockMatching`): every block's retention branch learns to reproduce the
  teacher's attention branch from the teacher's own block input; all blocks at once, each on
  its own (no error flows from one block to the next);
* stage 2 (:class:`FeatureMatching`): the whole student matches the teacher's final tokens
  (and optionally intermediate block outputs).

The ViT puts its class token first, ViR last: :func:`to_student_order` / :func:`to_teacher_order`
map one to the other, patch tokens to patch tokens and class token to class token.

Modules: ``models`` (teacher, student, token order, losses, agreement metrics), ``data``
(unlabeled image folders, transforms, resumable shards), ``train`` (the loop: DDP, AMP, resume,
atomic checkpoints, logging). ``tools/distill_vit_to_vir.py`` is the command line.
"""
from .models import (BlockMatching, DistillError, FeatureMatching, build_student,  # noqa: F401
                     feature_agreement, load_teacher, relative_mse, to_student_order,
                     to_teacher_order)
from .data import ImageFolderDataset, build_transform  # noqa: F401
from .train import DistillConfig, distill, save_vir_checkpoint  # noqa: F401
