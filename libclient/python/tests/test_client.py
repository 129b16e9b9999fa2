"""The Python binding: attach, blocks through staging, keys equal to C's, errors, stats."""
from __future__ import annotations

import ctypes
import errno
import subprocess

import numpy as np
import pytest

import kvcd
from kvcd import _ffi
from conftest import BUILD


def test_one_version_everywhere():
    out = subprocess.run([str(BUILD / "kvcd"), "--version"], capture_output=True, text=True)
    assert out.stdout.split()[1] == kvcd.__version__


def test_structures_match_the_c_library():
    # sizes of kvc.h's structures on this ABI (x86-64), as the C compiler lays them out
    assert ctypes.sizeof(_ffi.Key) == 16
    assert ctypes.sizeof(_ffi.Layout) == 16
    assert ctypes.sizeof(_ffi.AttachOpts) == 64
    assert ctypes.sizeof(_ffi.Req) == 56
    assert ctypes.sizeof(_ffi.Cqe) == 40
    assert ctypes.sizeof(_ffi.Stats) == 20272


def block(dtype=np.float16, layers=2, tokens=16, heads=2, dim=32, seed=0):
    r = np.random.default_rng(seed)
    return r.standard_normal((layers, 2, tokens, heads, dim)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_store_and_fetch_arrays(daemon, dtype):
    with kvcd.Client(socket=daemon.sock, staging_size=1 << 20) as c:
        k = kvcd.Key(1, 2)
        b = block(dtype)
        c.store(k, b)
        got = c.fetch(k, off=65536)
        assert got.dtype == b.dtype and got.shape == b.shape
        assert np.array_equal(got, b)
        assert c.fetch(kvcd.Key(9, 9)) is None
        assert c.delete(k) and not c.delete(k)


@pytest.mark.parametrize("opts", [dict(busy_poll=True), dict(spin_us=1), dict()])
def test_every_way_of_waiting_gets_its_answers(daemon, opts):
    with kvcd.Client(socket=daemon.sock, staging_size=1 << 20, **opts) as c:
        b = block(np.float16)
        for i in range(200):
            c.store(kvcd.Key(7, i), b)
            assert np.array_equal(c.fetch(kvcd.Key(7, i)), b)
            assert c.delete(kvcd.Key(7, i))


def test_zero_copy_from_staging(daemon):
    with kvcd.Client(socket=daemon.sock, staging_size=1 << 20) as c:
        lay = kvcd.layout_of((2, 2, 16, 2, 32), "float16")
        v = c.view(4096, lay)  # the engine writes its KV straight into staging
        v[...] = block()
        c.store(kvcd.Key(5, 5), v, off=4096)
        assert np.array_equal(c.fetch(kvcd.Key(5, 5)), block())


def test_torch_tensors(daemon):
    torch = pytest.importorskip("torch")
    with kvcd.Client(socket=daemon.sock, staging_size=1 << 20) as c:
        t = torch.randn(2, 2, 16, 2, 32).to(torch.bfloat16)
        c.store(kvcd.Key(7, 7), t)
        got = c.fetch(kvcd.Key(7, 7), torch=True)
        assert got.dtype == torch.bfloat16 and torch.equal(got, t)


def test_keys_chain_like_the_c_library(daemon):
    toks = list(range(1, 50))
    keys = kvcd.key_chain("model-a", toks, 16)
    assert len(keys) == 3
    assert keys == kvcd.key_chain("model-a", toks + [7], 16)[:3], "a prefix keeps its keys"
    assert keys[0] != kvcd.key_chain("model-b", toks, 16)[0], "namespaces are salted in"
    assert keys[1] != kvcd.key_chain("model-a", [99] + toks[1:], 16)[1], "chained"
    with kvcd.Client(socket=daemon.sock, staging_size=1 << 20) as c:
        c.store(keys[0], block())
        c.store(keys[1], block(), parent=keys[0])  # named in the chain, for eviction
        assert np.array_equal(c.fetch(keys[1]), block())
        assert c.lookup(keys) == 2
        assert c.lookup(keys[1:]) == 1
        assert c.lookup([kvcd.Key(0, 0)] + keys) == 0


def test_errors_carry_errno_and_words(daemon):
    with kvcd.Client(socket=daemon.sock, staging_size=1 << 20) as c:
        c.store(kvcd.Key(1, 1), block())
        with pytest.raises(kvcd.KvcdError) as e:
            c.store(kvcd.Key(1, 1), block())
        assert e.value.errno == errno.EEXIST and "already stored" in str(e.value)
        with pytest.raises(kvcd.KvcdError) as e:
            c.policy("int9")
        assert e.value.errno == errno.EINVAL and "int9" in str(e.value) or "bits" in str(e.value)
        with pytest.raises(ValueError):
            c.store(kvcd.Key(2, 2), np.zeros((3, 3), np.float16))
    with pytest.raises(kvcd.KvcdError) as e:
        kvcd.Client(socket=daemon.sock + ".none")
    assert e.value.errno == errno.ENOENT


def test_gpu_devices_are_reported(daemon):
    with kvcd.Client(socket=daemon.sock, staging_size=1 << 20) as c:
        g = c.stats()["gpu"]
        assert g["status"] in ("no driver", "driver error", "no device", "ready")
        assert g["why"] and (g["status"] == "ready") == bool(g["devices"])


def test_policy_slots_and_stats(daemon):
    with kvcd.Client(socket=daemon.sock, ns="py-stats", staging_size=1 << 20) as c:
        slot = c.policy("int8")
        c.store(kvcd.Key(3, 3), block(), policy_slot=slot)
        got = c.fetch(kvcd.Key(3, 3))
        assert np.abs(got.astype(np.float32) - block().astype(np.float32)).max() < 0.1
        st = c.stats()
        assert st["blocks"] == 1 and st["hits"] == 1 and st["hit_ratio"] == 1.0
        ns = [n for n in st["namespaces"] if n["name"] == "py-stats"][0]
        assert ns["bytes_stored"] < ns["bytes_in"], "int8 is smaller"
        assert st["ops"]["store"]["count"] >= 1
        assert st["version"] == kvcd.__version__


def test_recompress_a_chain_stored_raw(daemon):
    with kvcd.Client(socket=daemon.sock, ns="py-recompress", staging_size=1 << 20) as c:
        keys = [kvcd.Key(200, i) for i in range(3)]
        for i, k in enumerate(keys):
            c.store(k, block(seed=i))
        slot = c.policy("int8")
        n, saved = c.recompress(keys, policy_slot=slot)
        assert n == 3 and saved > block().nbytes
        for i, k in enumerate(keys):
            got = c.fetch(k)
            assert not np.array_equal(got, block(seed=i)), "int8 now"
            assert np.abs(got.astype(np.float32) - block(seed=i).astype(np.float32)).max() < 0.1
        assert c.recompress(keys, policy_slot=slot) == (0, 0), "nothing raw is left"
        sel = c.policy("none:select=snapkv,keep=50%")
        with pytest.raises(kvcd.KvcdError) as e:
            c.recompress([kvcd.Key(201, 0)], policy_slot=sel)
        assert e.value.errno == errno.EINVAL, "snapkv needs the window's queries"
        st = c.stats()
        assert st["recompress"]["blocks"] >= 3
        assert st["ops"]["recompress"]["count"] == 3


def test_learned_basis_from_python(daemon):
    """calibrate() learns the namespace's basis from its raw blocks; a block whose rows lie in
    the calibration blocks' subspaces comes back from its coefficients alone."""
    r = np.random.default_rng(9)
    sub = r.standard_normal((2, 2, 2, 3, 32))  # [layer][K,V][head]: 3 directions of 32

    def lowrank(seed):
        z = np.random.default_rng(seed).standard_normal((2, 2, 16, 2, 3))
        return np.einsum("lxthk,lxhkd->lxthd", z, sub).astype(np.float16)

    with kvcd.Client(socket=daemon.sock, ns="py-learned", staging_size=1 << 20) as c:
        raw, lr = c.policy("none"), c.policy("none:rank=32,learned=on")
        with pytest.raises(kvcd.KvcdError) as e:
            c.store(kvcd.Key(300, 9), lowrank(9), policy_slot=lr)
        assert e.value.errno == errno.ENOKEY, "no basis yet"
        for i in range(4):
            c.store(kvcd.Key(300, i), lowrank(i), policy_slot=raw)
        version, size = c.calibrate(blocks=4, energy=99)
        assert version == 1 and 0 < size < 2 * 2 * 2 * 4 * 32 * 4 + 256
        want = lowrank(9)
        c.store(kvcd.Key(300, 9), want, policy_slot=lr)
        got = c.fetch(kvcd.Key(300, 9))
        assert isinstance(got, kvcd.Sparse)
        dense, mask = got.dense()
        assert mask.all()
        err = np.linalg.norm(dense.astype(np.float32) - want.astype(np.float32))
        assert err / np.linalg.norm(want.astype(np.float32)) < 0.01
        st = c.stats()
        assert st["ops"]["calibrate"]["count"] == 1
        ns = [n for n in st["namespaces"] if n["name"] == "py-learned"][0]
        assert ns["bases"] == {"count": 1, "newest": 1, "bytes": size}


def test_coded_coefficients_from_python(daemon):
    """calibrate(weights=) gives the basis the engine's weights: a kbits/vbits policy then
    codes a block within its bits' precision; weights for other layers are refused."""
    r = np.random.default_rng(11)
    sub = r.standard_normal((2, 2, 2, 3, 32))

    def lowrank(seed):
        z = np.random.default_rng(seed).standard_normal((2, 2, 16, 2, 3))
        return np.einsum("lxthk,lxhkd->lxthd", z, sub).astype(np.float16)

    with kvcd.Client(socket=daemon.sock, ns="py-coded", staging_size=1 << 20) as c:
        raw = c.policy("none")
        coded = c.policy("none:rank=32,learned=on,kbits=6,vbits=6")
        for i in range(4):
            c.store(kvcd.Key(301, i), lowrank(i), policy_slot=raw)
        with pytest.raises(kvcd.KvcdError) as e:
            c.calibrate(energy=99, weights=np.ones((3, 2)))
        assert e.value.errno == errno.EINVAL, "weights for three layers, blocks of two"
        version, size = c.calibrate(energy=99, weights=[[4.0, 2.0], [1.0, 1.0]])
        assert version == 1 and size > 0
        want = lowrank(9)
        c.store(kvcd.Key(301, 9), want, policy_slot=coded)
        ranged = c.policy("none:rank=32,learned=on,kbits=6,vbits=6,entropy=on")
        c.store(kvcd.Key(301, 10), want, policy_slot=ranged)
        for k in (9, 10):  # fixed-width codes, then range-coded ones
            dense, mask = c.fetch(kvcd.Key(301, k)).dense()
            assert mask.all()
            err = np.linalg.norm(dense.astype(np.float32) - want.astype(np.float32))
            assert err / np.linalg.norm(want.astype(np.float32)) < 0.05, k


def test_selection_from_python_per_chunk_and_deferred(daemon):
    """A token-selection policy from Python: attention sent with a STORE keeps each chunk's
    best half; sent with RECOMPRESS for the chain, the best half of the whole prefix."""
    r = np.random.default_rng(5)
    with kvcd.Client(socket=daemon.sock, ns="py-select", staging_size=1 << 20) as c:
        sel = c.policy("none:select=h2o,keep=50%")
        whole = block(tokens=64, seed=9)  # [layers 2, K/V, 64 tokens, 2 heads, 32]
        attn = r.random((2, 2, 64)).astype(np.float32)
        c.store(kvcd.Key(300, 0), whole[:, :, :16], policy_slot=sel, attn=attn[:, :, :16])
        sp = c.fetch(kvcd.Key(300, 0))
        assert isinstance(sp, kvcd.Sparse) and sp.tokens == 16
        for li in range(2):
            for h in range(2):
                top = np.sort(np.argsort(-attn[li, h, :16], kind="stable")[:8])
                assert np.array_equal(sp.index[li][h], top)
                assert np.array_equal(sp.k[li][h], whole[li, 0, top, h])
                assert np.array_equal(sp.v[li][h], whole[li, 1, top, h])
        keys = [kvcd.Key(301, i) for i in range(4)]
        for i, k in enumerate(keys):  # raw while the prefill goes
            c.store(k, whole[:, :, 16 * i:16 * i + 16])
        assert c.recompress(keys, policy_slot=sel, aux_off=1 << 19, attn=attn)[0] == 4
        for li in range(2):
            for h in range(2):
                top = np.sort(np.argsort(-attn[li, h], kind="stable")[:32])
                got = np.concatenate([c.fetch(k).index[li][h] + 16 * i
                                      for i, k in enumerate(keys)])
                assert np.array_equal(got, top), "the whole prefix's best half"
        dense, mask = c.fetch(keys[1]).dense()
        assert dense.shape == (2, 2, 16, 2, 32) and mask.shape == (2, 2, 16)
        kept = mask[0, 0]  # layer 0, head 0: its kept rows, dropped ones zero
        assert np.array_equal(dense[0][:, kept, 0], whole[0, :, 16:32][:, kept, 0])
        assert not dense[0][:, ~kept, 0].any()


def test_batches(daemon):
    with kvcd.Client(socket=daemon.sock, staging_size=4 << 20) as c:
        keys = [kvcd.Key(100, i) for i in range(40)]
        c.store_many([(k, block(seed=i)) for i, k in enumerate(keys)])
        n = block().nbytes
        got = c.fetch_many(keys + [kvcd.Key(0, 1)], n)
        assert got[-1] is None
        for i, g in enumerate(got[:-1]):
            assert np.array_equal(g, block(seed=i))


def test_long_namespaces_are_hashed_the_same_everywhere(daemon):
    long_ns = "llama-3-8b@sha256:" + "ab" * 32  # longer than kvcd's 63 bytes
    with kvcd.Client(socket=daemon.sock, ns=long_ns, staging_size=1 << 20) as a, \
            kvcd.Client(socket=daemon.sock, ns=long_ns, staging_size=1 << 20) as b:
        a.store(kvcd.Key(4, 4), block())
        assert b.lookup([kvcd.Key(4, 4)]) == 1, "one namespace for one long name"
        names = [n["name"] for n in a.stats()["namespaces"]]
        assert any(n.startswith(long_ns[:46] + "~") and len(n) == 63 for n in names), names
