"""The demo's server shutdown helpers: SIGTERM then SIGKILL, always reaped; SIGTERM/SIGHUP as Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import pytest

from loraops.demo.run import _stop_signals_interrupt, stop_server


def _child(code: str) -> subprocess.Popen:
    script = f"import signal, sys, time\n{code}\nprint('up', flush=True)\ntime.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc


def test_stop_server_terminates_and_reaps():
    proc = _child("")
    stop_server(proc, timeout=10)
    assert proc.returncode == -signal.SIGTERM


def test_stop_server_kills_a_server_that_ignores_sigterm():
    proc = _child("signal.signal(signal.SIGTERM, signal.SIG_IGN)")
    t0 = time.monotonic()
    stop_server(proc, timeout=0.5)
    assert proc.returncode == -signal.SIGKILL and time.monotonic() - t0 < 10


def test_stop_server_on_an_exited_server_is_a_no_op():
    proc = _child("")
    proc.kill()
    proc.wait()
    stop_server(proc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_interrupt_like_ctrl_c_while_serving(sig):
    before = signal.getsignal(sig)
    with pytest.raises(KeyboardInterrupt), _stop_signals_interrupt():
        os.kill(os.getpid(), sig)
        time.sleep(5)  # the handler raises here
    assert signal.getsignal(sig) is before
