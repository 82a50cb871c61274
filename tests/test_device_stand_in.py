"""The stand-in accelerator itself: it refuses what CUDA refuses, with CUDA's words, and lets through what CUDA
allows, computing the same numbers as the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stand_in_device import STAND_IN, StandInTensor, device_memory, device_ops, stand_in_device

pytestmark = pytest.mark.device

SAME_DEVICE = "Expected all tensors to be on the same device"
INDEX_DEVICE = "indices should be either on cpu or on the same device as the indexed tensor"


@pytest.fixture
def device():
    with stand_in_device() as dev:
        yield dev


def _numbers(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_moved_tensors_report_the_device_and_come_back_unchanged(device):
    x = _numbers(0, 3, 4)
    moved = x.to(device)
    assert isinstance(moved, StandInTensor) and moved.device == STAND_IN and moved.is_cuda
    assert (moved * 2 + 1).device == STAND_IN
    back = (moved * 2 + 1).cpu()
    assert type(back) is torch.Tensor and back.device.type == "cpu"
    assert torch.equal(back, x * 2 + 1)
    assert moved.to(device) is moved and moved.to("cuda:0", torch.float16).dtype == torch.float16
    assert torch.zeros(2, device=device).device == STAND_IN and torch.zeros(2, device="cpu").device.type == "cpu"
    assert torch.empty_like(moved, device="cpu").device.type == "cpu" and torch.empty_like(moved).device == STAND_IN


def test_host_reads_work_as_on_cuda(device):
    x = _numbers(1, 2, 3).to(device)
    assert float(x.sum()) == pytest.approx(float(x.cpu().sum()))
    assert x.tolist() == x.cpu().tolist() and x[0, 0].item() == x.cpu()[0, 0].item() and int(x.argmax()) >= 0


@pytest.mark.parametrize("mix", ["add", "matmul", "cat", "index_add_", "where"])
def test_two_devices_in_one_operation_are_refused(device, mix):
    on_device, on_cpu = _numbers(2, 4, 4).to(device), _numbers(3, 4, 4)
    operations = {"add": lambda: on_device + on_cpu, "matmul": lambda: on_cpu @ on_device,
                  "cat": lambda: torch.cat([on_device, on_cpu]),
                  "index_add_": lambda: on_device.index_add_(0, torch.tensor([0, 1]), on_cpu[:2]),
                  "where": lambda: torch.where(on_cpu > 0, on_device, on_device)}
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        operations[mix]()


def test_cpu_scalars_beside_device_tensors_are_allowed(device):
    x = _numbers(4, 3).to(device)
    scalar = torch.tensor(2.5)
    assert torch.equal((x * scalar).cpu(), x.cpu() * 2.5)
    assert (x / torch.tensor(4.0)).device == STAND_IN


def test_device_indices_into_a_cpu_tensor_are_refused(device):
    table = _numbers(5, 6, 2)
    with pytest.raises(RuntimeError, match=INDEX_DEVICE):
        table[torch.tensor([0, 3], device=device)]
    with pytest.raises(RuntimeError, match=INDEX_DEVICE):
        table[torch.tensor([0, 3], device=device)] = 0.0


def test_cpu_and_device_indices_into_a_device_tensor_are_allowed(device):
    table = _numbers(6, 6, 2)
    moved = table.to(device)
    for index in (torch.tensor([4, 1]), torch.tensor([4, 1], device=device)):
        picked = moved[index]
        assert picked.device == STAND_IN and torch.equal(picked.cpu(), table[[4, 1]])
    moved[torch.tensor([0])] = torch.zeros(1, 2, device=device)
    assert moved.cpu()[0].abs().sum() == 0


def test_index_select_wants_its_index_on_the_device(device):
    moved = _numbers(7, 5, 2).to(device)
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        moved.index_select(0, torch.tensor([1]))
    assert moved.index_select(0, torch.tensor([1], device=device)).device == STAND_IN


def test_tensors_made_from_device_tensors_stay_there_unless_told(device):
    moved = _numbers(12, 3).to(device)
    with pytest.warns(UserWarning, match="copy construct"):  # torch's own advice, as on CUDA
        assert torch.tensor(moved[0]).device == STAND_IN
    assert torch.as_tensor(moved).device == STAND_IN
    assert torch.as_tensor(moved, device="cpu").device.type == "cpu"
    assert torch.equal(torch.as_tensor(moved, dtype=torch.float64).cpu(), moved.cpu().double())


def test_numpy_of_a_device_tensor_is_refused_with_cudas_message(device):
    moved = _numbers(8, 2).to(device)
    message = "can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu()"
    with pytest.raises(TypeError, match=message):
        moved.numpy()
    with pytest.raises(TypeError, match=message):
        np.asarray(moved)
    assert moved.cpu().numpy().shape == (2,)


def test_generators_belong_to_one_device(device):
    with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator but found 'cpu'"):
        torch.randn(3, generator=torch.Generator().manual_seed(0), device=device)
    on_device = torch.Generator(device=device)
    assert on_device.device == STAND_IN and isinstance(on_device, torch.Generator)
    on_device.manual_seed(5)
    noise = torch.randn(3, generator=on_device, device=device)
    assert noise.device == STAND_IN and torch.equal(noise.cpu(), torch.randn(3, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(RuntimeError, match="Expected a 'cpu' device type for generator but found 'cuda'"):
        torch.randn(3, generator=on_device, device="cpu")


def test_modules_move_there_and_back_and_compute_as_on_the_cpu(device):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.GroupNorm(2, 4), torch.nn.SiLU())
    x = _numbers(9, 1, 3, 8, 8)
    expected = net(x)
    net.to(device)
    assert all(p.device == STAND_IN for p in net.parameters())
    assert isinstance(net[0].weight, torch.nn.Parameter)  # still a parameter for code that checks
    with pytest.raises(RuntimeError, match=SAME_DEVICE):
        net(x)  # the input was left on the CPU
    with torch.inference_mode():
        out = net(x.to(device))
    assert out.device == STAND_IN and torch.allclose(out.cpu(), expected.detach(), atol=1e-6)
    net.to("cpu")
    assert all(type(p) is torch.nn.Parameter and p.device.type == "cpu" for p in net.parameters())


def test_attention_interpolation_and_scatter_run_there(device):
    device_ops.clear()
    q = _numbers(10, 1, 2, 5, 8)
    with torch.no_grad():
        attention = F.scaled_dot_product_attention(q.to(device), q.to(device), q.to(device))
        resized = F.interpolate(q.to(device), scale_factor=2, mode="bilinear", align_corners=False)
        acc = torch.zeros(4, 2, device=device)
        acc.index_add_(0, torch.tensor([0, 2], device=device), torch.ones(2, 2, device=device))
    assert torch.allclose(attention.cpu(), F.scaled_dot_product_attention(q, q, q), atol=1e-6)
    assert torch.equal(resized.cpu(), F.interpolate(q, scale_factor=2, mode="bilinear", align_corners=False))
    assert acc.cpu()[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert device_ops["index_add_"] == 1 and device_ops["upsample_bilinear2d"] >= 1


def test_copies_between_devices_are_allowed(device):
    cpu = torch.zeros(3)
    moved = _numbers(11, 3).to(device)
    cpu.copy_(moved)
    assert torch.equal(cpu, moved.cpu())
    moved.copy_(torch.ones(3))
    assert moved.device == STAND_IN and moved.cpu().tolist() == [1.0, 1.0, 1.0]


MIB = 2**20


def test_device_memory_counts_live_storages_once_and_frees_them(device):
    before = torch.cuda.memory_allocated()
    a = torch.zeros(MIB // 4, device=device)  # 1 MiB of fp32
    assert torch.cuda.memory_allocated() - before == MIB
    views = (a[: MIB // 8], a.view(2, -1), a.reshape(-1))  # views share the storage: no new bytes
    assert torch.cuda.memory_allocated() - before == MIB
    b = a.half().to(device)  # a computed result is a new allocation
    assert torch.cuda.memory_allocated() - before == MIB + MIB // 2
    del a, b, views
    assert torch.cuda.memory_allocated() == before
    host = torch.ones(MIB // 4)
    assert torch.cuda.memory_allocated() == before  # CPU tensors are not device memory


def test_device_memory_catches_a_leak_and_a_transient_peak(device):
    kept = []

    def step(leak: bool) -> None:
        scratch = torch.ones(MIB, device=device)  # 4 MiB while the step runs
        kept.append((scratch.sum() * 1).reshape(1)) if not leak else kept.append(scratch)

    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    for _ in range(3):
        step(leak=False)
    assert torch.cuda.memory_allocated() - start == 3 * 4  # three 4-byte results stay, the scratch is gone
    assert 4 * MIB < torch.cuda.max_memory_allocated() - start < 4 * MIB + 64  # one scratch at a time, at its peak
    torch.cuda.reset_peak_memory_stats()
    assert torch.cuda.max_memory_allocated() == torch.cuda.memory_allocated()
    for _ in range(3):
        step(leak=True)
    assert torch.cuda.memory_allocated() - start == 3 * 4 + 3 * 4 * MIB  # every scratch kept: the leak shows
    kept.clear()
    assert torch.cuda.memory_allocated() == start and device_memory.allocated == start


def test_module_weights_count_while_on_the_device(device):
    layer = torch.nn.Linear(256, 256)  # 256·257 fp32 parameters
    start = torch.cuda.memory_allocated()
    layer.to(device)
    assert torch.cuda.memory_allocated() - start == (256 * 256 + 256) * 4
    layer.to("cpu")
    assert torch.cuda.memory_allocated() == start
