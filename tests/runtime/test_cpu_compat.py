"""The megatron-core CPU compatibility layer: what it redirects, and that it stays off on GPUs."""

import threading

import pytest
import torch

from nemo_minitron import cpu_compat

pytestmark = pytest.mark.compat


def test_redirects_cuda_requests():
    assert cpu_compat.activate()
    assert cpu_compat.is_active()
    t = torch.empty(3, device="cuda")
    assert t.device.type == "cpu"
    assert torch.zeros(2, device=torch.device("cuda", 0)).device.type == "cpu"
    x = torch.ones(2)
    assert x.cuda() is x
    assert x.to("cuda").device.type == "cpu"
    assert x.type() == "torch.cuda.FloatTensor"
    assert x.long().type() == "torch.cuda.LongTensor"
    assert x.type(torch.float64).dtype == torch.float64  # conversions still work
    assert torch.empty(1, device=torch.cuda.current_device()).device.type == "cpu"
    torch.cuda.synchronize()


def test_compiled_megatron_activation_runs_under_the_layer():
    """megatron's squared_relu is torch.compile'd; dynamo refused the CUDA aliases when they were the CPU functions
    themselves ("Handler already registered for synchronize")."""
    from megatron.core.activations import squared_relu

    assert cpu_compat.activate()
    x = torch.linspace(-2, 2, 9)
    torch.testing.assert_close(squared_relu(x), torch.relu(x) ** 2)


def test_thread_local_and_deactivate():
    cpu_compat.activate()
    seen = {}

    def other():
        seen["active"] = cpu_compat.is_active()

    th = threading.Thread(target=other)
    th.start()
    th.join()
    assert seen["active"] is False
    cpu_compat.deactivate()
    assert not cpu_compat.is_active()
    assert torch.ones(1).type() == "torch.FloatTensor"
    cpu_compat.activate()  # the rest of the session runs megatron code


def test_inactive_when_gpu_present(monkeypatch):
    cpu_compat.deactivate()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cpu_compat.activate() is False
    assert not cpu_compat.is_active()
    monkeypatch.undo()
    cpu_compat.activate()
