"""vir_dense: ViR (Vision Retention Networks) backbones for mmdetection and mmsegmentation."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_pins():
    """install_requires come from requirements/pins.txt: the project's one set of pins."""
    lines = (HERE / 'requirements' / 'pins.txt').read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


setup(
    name='vir_dense',
    version='0.1.0',
    description='Vision Retention Networks (ViR) for dense prediction in OpenMMLab',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['vir_dense', 'vir_dense.*']),
    python_requires='>=3.10',
    install_requires=read_pins(),
)
