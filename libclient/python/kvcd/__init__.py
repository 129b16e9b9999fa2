"""kvcd from Python: a ctypes binding of libkvcclient.

A :class:`Client` attaches to kvcd once; blocks move through its staging buffer, which numpy
sees without a copy (:attr:`Client.staging`). Keys are the C library's chained prefix keys
(:func:`key_chain`), so a prefix stored by a C engine (kvc-llama) is a hit for a Python one and
the other way round.

    import numpy as np, kvcd
    with kvcd.Client(ns="my-model") as c:
        keys = kvcd.key_chain("my-model", tokens, chunk=16)
        hits = c.lookup(keys)                    # leading chunks kvcd holds
        c.store(keys[0], kv)                     # kv: [layers, 2, tokens, kv_heads, head_dim]
        block = c.fetch(keys[0])                 # a numpy array of that shape
"""
from __future__ import annotations

import ctypes
import errno as _errno
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._ffi import AttachOpts, Cqe, Key, Layout, Req, Stats, lib

__all__ = ["Client", "KvcdError", "Key", "Layout", "Sparse", "key_chain", "layout_of",
           "__version__", "F32", "F16", "BF16", "OP_STORE", "OP_FETCH", "OP_LOOKUP",
           "OP_DELETE"]

_v = lib.kvc_version()
__version__ = f"{_v >> 16}.{(_v >> 8) & 0xff}.{_v & 0xff}"  # the C library's: one source

F32, F16, BF16 = 1, 2, 3
OP_NOP, OP_STORE, OP_FETCH, OP_LOOKUP, OP_DELETE, OP_PIN, OP_UNPIN = range(7)
REQ_AUX = 4  # STORE: a struct kvc_aux and its arrays follow the block (KVC_REQ_AUX)
REQ_PARENT = 8  # STORE: the parent key follows the block (KVC_REQ_PARENT)
AUX_MAGIC, AUX_ATTN, AUX_QUERIES = 0x5841564B, 1, 2  # struct kvc_aux
SPARSE_MAGIC, CODEC_SPARSE = 0x3153564B, 0x80  # struct kvc_sparse
GPU_STATUS = {0: "off", 1: "no driver", 2: "driver error", 3: "no device", 4: "ready"}
ATTACH_BUSY_POLL = 1
POLICY_NAMESPACE = 1

_NP = {F32: np.dtype(np.float32), F16: np.dtype(np.float16)}


class KvcdError(OSError):
    """A call kvcd or the library refused: ``errno`` and kvc_strerror's words."""

    def __init__(self, err: int, what: str = "", detail: str = ""):
        msg = lib.kvc_strerror(-abs(err)).decode()
        if detail:
            msg = f"{msg}: {detail}"
        super().__init__(abs(err), f"{what}: {msg}" if what else msg)


def _check(res: int, what: str, detail: str = "") -> int:
    if res < 0:
        raise KvcdError(res, what, detail)
    return res


def _dtype_code(dt: Any) -> int:
    name = str(dt).replace("torch.", "")
    if name in ("float32", "f32"):
        return F32
    if name in ("float16", "f16", "half"):
        return F16
    if name in ("bfloat16", "bf16"):
        return BF16
    raise ValueError(f"kvcd stores float32, float16 or bfloat16 blocks, not {dt}")


def layout_of(shape: Sequence[int], dtype: Any) -> Layout:
    """The layout of a block of shape [layers, 2, tokens, kv_heads, head_dim] (K then V)."""
    if len(shape) != 5 or shape[1] != 2:
        raise ValueError(f"a block is [layers, 2, tokens, kv_heads, head_dim], not {shape}")
    layers, _, tokens, heads, dim = (int(x) for x in shape)
    return Layout(dtype=_dtype_code(dtype), layers=layers, kv_heads=heads, head_dim=dim,
                  tokens=tokens)


