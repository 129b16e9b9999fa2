"""A llama2.c checkpoint in PyTorch that keeps its KV cache in kvcd through the connector.

The forward pass is the one in ../shared/models/README.md (the same model tools/llama.c runs in
C): RMSNorm, RoPE, grouped-query attention, SwiGLU. K and V are rounded to the cache dtype as
they enter the cache, as the C engine does, so blocks either engine stores are the other's.

    /usr/bin/python3 llama_torch.py --model ../../../../shared/models/stories260K.bin \\
        --socket /tmp/kvcd.sock 1 45 67 89 ...
"""
from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import kvcd  # noqa: E402
from kvcd.connector import KvcdConnector  # noqa: E402


class Llama:
    """Weights of a llama2.c legacy checkpoint, and one sequence's KV cache."""

    def __init__(self, path: str, kv_dtype: str = "f16"):
        raw = Path(path).read_bytes()
        (self.dim, self.hidden, self.layers, self.heads, self.kv_heads, vocab,
         self.seq_len) = struct.unpack("<7i", raw[:28])
        self.shared_cls = vocab > 0
        self.vocab = abs(vocab)
        self.head_dim = self.dim // self.heads
        self.kv_dim = self.kv_heads * self.head_dim
        w = torch.from_numpy(np.frombuffer(raw, dtype="<f4", offset=28).copy())
        p = 0

        def take(*shape: int) -> torch.Tensor:
            nonlocal p
            n = int(np.prod(shape))
            t = w[p:p + n].view(*shape)
            p += n
            return t

        L, d, kv, h = self.layers, self.dim, self.kv_dim, self.hidden
        self.emb = take(self.vocab, d)
        self.rms_att = take(L, d)
        self.wq, self.wk, self.wv = take(L, d, d), take(L, kv, d), take(L, kv, d)
        self.wo = take(L, d, d)
        self.rms_ffn = take(L, d)
        self.w1, self.w2, self.w3 = take(L, h, d), take(L, d, h), take(L, h, d)
        self.rms_final = take(d)
        fingerprint_bytes = raw[28:28 + p * 4]  # what the C engine hashes: up to rms_final
        p += self.seq_len * self.head_dim  # freq_cis: recomputed
        self.wcls = self.emb if self.shared_cls else take(self.vocab, d)
        self.fingerprint = fnv1a64(fingerprint_bytes)
        self.kv_dtype = kv_dtype
        self.round = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": None}[kv_dtype]
        # the cache as the connector sees it: [layers, 2, seq, kv_heads, head_dim]
        self.cache = torch.zeros(L, 2, self.seq_len, self.kv_heads, self.head_dim)
        j = torch.arange(0, self.head_dim, 2, dtype=torch.float64)
        self.freq = (10000.0 ** (-j / self.head_dim))

    def keyns(self, ns: str = "default") -> str:
        """The namespace the C engine (tools/engine.c) keys its chunks under."""
        return f"{ns}/{self.fingerprint:016x}/{self.kv_dtype}"

    @staticmethod
    def rmsnorm(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return g * x / torch.sqrt((x * x).mean() + 1e-5)

    def rope(self, x: torch.Tensor, pos: int, nheads: int) -> torch.Tensor:
        ang = pos * self.freq
        cos, sin = torch.cos(ang).float(), torch.sin(ang).float()
        x = x.view(nheads, self.head_dim // 2, 2)
        a, b = x[..., 0], x[..., 1]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).reshape(-1)

    @torch.no_grad()
    def step(self, token: int, pos: int) -> torch.Tensor:
        """One token at position ``pos`` (every earlier position cached): the logits."""
        x = self.emb[token].clone()
        rep = self.heads // self.kv_heads
        for l in range(self.layers):
            xb = self.rmsnorm(x, self.rms_att[l])
            q = self.rope(self.wq[l] @ xb, pos, self.heads)
            k = self.rope(self.wk[l] @ xb, pos, self.kv_heads)
            v = self.wv[l] @ xb
            if self.round is not None:  # the cache holds what the dtype holds
                k, v = k.to(self.round).float(), v.to(self.round).float()
            self.cache[l, 0, pos] = k.view(self.kv_heads, self.head_dim)
            self.cache[l, 1, pos] = v.view(self.kv_heads, self.head_dim)
            kc, vc = self.cache[l, 0, :pos + 1], self.cache[l, 1, :pos + 1]
            out = torch.empty(self.heads, self.head_dim)
            for hh in range(self.heads):
                qh = q[hh * self.head_dim:(hh + 1) * self.head_dim]
                att = torch.softmax(kc[:, hh // rep] @ qh / self.head_dim ** 0.5, dim=0)
                out[hh] = att @ vc[:, hh // rep]
            x = x + self.wo[l] @ out.reshape(-1)
            xb = self.rmsnorm(x, self.rms_ffn[l])
            hb = self.w1[l] @ xb
            x = x + self.w2[l] @ (torch.nn.functional.silu(hb) * (self.w3[l] @ xb))
        return self.wcls @ self.rmsnorm(x, self.rms_final)

    def prefill(self, tokens: Sequence[int], connector: Optional[KvcdConnector] = None,
                save: bool = True) -> tuple[torch.Tensor, int]:
        """Run the prompt; positions the connector finds cached are loaded, not computed.
        Returns the last logits and how many tokens came from kvcd."""
        self.cache.zero_()
        hit = 0
        if connector is not None:
            hit = connector.get_num_new_matched_tokens(tokens)
            # the last token is always computed: its logits are the prefill's output
            hit = min(hit, (len(tokens) - 1) // connector.chunk * connector.chunk)
            if hit:
                connector.start_load_kv(tokens, self.cache, hit)
                for l in range(self.layers):
                    connector.wait_for_layer_load(l)
        logits = None
        for pos in range(hit, len(tokens)):
            logits = self.step(tokens[pos], pos)
        if connector is not None and save:
            connector.save_kv(tokens, self.cache, hit)
            connector.wait_for_save()
        assert logits is not None
        return logits, hit

    def generate(self, tokens: Sequence[int], steps: int,
                 connector: Optional[KvcdConnector] = None) -> List[int]:
        logits, _ = self.prefill(tokens, connector)
        out, pos = [], len(tokens)
        for _ in range(steps):
            nxt = int(torch.argmax(logits))
            out.append(nxt)
            if pos >= self.seq_len or len(out) == steps:
                break
            logits = self.step(nxt, pos)
            pos += 1
        return out


def fnv1a64(b: bytes) -> int:
    """FNV-1a over @b, as tools/engine.c fingerprints the weights."""
    h = 0xcbf29ce484222325
    prime, mask = 0x100000001b3, (1 << 64) - 1
    for byte in b:
        h = ((h ^ byte) * prime) & mask
    return h


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--socket")
    ap.add_argument("--ns", default="default")
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--no-kvcd", action="store_true")
    ap.add_argument("tokens", type=int, nargs="+")
    a = ap.parse_args(argv)
    m = Llama(a.model)
    conn = None
    if not a.no_kvcd:
        client = kvcd.Client(socket=a.socket, ns=a.ns, staging_size=8 << 20)
        conn = KvcdConnector(client, m.keyns(a.ns), m.layers, m.kv_heads, m.head_dim,
                             dtype=m.kv_dtype, chunk=a.chunk)
    print(" ".join(map(str, m.generate(a.tokens, a.steps, conn))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
