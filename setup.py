"""vir_dense: ViR (Vision Retention Networks) backbones for mmdetection and mmsegmentation."""
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_pins():
    """(install_requires, extras_require) from requirements/pins.txt, the project's one set of
    pins; a line tagged `# extra: NAME` goes to the extra NAME (e.g. `pip install -e .[deploy]`)."""
    requires, extras = [], {}
    for line in (HERE / 'requirements' / 'pins.txt').read_text().splitlines():
        requirement, _, comment = line.partition('#')
        if not requirement.strip():
            continue
        tag = comment.strip()
        if tag.startswith('extra:'):
            extras.setdefault(tag[len('extra:'):].strip(), []).append(requirement.strip())
        else:
            requires.append(requirement.strip())
    return requires, extras


INSTALL_REQUIRES, EXTRAS_REQUIRE = read_pins()


setup(
    name='vir_dense',
    version='0.1.0',
    description='Vision Retention Networks (ViR) for dense prediction in OpenMMLab',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['vir_dense', 'vir_dense.*']),
    python_requires='>=3.10',
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
