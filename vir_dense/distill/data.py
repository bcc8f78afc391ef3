"""Unlabeled images for distillation: a recursive image folder, the teacher's preprocessing,
and batches that a resumed (or distributed) run can pick up at any step."""
import os
from typing import Iterator, List, Optional, Sequence

import torch
from PIL import Image

from .models import DistillError

__all__ = ['IMAGE_EXTENSIONS', 'ImageFolderDataset', 'build_transform', 'step_batches',
           'AUGMENTATIONS']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.ppm')
AUGMENTATIONS = ('rrc', 'flip', 'none')


class ImageFolderDataset(torch.utils.data.Dataset):
    """Every image below ``root`` (recursively, sorted paths; labels and class folders are
    ignored). Unreadable files are reported with their path."""

    def __init__(self, root: str, transform=None, max_images: Optional[int] = None):
        if not os.path.isdir(root):
            raise DistillError(f'image folder not found: {root!r}')
        paths = []
        for folder, _, files in os.walk(root, followlinks=True):
            paths += [os.path.join(folder, f) for f in files
                      if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not paths:
            raise DistillError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) below {root!r}')
        self.paths: List[str] = sorted(paths)[:max_images]
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                image = image.convert('RGB')
        except OSError as err:
            raise DistillError(f'cannot read image {path!r}: {err}') from err
        return self.transform(image) if self.transform is not None else image


def build_transform(img_size: int, mean: Sequence[float], std: Sequence[float],
                    crop_pct: float = 0.875, interpolation: str = 'bicubic',
                    augment: str = 'rrc'):
    """The teacher's preprocessing at ``img_size``.

    'none': resize the short side to img_size / crop_pct, centre crop (timm's eval transform);
    'flip': the same plus random horizontal flips; 'rrc': random resized crop (scale 0.35-1)
    plus flips, as in the teacher's training.
    """
    from torchvision import transforms as T
    if augment not in AUGMENTATIONS:
        raise DistillError(f'augment must be one of {AUGMENTATIONS}, got {augment!r}')
    modes = {'bicubic': T.InterpolationMode.BICUBIC, 'bilinear': T.InterpolationMode.BILINEAR,
             'nearest': T.InterpolationMode.NEAREST}
    mode = modes.get(interpolation, T.InterpolationMode.BICUBIC)
    if augment == 'rrc':
        steps = [T.RandomResizedCrop(img_size, scale=(0.35, 1.0), interpolation=mode),
                 T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(round(img_size / crop_pct)), interpolation=mode),
                 T.CenterCrop(img_size)]
        if augment == 'flip':
            steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(list(mean), list(std))]
    return T.Compose(steps)


def _epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, rank: int,
                   world: int) -> List[List[int]]:
    """This rank's full batches of one epoch: one permutation shared by all ranks, split."""
    generator = torch.Generator().manual_seed(seed * 100003 + epoch)
    order = torch.randperm(num_items, generator=generator).tolist()
    per_rank = num_items // world
    mine = order[rank * per_rank:(rank + 1) * per_rank]
    return [mine[i:i + batch_size] for i in range(0, len(mine) - batch_size + 1, batch_size)]


def steps_per_epoch(num_items: int, batch_size: int, world: int = 1) -> int:
    count = (num_items // world) // batch_size
    if count < 1:
        raise DistillError(f'{num_items} images are fewer than one batch of {batch_size} per '
                           f'process x {world} processes: lower --batch-size')
    return count


def step_batches(dataset, batch_size: int, start_step: int, seed: int = 0, rank: int = 0,
                 world: int = 1, workers: int = 0) -> Iterator[torch.Tensor]:
    """Endless batches of images; batch s is the same whether a run starts at step 0 or
    resumes at step s (epochs are seeded permutations; a resumed epoch skips by index)."""
    per_epoch = steps_per_epoch(len(dataset), batch_size, world)
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        batches = _epoch_batches(len(dataset), batch_size, seed, epoch, rank, world)[skip:]
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                             persistent_workers=False)
        yield from loader
        epoch, skip = epoch + 1, 0