def key_chain(ns: str, tokens: Sequence[int], chunk: int) -> List[Key]:
    """Keys of every full chunk of ``chunk`` tokens, chained from the first (kvc_key_chain_all:
    the same bytes in every process and language)."""
    toks = np.ascontiguousarray(np.asarray(tokens, dtype=np.int32))
    n = len(toks) // chunk if chunk > 0 else 0
    if chunk <= 0:
        raise ValueError("chunk must be positive")
    keys = (Key * max(n, 1))()
    got = lib.kvc_key_chain_all(ns.encode(), toks.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                                len(toks), chunk, keys, n)
    _check(got, "key_chain")
    return [Key(k.hi, k.lo) for k in keys[:got]]


def _as_numpy(a: Any) -> np.ndarray:
    """A numpy view of an array or a CPU torch tensor (bfloat16 as its raw uint16 bits)."""
    if isinstance(a, np.ndarray):
        return a
    mod = type(a).__module__
    if mod.startswith("torch"):
        import torch

        t = a.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.numpy()
    return np.asarray(a)


class Sparse:
    """A block stored under a token-selection policy, as FETCH gives it back (struct
    kvc_sparse): per (layer, KV head) the tokens kept, each one's attention bias (0 unless
    dropped tokens were merged into it) and their K and V rows. Dropped tokens are masked
    out of attention by the engine.

    ``tokens``: the block's tokens; ``index[l][h]``, ``bias[l][h]``: arrays of the kept
    tokens' block-relative positions (ascending) and biases; ``k[l][h]``, ``v[l][h]``:
    [kept, head_dim] arrays in the block's dtype (bfloat16 as uint16 bits)."""

    def __init__(self, raw: np.ndarray, lay: Layout):
        hdr = raw[:16].view(np.uint32)
        if int(hdr[0]) != SPARSE_MAGIC:
            raise KvcdError(_errno.EBADMSG, "fetch", "not a sparse block")
        total, self.tokens = int(hdr[1]), int(hdr[2])
        lh, d = lay.layers * lay.kv_heads, lay.head_dim
        es = 2 if lay.dtype in (F16, BF16) else 4
        dt = np.dtype(np.uint16) if lay.dtype == BF16 else _NP[lay.dtype]
        o = 16
        counts = raw[o:o + 4 * lh].view(np.uint32).astype(np.int64)
        o += 4 * lh
        tok = raw[o:o + 4 * total].view(np.uint32)
        o += 4 * total
        bias = raw[o:o + 4 * total].view(np.float32)
        o += 4 * total
        self.index, self.bias, self.k, self.v = [], [], [], []
        t0 = 0
        for u in range(lh):
            n = int(counts[u])
            if u % lay.kv_heads == 0:
                for lst in (self.index, self.bias, self.k, self.v):
                    lst.append([])
            rows = raw[o:o + 2 * n * d * es].view(dt).reshape(2, n, d)
            self.index[-1].append(tok[t0:t0 + n].astype(np.int64))
            self.bias[-1].append(bias[t0:t0 + n].copy())
            self.k[-1].append(rows[0].copy())
            self.v[-1].append(rows[1].copy())
            o += 2 * n * d * es
            t0 += n

    def dense(self) -> Tuple[np.ndarray, np.ndarray]:
        """The block as [layers, 2, tokens, kv_heads, head_dim] with dropped rows zero, and the
        kept mask [layers, kv_heads, tokens]."""
        layers, heads = len(self.k), len(self.k[0])
        d, dt = self.k[0][0].shape[1], self.k[0][0].dtype
        out = np.zeros((layers, 2, self.tokens, heads, d), dtype=dt)
        mask = np.zeros((layers, heads, self.tokens), dtype=bool)
        for li in range(layers):
            for h in range(heads):
                idx = self.index[li][h]
                out[li, 0, idx, h] = self.k[li][h]
                out[li, 1, idx, h] = self.v[li][h]
                mask[li, h, idx] = True
        return out, mask


