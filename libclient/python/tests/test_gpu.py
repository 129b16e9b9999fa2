"""GPU staging from Python: refused cleanly where kvcd has no GPU to share, and on a machine
with one (make gpu-check runs these there), a CUDA tensor stored from GPU staging comes back
into GPU staging in another client, raw and encoded on the GPU."""
from __future__ import annotations

import errno

import numpy as np
import pytest

import kvcd


def _gpu_ready(daemon) -> bool:
    with kvcd.Client(socket=daemon.sock, staging_size=4096) as c:
        g = c.stats()["gpu"]
    return g["status"] == "ready" and " 0 with GPU staging" not in g["why"]


def test_gpu_attach_is_refused_without_a_device(daemon):
    if _gpu_ready(daemon):
        pytest.skip("this kvcd serves GPU staging")
    with pytest.raises(kvcd.KvcdError) as e:
        kvcd.Client(socket=daemon.sock, gpu=True)
    assert e.value.errno == errno.ENODEV
    with kvcd.Client(socket=daemon.sock, staging_size=1 << 16) as c:  # and kvcd goes on
        c.nop()
        with pytest.raises(kvcd.KvcdError) as e:
            c.gpu_index(0)
        assert e.value.errno == errno.ENODEV


@pytest.mark.parametrize("policy", ["none", "int8"])
def test_cuda_tensor_round_trip_between_clients(daemon, policy):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not _gpu_ready(daemon):
        pytest.skip("no CUDA device kvcd serves")
    r = np.random.default_rng(3)
    kv = torch.from_numpy(r.standard_normal((2, 2, 32, 4, 64)).astype(np.float16)).cuda()
    key = kvcd.Key(77, 1 if policy == "none" else 2)
    with kvcd.Client(socket=daemon.sock, gpu=True, gpu_staging_size=8 << 20) as a, \
            kvcd.Client(socket=daemon.sock, gpu=True, gpu_staging_size=8 << 20) as b:
        slot = a.policy(policy)
        a.store_gpu(key, kv, policy_slot=slot)
        got = b.fetch_gpu(key, device=0)
        host = b.fetch(key)
        assert got.device.type == "cuda"
        if policy == "none":
            assert torch.equal(got, kv)
        else:  # int8: within a step of its groups, the same bytes on the GPU and the CPU
            assert (got.float() - kv.float()).abs().max().item() < 0.05
        assert np.array_equal(host.view(np.uint16),
                              got.cpu().numpy().view(np.uint16)), "GPU and host fetch agree"


def test_connector_moves_a_cuda_cache_through_gpu_staging(daemon):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not _gpu_ready(daemon):
        pytest.skip("no CUDA device kvcd serves")
    from kvcd.connector import KvcdConnector

    layers, heads, dim, chunk, seq = 2, 4, 64, 16, 64
    tokens = list(range(1, seq + 1))
    r = np.random.default_rng(5)
    cache = torch.from_numpy(r.standard_normal((layers, 2, seq, heads, dim)).astype(np.float32))
    with kvcd.Client(socket=daemon.sock, ns="conn", gpu=True, gpu_staging_size=8 << 20) as a, \
            kvcd.Client(socket=daemon.sock, ns="conn", gpu=True, gpu_staging_size=8 << 20) as b:
        src = KvcdConnector(a, "conn/m", layers, heads, dim, "f16", chunk)
        assert src.save_kv(tokens, cache.cuda()) == seq // chunk
        assert src.wait_for_save() == seq // chunk
        dst = KvcdConnector(b, "conn/m", layers, heads, dim, "f16", chunk)
        assert dst.get_num_new_matched_tokens(tokens) == seq
        out = torch.zeros_like(cache).cuda()
        dst.start_load_kv(tokens, out, seq)
        for layer in range(layers):
            assert dst.wait_for_layer_load(layer) == seq
        # what the host path gives: the f16 rounding of the same values
        assert torch.equal(out.cpu(), cache.half().float())
