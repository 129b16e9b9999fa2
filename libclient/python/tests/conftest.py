"""Fixtures: a private kvcd (the build tree's) on a temporary socket, stopped afterwards."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "libclient" / "python"))
BUILD = Path(os.environ.get("KVCD_BIN", ROOT / "build" / "kvcd")).parent
MODEL = ROOT.parent / "shared" / "models" / "stories260K.bin"

import kvcd  # noqa: E402


class Daemon:
    def __init__(self, conf: str = ""):
        self.dir = tempfile.mkdtemp(prefix="kvcd-py-")
        self.sock = os.path.join(self.dir, "kvcd.sock")
        args = [str(BUILD / "kvcd"), "--foreground", "--socket", self.sock, "--pool-size", "64M"]
        if conf:
            path = os.path.join(self.dir, "kvcd.conf")
            Path(path).write_text(conf)
            args += ["--config", path]
        self.log = open(os.path.join(self.dir, "kvcd.log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=self.log)
        for _ in range(500):
            try:
                kvcd.Client(socket=self.sock, staging_size=4096).close()
                return
            except kvcd.KvcdError:
                if self.proc.poll() is not None:
                    raise RuntimeError("kvcd exited: " + Path(self.log.name).read_text())
                time.sleep(0.01)
        raise RuntimeError("kvcd did not come up")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.log.close()
        subprocess.run(["rm", "-rf", self.dir], check=False)
        return rc


@pytest.fixture
def daemon():
    d = Daemon()
    yield d
    assert d.stop() == 0, "kvcd exits cleanly"