class Client:
    """One attachment to kvcd: rings and a staging buffer shared with the daemon.

    ``socket``: the daemon's UNIX socket (None: $KVCD_SOCKET, then the default paths);
    ``ns``: the namespace (model fingerprint), at most 63 bytes; ``staging_size``: bytes of the
    staging buffer (0: kvcd's default); ``op_timeout_ms``: synchronous calls give up after this
    long (0: the library's default, < 0: never); ``busy_poll``: waits spin and never sleep
    (for a thread with a core of its own); otherwise a wait spins at most ``spin_us`` (0: the
    library's 500) or sleeps at once, whichever the library measures to pay; ``gpu``: GPU
    staging too, on each device of
    ``gpu_mask`` (0: every one kvcd serves), ``gpu_staging_size`` bytes each (0: kvcd's
    default). Raises :class:`KvcdError` when kvcd refuses (ENODEV: no GPU staging to be had).
    """

    def __init__(self, socket: Optional[str] = None, ns: str = "default", staging_size: int = 0,
                 numa_node: int = -1, busy_poll: bool = False, op_timeout_ms: int = 0,
                 gpu: bool = False, gpu_staging_size: int = 0, gpu_mask: int = 0,
                 spin_us: int = 0):
        o = AttachOpts()
        lib.kvc_attach_opts_init(ctypes.byref(o))
        self._sock = socket.encode() if socket else None
        self._ns = ns.encode()
        o.socket = self._sock
        o.ns = self._ns
        o.staging_size = staging_size
        o.numa_node = numa_node
        o.flags = ATTACH_BUSY_POLL if busy_poll else 0
        o.spin_us = spin_us
        o.op_timeout_ms = op_timeout_ms
        o.gpu = 1 if gpu else 0
        o.gpu_staging_size = gpu_staging_size
        o.gpu_mask = gpu_mask
        self._c = ctypes.c_void_p()
        _check(lib.kvc_attach(ctypes.byref(o), ctypes.byref(self._c)), "attach",
               socket or lib.kvc_default_socket().decode())
        self.ns = ns
        size = ctypes.c_size_t()
        ptr = lib.kvc_staging(self._c, ctypes.byref(size))
        self._staging = np.ctypeslib.as_array((ctypes.c_uint8 * size.value).from_address(ptr))

    # -- lifetime --
    def close(self) -> None:
        """Detach; requests in flight are abandoned. Idempotent."""
        if self._c:
            lib.kvc_detach(self._c)
            self._c = ctypes.c_void_p()
            self._staging = np.zeros(0, np.uint8)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def _live(self) -> ctypes.c_void_p:
        if not self._c:
            raise KvcdError(_errno.EBADF, "closed client")
        return self._c

    # -- the staging buffer --
    @property
    def staging(self) -> np.ndarray:
        """The staging buffer as a uint8 array: writes go straight to what STORE reads."""
        return self._staging

    def view(self, off: int, layout: Layout) -> np.ndarray:
        """Staging bytes at ``off`` seen as a block of ``layout`` (no copy)."""
        n = lib.kvc_layout_bytes(ctypes.byref(layout))
        raw = self._staging[off:off + n]
        shape = (layout.layers, 2, layout.tokens, layout.kv_heads, layout.head_dim)
        if layout.dtype == BF16:
            return raw.view(np.uint16).reshape(shape)
        return raw.view(_NP[layout.dtype]).reshape(shape)

    def _put(self, block: Any, off: int) -> Layout:
        arr = _as_numpy(block)
        dt = block.dtype if type(block).__module__.startswith("torch") else arr.dtype
        if arr.dtype == np.uint16 and "bfloat16" in str(dt):
            lay = layout_of(arr.shape, "bfloat16")
        else:
            lay = layout_of(arr.shape, dt)
        n = arr.nbytes
        if off + n > self._staging.size:
            raise KvcdError(_errno.ENOSPC, "store", f"{n} bytes at {off} exceed staging")
        dst = self._staging[off:off + n]
        if not (arr.ctypes.data == dst.ctypes.data):  # already in place: no copy
            dst[:] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        return lay

    # -- requests --
    def nop(self) -> None:
        _check(lib.kvc_nop(self._live()), "nop")

    def write_aux(self, off: int, attn: Any = None, queries: Any = None, lse: Any = None,
                  q_pos: int = 0) -> int:
        """Write what token selection reads (struct kvc_aux and its arrays) to staging at
        ``off`` (a multiple of 4); returns its bytes. ``attn``: [layers, kv_heads, tokens],
        each token's accumulated attention (H2O); ``queries``: [layers, q_heads, window,
        head_dim] post-RoPE queries of an observation window whose first query sits at
        block-relative position ``q_pos``, with ``lse`` [layers, q_heads, window] their
        log-sum-exp over every key they attended (SnapKV)."""
        what, parts = 0, []
        if attn is not None:
            what |= AUX_ATTN
            parts.append(np.ascontiguousarray(_as_numpy(attn), dtype=np.float32))
        qh = win = 0
        if queries is not None:
            q = np.ascontiguousarray(_as_numpy(queries), dtype=np.float32)
            ls = np.ascontiguousarray(_as_numpy(lse), dtype=np.float32)
            if q.ndim != 4 or ls.shape != q.shape[:3]:
                raise ValueError("queries are [layers, q_heads, window, head_dim] and lse "
                                 "[layers, q_heads, window]")
            what |= AUX_QUERIES
            qh, win = q.shape[1], q.shape[2]
            parts += [q, ls]
        if not what or off % 4:
            raise ValueError("write_aux needs attn or queries, at a multiple of 4")
        hdr = np.zeros(8, dtype=np.uint32)
        hdr[0], hdr[1] = AUX_MAGIC, what
        hdr[2] = qh | (win << 16)
        hdr[3] = np.uint32(np.int32(q_pos).view(np.uint32))
        n = 32 + sum(a.nbytes for a in parts)
        if off + n > self._staging.size:
            raise KvcdError(_errno.ENOSPC, "aux", f"{n} bytes at {off} exceed staging")
        self._staging[off:off + 32] = hdr.view(np.uint8)
        o = off + 32
        for a in parts:
            self._staging[o:o + a.nbytes] = a.reshape(-1).view(np.uint8)
            o += a.nbytes
        return n

    def store(self, key: Key, block: Any, off: int = 0, policy_slot: int = 0,
              parent: Optional[Key] = None, pos: int = 0, **aux: Any) -> None:
        """Store ``block`` ([layers, 2, tokens, kv_heads, head_dim], float32/16 or bfloat16;
        numpy or torch) under ``key``. It is copied into staging at ``off`` unless it already
        is a view of that place. ``policy_slot``: a slot :meth:`policy` returned (0: the
        namespace's policy). ``parent``: the key of the chunk before it in its chain, which
        kvcd's eviction uses to keep prefixes whole (written to staging after the block).
        ``pos``: the block's first token's position in its sequence. ``attn``, ``queries``,
        ``lse``, ``q_pos``: what a token-selection policy reads (:meth:`write_aux`), written
        after the block."""
        lay = self._put(block, off)
        lay.codec = policy_slot
        if aux or pos:
            n = lib.kvc_layout_bytes(ctypes.byref(lay))
            at = (off + n + 3) & ~3
            if at != off + n and aux:
                raise ValueError("the block's bytes must end on a multiple of 4 for aux")
            ab = self.write_aux(at, **aux) if aux else 0
            r = Req(op=OP_STORE, flags=REQ_AUX if aux else 0, key=key, layout=lay, off=off,
                    len=n + ab, arg=pos)
            if parent is not None:
                self.name_parent(r, parent)
            c = self.run([r])[0]
            _check(c.res, "store")
            return
        if parent is None:
            _check(lib.kvc_store(self._live(), ctypes.byref(key), ctypes.byref(lay), off),
                   "store")
        else:
            _check(lib.kvc_store_chained(self._live(), ctypes.byref(key), ctypes.byref(parent),
                                         ctypes.byref(lay), off), "store")

    def name_parent(self, req: Req, parent: Key) -> None:
        """Name STORE ``req``'s parent in its chain (kvc_req_parent): the key goes into
        staging after what ``req`` covers, and ``req`` grows to take it in."""
        _check(lib.kvc_req_parent(self._live(), ctypes.byref(req), ctypes.byref(parent)),
               "store")

    def fetch(self, key: Key, off: int = 0, copy: bool = True,
              torch: bool = False) -> Optional[Any]:
        """The block under ``key`` as [layers, 2, tokens, kv_heads, head_dim], or None when
        kvcd does not hold it. ``copy=False`` returns a view of staging (valid until the next
        request naming that range); ``torch=True`` a torch tensor. A block stored under a
        token-selection policy comes back as a :class:`Sparse`."""
        lay = Layout()
        res = lib.kvc_fetch(self._live(), ctypes.byref(key), off, self._staging.size - off,
                            ctypes.byref(lay))
        if res == -_errno.ENOENT:
            return None
        _check(res, "fetch")
        if lay.codec & CODEC_SPARSE:  # the kept tokens, copied out whatever ``copy``
            return Sparse(self._staging[off:], lay)
        arr = self.view(off, lay)
        if copy:
            arr = arr.copy()
        if torch:
            import torch as _t

            if lay.dtype == BF16:
                return _t.from_numpy(arr.view(np.int16)).view(_t.bfloat16)
            return _t.from_numpy(arr)
        return arr

    # -- GPU staging (torch) --
    def gpu_index(self, device: int = 0) -> int:
        """kvcd's index of this process's CUDA device ``device``; raises ENODEV when this
        client has no GPU staging there."""
        return _check(lib.kvc_gpu_index(self._live(), device), "gpu_index")

    def gpu_staging(self, device: int = 0) -> Any:
        """This client's GPU staging on CUDA device ``device`` as a uint8 torch tensor on that
        device, aliasing it (no copy): what :meth:`store_gpu` reads and :meth:`fetch_gpu`
        writes."""
        import torch as _t

        idx = self.gpu_index(device)
        size = ctypes.c_size_t()
        ptr = lib.kvc_gpu_staging(self._live(), idx, ctypes.byref(size))

        class _View:  # the CUDA array interface: torch aliases the memory
            __cuda_array_interface__ = {"shape": (size.value,), "typestr": "|u1",
                                        "data": (ptr, False), "version": 3}

        return _t.as_tensor(_View(), device=f"cuda:{device}")

    def store_gpu(self, key: Key, block: Any, off: int = 0, policy_slot: int = 0) -> None:
        """Store the CUDA tensor ``block`` ([layers, 2, tokens, kv_heads, head_dim], float32,
        float16 or bfloat16) under ``key``: copied on the device into GPU staging at ``off``
        (a multiple of 16), then kvcd takes it from there, encoding on the GPU where the
        policy's codec runs there."""
        import torch as _t

        dev = block.device.index or 0
        flat = block.contiguous().view(-1).view(_t.uint8)
        stg = self.gpu_staging(dev)
        if off + flat.numel() > stg.numel():
            raise KvcdError(_errno.ENOSPC, "store_gpu", f"{flat.numel()} bytes at {off}")
        stg[off:off + flat.numel()].copy_(flat)
        _t.cuda.synchronize(dev)  # the bytes are there before kvcd reads them
        lay = layout_of(tuple(block.shape), str(block.dtype).replace("torch.", ""))
        lay.codec = policy_slot
        _check(lib.kvc_store_gpu(self._live(), self.gpu_index(dev), ctypes.byref(key),
                                 ctypes.byref(lay), off), "store_gpu")

    def fetch_gpu(self, key: Key, device: int = 0, off: int = 0, copy: bool = True) -> Any:
        """The block under ``key`` as a CUDA tensor on ``device`` ([layers, 2, tokens,
        kv_heads, head_dim]), decoded on the GPU where its codec runs there; None when kvcd
        does not hold it. ``copy=False`` returns a view of GPU staging (valid until the next
        request naming that range)."""
        import torch as _t

        stg = self.gpu_staging(device)
        lay = Layout()
        res = lib.kvc_fetch_gpu(self._live(), self.gpu_index(device), ctypes.byref(key), off,
                                stg.numel() - off, ctypes.byref(lay))
        if res == -_errno.ENOENT:
            return None
        _check(res, "fetch_gpu")
        if lay.codec & 0x80:
            raise KvcdError(_errno.EPROTO, "fetch_gpu",
                            "the block holds selected tokens (the sparse form of kvc.h): "
                            "this binding reads dense blocks only")
        dt = {F32: _t.float32, F16: _t.float16, BF16: _t.bfloat16}[lay.dtype]
        n = lib.kvc_layout_bytes(ctypes.byref(lay))
        shape = (lay.layers, 2, lay.tokens, lay.kv_heads, lay.head_dim)
        out = stg[off:off + n].view(dt).view(shape)
        return out.clone() if copy else out

    def lookup(self, keys: Sequence[Key]) -> int:
        """How many leading keys of ``keys`` kvcd holds."""
        arr = (Key * max(len(keys), 1))(*keys)
        hits = ctypes.c_size_t()
        _check(lib.kvc_lookup(self._live(), arr, len(keys), ctypes.byref(hits)), "lookup")
        return hits.value

    def delete(self, key: Key) -> bool:
        """Remove ``key``; False when kvcd did not hold it."""
        res = lib.kvc_delete(self._live(), ctypes.byref(key))
        if res == -_errno.ENOENT:
            return False
        _check(res, "delete")
        return True

    def pin(self, key: Key, lease_ms: int = 0) -> None:
        _check(lib.kvc_pin(self._live(), ctypes.byref(key), lease_ms), "pin")

    def unpin(self, key: Key) -> None:
        _check(lib.kvc_unpin(self._live(), ctypes.byref(key)), "unpin")

    def policy(self, policy: str, namespace: bool = False) -> int:
        """Register a compression policy (docs/policies.md) and return its slot for
        :meth:`store`; ``namespace=True`` sets the namespace's policy instead (admin)."""
        why = ctypes.create_string_buffer(160)
        res = lib.kvc_policy(self._live(), policy.encode(),
                             POLICY_NAMESPACE if namespace else 0, why, len(why))
        return _check(res, "policy", why.value.decode())

    def recompress(self, keys: Sequence[Key], pos: int = 0, policy_slot: int = 0,
                   aux_off: int = 0, aux_len: int = 0, **aux: Any) -> Tuple[int, int]:
        """Rewrite the chain ``keys`` (consecutive chunks stored raw, the first at ``pos``)
        under a policy (0: the namespace's, else a :meth:`policy` slot), selecting its tokens
        as one block holding the whole chain would. What select=h2o or snapkv reads is given
        as ``attn``/``queries``/``lse``/``q_pos`` for the whole chain (:meth:`write_aux`,
        written to staging at ``aux_off``), or already lies there, ``aux_len`` bytes.
        Returns (blocks rewritten, pool bytes freed)."""
        if aux:
            aux_len = self.write_aux(aux_off, **aux)
        arr = (Key * max(len(keys), 1))(*keys)
        saved = ctypes.c_uint64()
        res = lib.kvc_recompress(self._live(), arr, len(keys), pos, policy_slot, aux_off,
                                 aux_len, ctypes.byref(saved))
        return _check(res, "recompress"), saved.value

    def calibrate(self, blocks: int = 0, energy: int = 99, rope: int = 0,
                  weights=None) -> Tuple[int, int]:
        """Learn this namespace's basis for ``learned=on`` policies from up to ``blocks``
        of its raw blocks (0: as many as kvcd reads), keeping ``energy`` percent of their
        rows' energy; admin only. Returns (the basis's version, its bytes). With a large
        model kvcd works on it for seconds: give the Client an op_timeout_ms that allows it.

        For policies with ``kbits``/``vbits`` on the coefficients: ``weights``, shaped
        [layers][2] (K, V), says what an error in each layer costs the model (bits go where
        it costs most); ``rope``, the model's RoPE base, has keys learned and coded as they
        were before RoPE (positions from the chains the blocks were stored in)."""
        size = ctypes.c_uint64(0)
        if not rope and weights is None:
            res = lib.kvc_calibrate(self._live(), blocks, energy, ctypes.byref(size))
            return _check(res, "calibrate"), size.value
        w = None if weights is None else np.ascontiguousarray(weights, dtype=np.float32)
        if w is not None and (w.ndim != 2 or w.shape[1] != 2):
            raise ValueError("weights: one (K, V) pair per layer, shaped [layers][2]")
        res = lib.kvc_calibrate_model(
            self._live(), blocks, energy, rope,
            None if w is None else w.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
            0 if w is None else w.shape[0], ctypes.byref(size))
        return _check(res, "calibrate"), size.value

    def evict(self, mib: int = 0) -> int:
        """Evict unpinned blocks until ``mib`` MiB are free (0: all); admin only."""
        return _check(lib.kvc_evict(self._live(), mib), "evict")

    def stats(self) -> Dict[str, Any]:
        """kvcd's STATS as a dict: totals, ``nodes``, ``namespaces`` and ``ops``."""
        st = Stats()
        _check(lib.kvc_stats(self._live(), ctypes.byref(st), ctypes.sizeof(st)), "stats")
        out: Dict[str, Any] = {k: getattr(st, k) for k in (
            "clients", "uptime_ms", "blocks", "bytes_used", "bytes_free", "bytes_in",
            "bytes_stored", "hits", "misses", "evictions", "pinned", "bad_requests",
            "checksum_failures", "metadata_bytes")}
        out["hit_ratio"] = st.hits / (st.hits + st.misses) if st.hits + st.misses else 0.0
        out["version"] = f"{st.version >> 16}.{(st.version >> 8) & 0xff}.{st.version & 0xff}"
        out["nodes"] = [{"node": n.node, "hugepages": bool(n.hugepages),
                         "bytes_total": n.bytes_total, "bytes_used": n.bytes_used,
                         "blocks": n.blocks} for n in st.node[:st.nnodes]]
        out["namespaces"] = [{"name": s.name.decode(), "policy": s.policy.decode(),
                              "blocks": s.blocks, "bytes_in": s.bytes_in,
                              "bytes_stored": s.bytes_stored, "fallbacks": s.fallbacks,
                              "hits": e.hits, "misses": e.misses, "evictions": e.evictions,
                              "bases": {"count": b.count, "newest": b.newest,
                                        "bytes": b.bytes}}
                             for s, e, b in zip(st.ns[:st.nns], st.ns_ext[:st.nns],
                                                st.ns_bases[:st.nns])]
        r = st.remote
        out["remote"] = {k: getattr(r, k) for k, _ in r._fields_} if r.enabled else None
        g = st.gpu
        out["gpu"] = {"status": GPU_STATUS.get(g.status, str(g.status)), "why": g.why.decode(),
                      "driver_version": g.driver_version,
                      "devices": [{"device": d.ordinal, "name": d.name.decode(),
                                   "numa_node": d.numa_node, "mem_bytes": d.mem_bytes,
                                   "pci": d.pci.decode(),
                                   **{k: getattr(u, k) for k, _ in u._fields_ if k != "pad"},
                                   "pool": {k: getattr(p, k) for k, _ in p._fields_}}
                                  for d, u, p in zip(g.dev[:g.ndev], st.gpu_use[:g.ndev],
                                                     st.gpu_pool[:g.ndev])]}
        out["ops"] = {}
        for i in range(17):
            name = lib.kvc_op_name(i)
            if name:
                o = st.op[i] if i < 13 else st.op_more[i - 13]
                out["ops"][name.decode()] = {"count": o.count, "errors": o.errors,
                                             "p50_ns": o.p50_ns, "p99_ns": o.p99_ns}
        out["recompress"] = {k: getattr(st.recompress, k) for k, _ in st.recompress._fields_}
        return out

    # -- batches --
    def submit(self, reqs: Iterable[Req]) -> List[int]:
        """Queue requests with one doorbell; returns their tickets (fewer when the ring is
        full)."""
        rs = list(reqs)
        arr = (Req * max(len(rs), 1))(*rs)
        tickets = (ctypes.c_uint64 * max(len(rs), 1))()
        n = _check(lib.kvc_submit(self._live(), arr, len(rs), tickets), "submit")
        return list(tickets[:n])

    def wait(self, min_n: int = 1, max_n: int = 64, timeout_ms: int = -1) -> List[Cqe]:
        """Completions: at least ``min_n`` (unless the timeout passes), at most ``max_n``."""
        out = (Cqe * max_n)()
        n = lib.kvc_wait(self._live(), out, min_n, max_n, timeout_ms)
        if n == -_errno.ETIMEDOUT:
            return []
        _check(n, "wait")
        return [Cqe.from_buffer_copy(out[i]) for i in range(n)]

    def run(self, reqs: Sequence[Req]) -> List[Cqe]:
        """Submit ``reqs`` (more than the ring holds, if need be) and return their completions
        in the order of ``reqs``."""
        pending: Dict[int, int] = {}
        done: Dict[int, Cqe] = {}
        i = 0
        while i < len(reqs) or pending:
            if i < len(reqs):
                ts = self.submit(reqs[i:])
                for t in ts:
                    pending[t] = i
                    i += 1
            if pending:
                for c in self.wait(1, 64):
                    if c.ticket in pending:
                        done[pending.pop(c.ticket)] = c
        return [done[j] for j in range(len(reqs))]

    def store_many(self, items: Sequence[Tuple[Key, Any]], policy_slot: int = 0) -> None:
        """Store several blocks with one doorbell per ring-full: each is placed in staging
        one after the other."""
        reqs, off = [], 0
        for key, block in items:
            lay = self._put(block, off)
            lay.codec = policy_slot
            n = lib.kvc_layout_bytes(ctypes.byref(lay))
            reqs.append(Req(op=OP_STORE, key=key, layout=lay, off=off, len=n))
            off += (n + 63) & ~63
        for r, c in zip(reqs, self.run(reqs)):
            if c.res < 0 and c.res != -_errno.EEXIST:
                raise KvcdError(c.res, "store")

    def fetch_many(self, keys: Sequence[Key], block_bytes: int) -> List[Optional[np.ndarray]]:
        """Fetch several blocks of at most ``block_bytes`` each in one batch; None where kvcd
        does not hold the block. Returns copies."""
        reqs = [Req(op=OP_FETCH, key=k, off=i * block_bytes, len=block_bytes)
                for i, k in enumerate(keys)]
        if len(keys) * block_bytes > self._staging.size:
            raise KvcdError(_errno.ENOSPC, "fetch_many", "the blocks exceed staging")
        out: List[Optional[np.ndarray]] = []
        for i, c in enumerate(self.run(reqs)):
            if c.res == -_errno.ENOENT:
                out.append(None)
                continue
            if c.res < 0:
                raise KvcdError(c.res, "fetch")
            out.append(self.view(i * block_bytes, c.layout).copy())
        return out
