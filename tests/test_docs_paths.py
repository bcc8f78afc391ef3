"""Every file or folder that README.md and the docs name exists in the repository, and every
relative Markdown link resolves: a reader who copies a path from them finds it."""
import itertools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / 'README.md', ROOT / 'tests' / 'README.md', *ROOT.glob('docs/*.md'),
               *ROOT.glob('projects/*/README.md')])
# Paths from the repository root: a top-level folder of the repository, then the rest of the
# name. Not preceded by a path character, so '../../docs/x.png' and URLs are not read as one.
REPO_PATH = re.compile(r'(?<![\w./~-])((?:vir_dense|tools|configs|docs|tests|projects|requirements)'
                       r'/[\w./{},*+-]*)')
LINK = re.compile(r'\]\(([^)\s]+)\)')


def expand_braces(path):
    """'a_{t,s}_b' -> ['a_t_b', 'a_s_b'] (the shell's brace expansion, as the docs use it)."""
    parts = re.split(r'\{([^{}]*)\}', path)
    options = [[p] if i % 2 == 0 else p.split(',') for i, p in enumerate(parts)]
    return [''.join(choice) for choice in itertools.product(*options)]


def named_paths(text):
    for match in REPO_PATH.finditer(text):
        path = match.group(1).split('::')[0].rstrip('.,:;')
        yield from expand_braces(path)


def exists(path):
    if '*' in path:
        return any(ROOT.glob(path))
    return (ROOT / path).exists()


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_exist(doc):
    missing = sorted({p for p in named_paths(doc.read_text()) if not exists(p)})
    assert not missing, f'{doc.relative_to(ROOT)} names paths that do not exist: {missing}'


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    links = [link.split('#')[0] for link in LINK.findall(doc.read_text())
             if not re.match(r'[a-z]+:|#', link)]
    missing = [link for link in links if link and not (doc.parent / link).exists()]
    assert not missing, f'{doc.relative_to(ROOT)} links to missing files: {missing}'


def test_docs_stand_alone():
    """No doc points at a file outside the repository."""
    outside = re.compile(r'\.\./shared|shared/(?:VIR_SPEC|ENV_NOTES)|VIR_SPEC|ENV_NOTES')
    offenders = [str(doc.relative_to(ROOT)) for doc in DOCS if outside.search(doc.read_text())]
    assert not offenders, f'these docs refer to files outside the repository: {offenders}'


def test_expand_braces():
    assert expand_braces('configs/m_{t,s}_sp.py') == ['configs/m_t_sp.py', 'configs/m_s_sp.py']
    assert list(named_paths('see `tools/train.py`, and tests/a.py::test_x.')) == [
        'tools/train.py', 'tests/a.py']
