"""A KV connector for Python engines, shaped like the ones vLLM and SGLang define.

Scheduler side: :meth:`KvcdConnector.get_num_new_matched_tokens` says how many leading tokens
of a request kvcd holds (a LOOKUP of its chained chunk keys; no side effect). Worker side:
:meth:`start_load_kv` fetches those chunks in one batch, :meth:`wait_for_layer_load` puts one
layer of them into the engine's cache (layer-granular, so an engine can run layer i while
layer i + 1 is copied), :meth:`save_kv_layer` collects a layer of new chunks after its forward
and :meth:`save_kv` a whole request's, both sent in one batch, and :meth:`wait_for_save`
waits for those STOREs.

The engine's cache is one tensor ``[layers, 2, seq_len, kv_heads, head_dim]`` (K then V);
kvcd's blocks are chunks of ``chunk`` tokens, ``[layers, 2, chunk, kv_heads, head_dim]`` in the
cache dtype, the layout the C engine (tools/engine.c) stores, so either engine hits the other's.

A cache on a CUDA device whose client has GPU staging there (``Client(gpu=True)``) moves on the
GPU: chunks are copied into GPU staging and stored from it, and fetched into it and copied into
the cache, never through host memory (kvcd encodes and decodes on the GPU where the namespace's
codec runs there). The fetched chunks are views of GPU staging until the next save.
"""
from __future__ import annotations

import ctypes
import errno
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import (BF16, F16, F32, OP_FETCH, OP_STORE, Client, Key, KvcdError, Layout,
               Req, key_chain)

REQ_GPU = 16  # KVC_REQ_GPU: the request addresses GPU staging
_TORCH_DT = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}

_DT = {"f32": (F32, np.float32), "f16": (F16, np.float16), "bf16": (BF16, np.uint16)}


