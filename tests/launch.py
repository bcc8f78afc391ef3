"""Helpers for the tests that run tools/dist_train.sh / dist_test.sh (torchrun, 2 processes)."""
import os
import random
import signal
import socket
import subprocess
import sys

# What torch's TCPStore says when the master port was taken (EADDRINUSE).
PORT_TAKEN = ('EADDRINUSE', 'address already in use', 'failed to listen')


def free_port():
    """A local port that is free now, below Linux's ephemeral range (32768-60999): ports from
    that range (what bind(port 0) hands out) are also where the kernel puts other processes'
    outgoing connections, and gloo opens dozens, so one could be taken again before torchrun
    binds it (seen as a failed dist test while two test runs shared the machine)."""
    draw = random.SystemRandom()  # leaves the global random state alone
    for _ in range(200):
        port = draw.randint(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(('127.0.0.1', port))
            except OSError:
                continue
            return port
    raise RuntimeError('no free local port in 20000-32000')


def run_dist_script(script, args, cwd, attempts=3, timeout=1800):
    """bash `script` ARGS with a fresh free port; run again (new port) only when the port was
    taken between the check and torchrun's bind. Returns (returncode, combined log).

    The timeout is generous: on a shared 2-core machine (load 15-19, the test niced) the
    2-process dist_train run took over 900 s of wall time; on an idle one it takes under a
    minute. On a timeout the whole process group goes (torchrun's workers too)."""
    for _ in range(attempts):
        env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()),
                   OMP_NUM_THREADS='1')
        proc = subprocess.Popen(['bash', str(script), *map(str, args)], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
            raise AssertionError(f'{script} ran past {timeout} s:\n{log[-6000:]}') from None
        if proc.returncode == 0 or not any(s in log for s in PORT_TAKEN):
            break
    return proc.returncode, log
