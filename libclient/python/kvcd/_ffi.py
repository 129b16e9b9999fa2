"""ctypes declarations of libkvcclient's public API (libclient/include/kvc.h).

The structures mirror kvc.h field for field; tests/test_client.py checks their sizes against
the ones the C library was built with."""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

c_u8, c_u16, c_u32, c_u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class Key(ctypes.Structure):
    """A 128-bit chained prefix key (struct kvc_key)."""

    _fields_ = [("hi", c_u64), ("lo", c_u64)]

    def __repr__(self) -> str:
        return f"Key({self.hi:#018x}, {self.lo:#018x})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and (self.hi, self.lo) == (other.hi, other.lo)

    def __hash__(self) -> int:
        return hash((self.hi, self.lo))


class Layout(ctypes.Structure):
    """Shape of a block (struct kvc_layout): [layers][K,V][tokens][kv_heads][head_dim]."""

    _fields_ = [("dtype", c_u8), ("codec", c_u8), ("layers", c_u16), ("kv_heads", c_u16),
                ("head_dim", c_u16), ("tokens", c_u32), ("reserved", c_u32)]

    def __repr__(self) -> str:
        return (f"Layout(dtype={self.dtype}, codec={self.codec}, layers={self.layers}, "
                f"kv_heads={self.kv_heads}, head_dim={self.head_dim}, tokens={self.tokens})")


class AttachOpts(ctypes.Structure):
    _fields_ = [("socket", ctypes.c_char_p), ("ns", ctypes.c_char_p),
                ("staging_size", ctypes.c_size_t), ("numa_node", ctypes.c_int),
                ("flags", ctypes.c_uint), ("spin_us", ctypes.c_uint),
                ("op_timeout_ms", ctypes.c_int), ("gpu", ctypes.c_int),
                ("gpu_staging_size", ctypes.c_size_t), ("gpu_mask", c_u64)]


class Req(ctypes.Structure):
    _fields_ = [("op", c_u8), ("flags", c_u8), ("gpu", ctypes.c_uint16), ("arg", c_u32),
                ("key", Key), ("layout", Layout), ("off", c_u64), ("len", c_u64)]


class Cqe(ctypes.Structure):
    _fields_ = [("ticket", c_u64), ("res", ctypes.c_int32), ("reserved", c_u32),
                ("value", c_u64), ("layout", Layout)]


class OpStats(ctypes.Structure):
    _fields_ = [("count", c_u64), ("errors", c_u64), ("p50_ns", c_u64), ("p99_ns", c_u64),
                ("p999_ns", c_u64)]


class NodeStats(ctypes.Structure):
    _fields_ = [("node", ctypes.c_int32), ("hugepages", c_u32), ("bytes_total", c_u64),
                ("bytes_used", c_u64), ("blocks", c_u64)]


class NsStats(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char * 64), ("policy", ctypes.c_char * 96),
                ("blocks", c_u64), ("bytes_in", c_u64), ("bytes_stored", c_u64),
                ("fallbacks", c_u64)]


class NsExt(ctypes.Structure):
    _fields_ = [("hits", c_u64), ("misses", c_u64), ("evictions", c_u64), ("quota", c_u64),
                ("charged", c_u64)]


class RemoteStats(ctypes.Structure):
    _fields_ = [("enabled", c_u32), ("nodes", c_u32), ("slots_ok", c_u64), ("puts", c_u64),
                ("gets", c_u64), ("hits", c_u64), ("misses", c_u64), ("errors", c_u64),
                ("dropped", c_u64), ("rejected", c_u64), ("bytes_out", c_u64),
                ("bytes_in", c_u64), ("get_p50_ns", c_u64), ("get_p99_ns", c_u64)]


class GpuDev(ctypes.Structure):
    _fields_ = [("ordinal", ctypes.c_int32), ("numa_node", ctypes.c_int32),
                ("mem_bytes", c_u64), ("name", ctypes.c_char * 64), ("pci", ctypes.c_char * 16)]


