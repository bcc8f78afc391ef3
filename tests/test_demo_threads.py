"""tools/demo.py trains on as many threads as cores were idle over the last second (from
/proc/stat, not the trailing load average), or on --threads, and says which and why."""
import pytest

from inprocess import load_tool


@pytest.fixture
def demo(monkeypatch):
    module = load_tool('demo')
    monkeypatch.setattr(module.os, 'sched_getaffinity', lambda pid: {0, 1})
    monkeypatch.setattr(module.time, 'sleep', lambda seconds: None)
    return module


def fake_stat(demo, monkeypatch, idle_share):
    """/proc/stat readings 100 jiffies per core apart, `idle_share` of them idle."""
    readings = iter([(0, 0), (int(200 * idle_share), 200)])
    monkeypatch.setattr(demo, 'cpu_times', lambda cores: next(readings))


@pytest.mark.parametrize('idle_share, threads', [(1.0, 2), (0.75, 2), (0.5, 1), (0.0, 1)])
def test_threads_follow_the_idle_cores(demo, monkeypatch, idle_share, threads):
    fake_stat(demo, monkeypatch, idle_share)
    chosen, why = demo.pick_threads(None)
    assert chosen == threads
    assert f'{2 * idle_share:.1f} of 2 usable cores idle' in why


def test_threads_as_asked(demo):
    assert demo.pick_threads(3) == (3, 'as asked (--threads)')


def test_cpu_times_reads_this_machine(demo):
    idle, total = demo.cpu_times([0])
    assert 0 <= idle <= total and total > 0