def _to_cache_dtype(x: Any, dtype: str) -> np.ndarray:
    """float values -> the block's element type (bf16 as its uint16 bits, rounded to even)."""
    a = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    if dtype == "f32":
        return a
    if dtype == "f16":
        return a.astype(np.float16)
    u = a.view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _from_cache_dtype(a: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


class KvcdConnector:
    """Loads and saves a request's KV through kvcd, a chunk of ``chunk`` tokens per block.

    ``client``: an attached :class:`kvcd.Client` (its namespace is the model's); ``keyns``:
    the string the keys are salted with (the C engine's is ``ns/fingerprint/dtype``)."""

    def __init__(self, client: Client, keyns: str, layers: int, kv_heads: int, head_dim: int,
                 dtype: str = "f16", chunk: int = 16):
        if dtype not in _DT:
            raise ValueError("dtype: f32, f16 or bf16")
        self.client, self.keyns, self.chunk, self.dtype = client, keyns, chunk, dtype
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.layout = Layout(dtype=_DT[dtype][0], layers=layers, kv_heads=kv_heads,
                             head_dim=head_dim, tokens=chunk)
        self.block_bytes = layers * 2 * chunk * kv_heads * head_dim * np.dtype(_DT[dtype][1]).itemsize
        self._loaded: List[Optional[np.ndarray]] = []
        self._load_at: Dict[str, Any] = {}
        self._pending_save: List[int] = []
        self._layer_buf: Dict[int, Any] = {}
        self.saved_chunks = 0

    # -- scheduler side --
    def get_num_new_matched_tokens(self, tokens: Sequence[int],
                                   num_computed_tokens: int = 0) -> int:
        """Leading tokens of ``tokens`` kvcd holds beyond ``num_computed_tokens`` (whole
        chunks). No side effect: it may be asked again."""
        keys = key_chain(self.keyns, tokens, self.chunk)
        hit = self.client.lookup(keys) * self.chunk if keys else 0
        return max(0, hit - num_computed_tokens)

    # -- GPU staging --
    def _gpu(self, t: Any) -> Optional[int]:
        """The CUDA device of tensor ``t`` when this client has GPU staging there, else None."""
        if not getattr(t, "is_cuda", False):
            return None
        dev = t.device.index or 0
        try:
            self.client.gpu_index(dev)
        except KvcdError:
            return None
        return dev

    def _gpu_fetch(self, keys: List[Key], dev: int) -> List[Any]:
        import torch

        idx, stg = self.client.gpu_index(dev), self.client.gpu_staging(dev)
        stride = (self.block_bytes + 63) & ~63
        keys = keys[:stg.numel() // stride]
        reqs = [Req(op=OP_FETCH, flags=REQ_GPU, gpu=idx, key=k, off=i * stride,
                    len=self.block_bytes) for i, k in enumerate(keys)]
        shape = (self.layers, 2, self.chunk, self.kv_heads, self.head_dim)
        dt = getattr(torch, _TORCH_DT[self.dtype])
        out: List[Any] = []
        for i, c in enumerate(self.client.run(reqs) if reqs else []):
            if c.res == -errno.ENOENT:
                break
            if c.res < 0:
                raise KvcdError(c.res, "fetch")
            out.append(stg[i * stride:i * stride + self.block_bytes].view(dt).view(shape))
        return out

    # -- worker side: loading --
    def start_load_kv(self, tokens: Sequence[int], kv_cache: Any, num_tokens: int) -> None:
        """Fetch the first ``num_tokens`` tokens' chunks (one batch) for ``kv_cache``."""
        n = num_tokens // self.chunk
        keys = key_chain(self.keyns, tokens[:n * self.chunk], self.chunk)
        dev = self._gpu(kv_cache)
        if dev is not None:
            self._loaded = self._gpu_fetch(keys, dev)
            self._load_at = {"cache": kv_cache, "tokens": len(self._loaded) * self.chunk}
            return
        blocks = self.client.fetch_many(keys, self.block_bytes) if keys else []
        got = 0
        for b in blocks:  # a chunk evicted since the lookup ends the prefix
            if b is None:
                break
            got += 1
        self._loaded = blocks[:got]
        self._load_at = {"cache": kv_cache, "tokens": got * self.chunk}

    def wait_for_layer_load(self, layer: int) -> int:
        """Put layer ``layer`` of the fetched chunks into the cache; returns the tokens
        loaded (fewer than asked when a chunk was evicted meanwhile)."""
        cache = self._load_at.get("cache")
        for i, b in enumerate(self._loaded):
            t0 = i * self.chunk
            if hasattr(b, "is_cuda"):  # a view of GPU staging: a copy on the device
                cache[layer, :, t0:t0 + self.chunk] = b[layer].to(cache.dtype)
                continue
            kv = _from_cache_dtype(b[layer], self.dtype)  # [2, chunk, heads, dim]
            cache[layer, :, t0:t0 + self.chunk] = _as_like(cache, kv)
        return int(self._load_at.get("tokens", 0))

    # -- worker side: saving --
    def save_kv_layer(self, layer: int, kv_layer: Any) -> None:
        """After layer ``layer``'s forward: its ``[2, seq, kv_heads, head_dim]`` cache, to be
        sent with the others by :meth:`save_kv`."""
        self._layer_buf[layer] = kv_layer

    def save_kv(self, tokens: Sequence[int], kv_cache: Any = None, start_token: int = 0) -> int:
        """Queue the STOREs of every full chunk of ``tokens`` from ``start_token`` on (chunks
        kvcd already holds are skipped). ``kv_cache`` is the whole cache, or None when each
        layer came through :meth:`save_kv_layer`. Returns the chunks queued."""
        keys = key_chain(self.keyns, tokens, self.chunk)
        first = start_token // self.chunk
        dev = self._gpu(kv_cache if kv_cache is not None else
                        next(iter(self._layer_buf.values()), None))
        if dev is not None:
            return self._gpu_save(keys, first, kv_cache, dev)
        reqs, off = [], 0
        stg = self.client.staging
        for i in range(first, len(keys)):
            t0 = i * self.chunk
            if kv_cache is not None:
                blk = kv_cache[:, :, t0:t0 + self.chunk]
            else:
                blk = _stack([self._layer_buf[l][:, t0:t0 + self.chunk]
                              for l in range(self.layers)])
            data = np.ascontiguousarray(_to_cache_dtype(blk, self.dtype)).reshape(-1).view(np.uint8)
            if off + data.size + 8 + ctypes.sizeof(Key) > stg.size:  # room for the parent
                break
            stg[off:off + data.size] = data
            r = Req(op=OP_STORE, key=keys[i], layout=self.layout, off=off, len=data.size)
            if i:  # named after the block: kvcd evicts chains from their tails
                self.client.name_parent(r, keys[i - 1])
            reqs.append(r)
            off += (r.len + 63) & ~63
        self._pending_save = self.client.submit(reqs)
        self._pending_reqs = len(reqs)
        self._layer_buf.clear()
        return len(reqs)

    def _gpu_save(self, keys: List[Key], first: int, kv_cache: Any, dev: int) -> int:
        import torch

        idx, stg = self.client.gpu_index(dev), self.client.gpu_staging(dev)
        dt = getattr(torch, _TORCH_DT[self.dtype])
        reqs, off = [], 0
        for i in range(first, len(keys)):
            t0 = i * self.chunk
            if kv_cache is not None:
                blk = kv_cache[:, :, t0:t0 + self.chunk]
            else:
                blk = torch.stack([self._layer_buf[l][:, t0:t0 + self.chunk]
                                   for l in range(self.layers)])
            data = blk.to(dt).contiguous().view(-1).view(torch.uint8)
            if off + data.numel() + 8 + ctypes.sizeof(Key) > stg.numel():  # and the parent
                break
            stg[off:off + data.numel()].copy_(data)
            r = Req(op=OP_STORE, flags=REQ_GPU, gpu=idx, key=keys[i], layout=self.layout,
                    off=off, len=data.numel())
            if i:  # named after the block, in GPU staging (the library copies it there)
                self.client.name_parent(r, keys[i - 1])
            reqs.append(r)
            off += (r.len + 63) & ~63
        torch.cuda.synchronize(dev)  # the bytes are in GPU staging before kvcd reads them
        self._pending_save = self.client.submit(reqs)
        self._pending_reqs = len(reqs)
        self._layer_buf.clear()
        return len(reqs)

    def wait_for_save(self) -> int:
        """Wait for the queued STOREs; returns how many stored a new chunk."""
        want, new = set(self._pending_save), 0
        while want:
            for c in self.client.wait(1, 64):
                if c.ticket in want:
                    want.discard(c.ticket)
                    if c.res == 0:
                        new += 1
                    elif c.res != -errno.EEXIST:
                        raise KvcdError(c.res, "store")
        self._pending_save = []
        self.saved_chunks += new
        return new


def _as_like(cache: Any, a: np.ndarray) -> Any:
    if hasattr(cache, "detach"):
        import torch

        return torch.from_numpy(np.ascontiguousarray(a))
    return a


def _stack(parts: List[Any]) -> Any:
    if parts and hasattr(parts[0], "detach"):
        import torch

        return torch.stack(parts)
    return np.stack(parts)