class GpuStats(ctypes.Structure):
    _fields_ = [("status", ctypes.c_int32), ("driver_version", ctypes.c_int32),
                ("ndev", c_u32), ("pad", c_u32), ("why", ctypes.c_char * 96),
                ("dev", GpuDev * 16)]


class GpuUse(ctypes.Structure):
    _fields_ = [("clients", c_u32), ("pad", c_u32), ("staging_bytes", c_u64), ("stores", c_u64),
                ("fetches", c_u64), ("encoded", c_u64), ("decoded", c_u64), ("bounced", c_u64),
                ("errors", c_u64), ("d2h_bytes", c_u64), ("h2d_bytes", c_u64), ("d2h_ns", c_u64),
                ("h2d_ns", c_u64)]


class GpuPool(ctypes.Structure):
    _fields_ = [("pool_bytes", c_u64), ("bytes_used", c_u64), ("blocks", c_u64), ("hits", c_u64),
                ("misses", c_u64), ("promotions", c_u64), ("demotions", c_u64), ("no_room", c_u64)]


class RecompressStats(ctypes.Structure):
    _fields_ = [("blocks", c_u64), ("busy", c_u64), ("kept", c_u64), ("bytes_before", c_u64),
                ("bytes_after", c_u64)]


class NsBases(ctypes.Structure):
    _fields_ = [("count", c_u32), ("newest", c_u32), ("bytes", c_u64)]


class Stats(ctypes.Structure):
    _fields_ = [("nnodes", c_u32), ("clients", c_u32), ("boot_token", c_u64),
                ("uptime_ms", c_u64), ("blocks", c_u64), ("bytes_used", c_u64),
                ("bytes_free", c_u64), ("bytes_in", c_u64), ("bytes_stored", c_u64),
                ("hits", c_u64), ("misses", c_u64), ("evictions", c_u64), ("pinned", c_u64),
                ("bad_requests", c_u64), ("checksum_failures", c_u64),
                ("metadata_bytes", c_u64), ("node", NodeStats * 16), ("op", OpStats * 13),
                ("nns", c_u32), ("pad", c_u32), ("ns", NsStats * 32), ("ns_ext", NsExt * 32),
                ("op_hist", (c_u64 * 64) * 13), ("version", c_u32), ("protocol", c_u32),
                ("remote", RemoteStats), ("gpu", GpuStats), ("gpu_use", GpuUse * 16),
                ("op_more", OpStats * 4), ("recompress", RecompressStats),
                ("ns_bases", NsBases * 32), ("gpu_pool", GpuPool * 16)]


def _find_library() -> str:
    """libkvcclient: $KVCD_LIB, the build tree this package sits in, then the system's."""
    env = os.environ.get("KVCD_LIB")
    if env:
        return env
    try:  # written by make install: the library installed beside this package
        from ._paths import LIBDIR

        if Path(LIBDIR, "libkvcclient.so.0").exists():
            return str(Path(LIBDIR, "libkvcclient.so.0"))
    except ImportError:
        pass
    here = Path(__file__).resolve()
    for up in here.parents:
        cand = up / "build" / "libkvcclient.so"
        if cand.exists():
            return str(cand)
    found = ctypes.util.find_library("kvcclient")
    return found or "libkvcclient.so.0"


lib = ctypes.CDLL(_find_library(), use_errno=True)

