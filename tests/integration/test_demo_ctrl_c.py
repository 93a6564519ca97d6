"""Ctrl-C on a finished `loraops demo` (server and dashboard left running) stops it cleanly.

The demo runs as a user runs it (the CLI's `demo` command in its own process, which starts `loraops
serve` as a child) on the tiny base of test_demo.py. A terminal sends Ctrl-C's SIGINT to its whole
foreground process group, demo and server at once: the test does the same with killpg. Then: exit
code 0 (leaving a finished demo with Ctrl-C is the normal way out), "stopping the server", no traceback,
no process of the group left (the server is reaped, not orphaned) and the server's port closed.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from tiny import tiny_llama, tiny_tokenizer

# `loraops demo` has no --base or --no-gate: the tiny-base settings of test_demo.py become defaults of
# the DemoOptions the CLI builds; everything else is the real CLI (`loraops.cli.main`, as `python -m loraops`).
LAUNCH = """
import functools, sys
import loraops.demo.run as demo
demo.DemoOptions = functools.partial(demo.DemoOptions, base=sys.argv[1], batch_size=2, seq_len=256, gate=False)
from loraops.cli import main
sys.argv = ["loraops", "demo", "--workdir", sys.argv[2], "--steps", "3", "--eval-examples", "4", "--port", "0"]
main()
"""
READY_LINE = "Ctrl-C stops the server."


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_ctrl_c_stops_the_demo_and_its_server_cleanly(tmp_path):
    base = tmp_path / "tiny-base"
    model = tiny_llama()
    model.config.max_position_embeddings = 1024  # as in test_demo.py: demo e-mails are longer than the default
    model.save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    stderr_file = tmp_path / "stderr.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}  # LORAOPS_HOME: the autouse fixture's
    with open(stderr_file, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, str(base), str(tmp_path / "demo")], env=env,
                                stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
                                # as in a terminal: SIGINT raises KeyboardInterrupt (a test runner started
                                # in the background may hand its children SIGINT ignored)
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pgid = proc.pid  # start_new_session: the demo leads its own group, the server (its child) is in it
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:  # keeps draining stdout until EOF, so the demo never blocks on a full pipe
        for line in proc.stdout:
            lines.append(line)
            if READY_LINE in line:
                ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while not ready.wait(1):
            assert proc.poll() is None, f"the demo exited early ({proc.returncode}):\n" + "".join(lines) + \
                stderr_file.read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo did not finish in 5 minutes:\n" + "".join(lines)
        out = "".join(lines)
        port = int(re.search(r"server: http://127\.0\.0\.1:(\d+)/v1", out).group(1))
        assert _port_open(port)

        os.killpg(pgid, signal.SIGINT)  # what Ctrl-C in a terminal does
        code = proc.wait(timeout=20)
        reader.join(timeout=5)
        out, err = "".join(lines), stderr_file.read_text()
        assert code == 0, out[-2000:] + err[-3000:]
        assert "stopping the server" in out and "server stopped" in out, out[-2000:]
        assert "Traceback" not in err, err[-3000:]
        deadline = time.monotonic() + 5  # the demo waited for (and reaped) the server before exiting
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(pgid), "a process of the demo's group is still there"
        assert not _port_open(port)
    finally:
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=30)
