"""Input handling shared by the detection and segmentation inference scripts.

Users pass images, folders and globs; one unreadable file must not abort the others.
"""
import glob
import os
import os.path as osp
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def collect_images(inputs):
    """Expand image paths, folders (non-recursive) and glob patterns into a sorted file list.

    Raises FileNotFoundError naming every input that matched nothing.
    """
    files, unmatched = [], []
    for item in inputs:
        item = str(item)
        if os.path.isdir(item):
            found = [str(p) for p in sorted(Path(item).iterdir())
                     if p.suffix.lower() in IMAGE_SUFFIXES]
        elif os.path.isfile(item):
            found = [item]
        else:
            found = sorted(p for p in glob.glob(item, recursive=True)
                           if os.path.isfile(p) and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            unmatched.append(item)
        files.extend(found)
    if unmatched:
        raise FileNotFoundError(f'no images found for {unmatched}: pass image files, folders or '
                                f'glob patterns (suffixes {", ".join(IMAGE_SUFFIXES)})')
    return list(dict.fromkeys(files))  # de-duplicated, order kept


def read_rgb(path):
    """Read an image as an RGB uint8 array, as the test pipeline (mmcv/cv2) reads it.

    Grey, palette, CMYK and RGBA images are converted (alpha composited on white); an EXIF
    orientation is applied (a camera photo comes out upright, as viewers show it); 16-bit
    images keep their high byte (value >> 8, what cv2 does). Raises ValueError with the path
    for a file that is not a readable image, truncated ones included.
    """
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):  # 16-bit grey
                grey = np.asarray(image).astype(np.int64)
                return np.repeat((np.clip(grey, 0, 65535) >> 8).astype(np.uint8)[..., None],
                                 3, axis=2)
            if image.mode in ('RGBA', 'LA') or (image.mode == 'P' and 'transparency' in image.info):
                # Composite on white rather than dropping alpha (transparent pixels are often black).
                rgba = image.convert('RGBA')
                background = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            return np.asarray(image.convert('RGB'))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f'cannot read image {path}: {err}') from err



@dataclass
class ImagesReport:
    """What ``detect_images`` / ``segment_images`` did: the files written per input image, the
    images that failed (and why), and any file written for the whole run (e.g. results.json)."""
    outputs: Dict[str, Dict[str, str]] = field(default_factory=dict)  # input -> kind -> path
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (input, reason)
    files: Dict[str, str] = field(default_factory=dict)  # kind -> path

    @property
    def ok(self) -> bool:
        return not self.failed


def unique_stem(path: str, used: set) -> str:
    """The file's stem, made unique among ``used`` (the same name in two input folders)."""
    stem = osp.splitext(osp.basename(path))[0]
    candidate, index = stem, 1
    while candidate in used:
        index += 1
        candidate = f'{stem}_{index}'
    used.add(candidate)
    return candidate