_P = ctypes.c_void_p
_decl = {
    "kvc_version": (ctypes.c_uint, []),
    "kvc_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "kvc_default_socket": (ctypes.c_char_p, []),
    "kvc_attach_opts_init": (None, [ctypes.POINTER(AttachOpts)]),
    "kvc_attach": (ctypes.c_int, [ctypes.POINTER(AttachOpts), ctypes.POINTER(_P)]),
    "kvc_detach": (None, [_P]),
    "kvc_staging": (_P, [_P, ctypes.POINTER(ctypes.c_size_t)]),
    "kvc_layout_bytes": (ctypes.c_size_t, [ctypes.POINTER(Layout)]),
    "kvc_key_chain_all": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int32),
                                         ctypes.c_size_t, ctypes.c_size_t,
                                         ctypes.POINTER(Key), ctypes.c_size_t]),
    "kvc_nop": (ctypes.c_int, [_P]),
    "kvc_store": (ctypes.c_int, [_P, ctypes.POINTER(Key), ctypes.POINTER(Layout),
                                 ctypes.c_size_t]),
    "kvc_store_chained": (ctypes.c_int, [_P, ctypes.POINTER(Key), ctypes.POINTER(Key),
                                         ctypes.POINTER(Layout), ctypes.c_size_t]),
    "kvc_req_parent": (ctypes.c_int, [_P, ctypes.POINTER(Req), ctypes.POINTER(Key)]),
    "kvc_fetch": (ctypes.c_int, [_P, ctypes.POINTER(Key), ctypes.c_size_t, ctypes.c_size_t,
                                 ctypes.POINTER(Layout)]),
    "kvc_lookup": (ctypes.c_int, [_P, ctypes.POINTER(Key), ctypes.c_size_t,
                                  ctypes.POINTER(ctypes.c_size_t)]),
    "kvc_delete": (ctypes.c_int, [_P, ctypes.POINTER(Key)]),
    "kvc_pin": (ctypes.c_int, [_P, ctypes.POINTER(Key), c_u32]),
    "kvc_unpin": (ctypes.c_int, [_P, ctypes.POINTER(Key)]),
    "kvc_policy": (ctypes.c_int, [_P, ctypes.c_char_p, ctypes.c_uint, ctypes.c_char_p,
                                  ctypes.c_size_t]),
    "kvc_stats": (ctypes.c_int, [_P, ctypes.POINTER(Stats), ctypes.c_size_t]),
    "kvc_stats_prometheus": (ctypes.c_size_t, [ctypes.POINTER(Stats), ctypes.c_char_p,
                                               ctypes.c_size_t]),
    "kvc_op_name": (ctypes.c_char_p, [ctypes.c_uint]),
    "kvc_submit": (ctypes.c_int, [_P, ctypes.POINTER(Req), ctypes.c_uint,
                                  ctypes.POINTER(c_u64)]),
    "kvc_wait": (ctypes.c_int, [_P, ctypes.POINTER(Cqe), ctypes.c_uint, ctypes.c_uint,
                                ctypes.c_int]),
    "kvc_evict": (ctypes.c_int, [_P, c_u32]),
    "kvc_calibrate": (ctypes.c_int, [_P, c_u32, c_u32, ctypes.POINTER(c_u64)]),
    "kvc_calibrate_model": (ctypes.c_int, [_P, c_u32, c_u32, c_u32,
                                           ctypes.POINTER(ctypes.c_float), c_u32,
                                           ctypes.POINTER(c_u64)]),
    "kvc_recompress": (ctypes.c_int, [_P, ctypes.POINTER(Key), ctypes.c_size_t, c_u32,
                                      ctypes.c_uint8, ctypes.c_size_t, ctypes.c_size_t,
                                      ctypes.POINTER(c_u64)]),
    "kvc_gpu_staging": (c_u64, [_P, ctypes.c_uint, ctypes.POINTER(ctypes.c_size_t)]),
    "kvc_gpu_index": (ctypes.c_int, [_P, ctypes.c_int]),
    "kvc_store_gpu": (ctypes.c_int, [_P, ctypes.c_uint, ctypes.POINTER(Key),
                                     ctypes.POINTER(Layout), ctypes.c_size_t]),
    "kvc_fetch_gpu": (ctypes.c_int, [_P, ctypes.c_uint, ctypes.POINTER(Key), ctypes.c_size_t,
                                     ctypes.c_size_t, ctypes.POINTER(Layout)]),
}
for _name, (_res, _args) in _decl.items():
    _f = getattr(lib, _name)
    _f.restype = _res
    _f.argtypes = _args
