"""A Python engine and the C engine share prefixes through kvcd: what kvc-llama stores, the
PyTorch engine's prefill loads through the connector (and its next token is its own cold
prefill's), and what the Python engine stores is a hit for kvc-llama."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvcd
from conftest import BUILD, MODEL, ROOT

torch = pytest.importorskip("torch")
sys.path.insert(0, str(ROOT / "libclient" / "python" / "examples"))
from llama_torch import Llama  # noqa: E402
from kvcd.connector import KvcdConnector  # noqa: E402

pytestmark = pytest.mark.skipif(not MODEL.exists(), reason="needs ../shared/models")


def kvc_llama(sock: str, tokens, steps: int = 1):
    out = subprocess.run([str(BUILD / "kvc-llama"), "--socket", sock, "--model", str(MODEL),
                          "--steps", str(steps)] + [str(t) for t in tokens],
                         capture_output=True, text=True, check=True)
    restored = int(re.search(r"(\d+) restored from kvcd", out.stderr).group(1))
    return [int(x) for x in out.stdout.split()], restored


@pytest.fixture(scope="module")
def model():
    return Llama(str(MODEL))


def connector(daemon, m):
    c = kvcd.Client(socket=daemon.sock, ns="default", staging_size=8 << 20)
    return KvcdConnector(c, m.keyns("default"), m.layers, m.kv_heads, m.head_dim, "f16", 16)


def test_a_prefix_the_c_engine_stored_is_a_hit_for_python(daemon, model):
    prompt = [1] + [(t * 37) % 500 + 2 for t in range(47)]  # 48 tokens: 3 chunks
    c_next, restored = kvc_llama(daemon.sock, prompt)
    assert restored == 0
    conn = connector(daemon, model)
    assert conn.get_num_new_matched_tokens(prompt) == 48
    logits_hit, hit = model.prefill(prompt, conn, save=False)
    assert hit == 32, "all but the chunk holding the last token comes from kvcd"
    logits_cold, _ = model.prefill(prompt, None)
    assert int(torch.argmax(logits_hit)) == int(torch.argmax(logits_cold))
    assert int(torch.argmax(logits_cold)) == c_next[0], "the same model as the C engine"
    conn.client.close()


def test_a_prefix_python_stored_is_a_hit_for_the_c_engine(daemon, model):
    prompt = [1] + [(t * 11) % 400 + 5 for t in range(39)]  # 40 tokens: 2 full chunks
    conn = connector(daemon, model)
    model.prefill(prompt, conn)
    assert conn.saved_chunks == 2
    c_next, restored = kvc_llama(daemon.sock, prompt)
    assert restored == 32, "kvc-llama found both chunks the Python engine stored"
    logits, _ = model.prefill(prompt, None)
    assert c_next[0] == int(torch.argmax(logits))
    conn.client.close()
