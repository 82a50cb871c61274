"""A stand-in accelerator for the CPU suite: two devices, `cuda:0` and `cuda:1`, whose tensors compute on the CPU
and are refused where CUDA refuses them, so device mistakes fail here as they would on a user's GPU (or GPUs).

How: `StandInTensor` is a wrapper subclass (it holds a CPU tensor and reports the stand-in device); its
`__torch_dispatch__` checks the devices of every ATen call before running it on the held CPU tensors. A
`TorchFunctionMode` turns `.to(device)`, `.cuda()` and factory calls with `device=` the stand-in into
`StandInTensor`s, so `Module.to(device)` (ComfyUI's ModelPatcher) and `torch.zeros(..., device=device)` work.

It also counts device memory per device as CUDA's caching allocator reports it to `torch.cuda.memory_allocated(d)`:
the bytes of every storage some stand-in tensor of that device still holds (views share their storage's bytes), and
the peak since the last reset (`torch.cuda.max_memory_allocated()` / `reset_peak_memory_stats()`, answered from
`device_memories` inside `stand_in_device()`; `device_memory` is cuda:0's). No caching, no rounding to blocks: the
figure is the live set, the floor of a real GPU's. As on CUDA, "cuda" without an index is the calling thread's
current device (`torch.cuda.set_device`, per thread), cuda:0 until a thread sets another.

What it refuses, with CUDA's wording:
- non-scalar tensors of two devices in one operation (0-dim CPU tensors beside device tensors are allowed), the
  two stand-in devices included: a cuda:0 tensor beside a cuda:1 tensor fails as on two GPUs;
- indexing a CPU tensor with device indices, or one device's tensor with the other's (CPU indices into a device
  tensor stay allowed);
- `.numpy()` (and numpy's `__array__`) of a device tensor;
- a CPU generator for random numbers made on the device.
"""
from __future__ import annotations

from collections import Counter
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

STAND_IN = torch.device("cuda", 0)
STAND_INS = (STAND_IN, torch.device("cuda", 1))  # the devices it offers (torch.cuda.device_count() answers 2)
_REAL_GENERATOR = torch.Generator
CPU = torch.device("cpu")

# ATen ops computed on the stand-in, by name (e.g. 'convolution'): tests read it to show the work ran there;
# `ops_on[index]` counts them per device.
device_ops: Counter = Counter()
ops_on: dict[int, Counter] = {d.index: Counter() for d in STAND_INS}
_thread = threading.local()  # `current`: the thread's current device index (torch.cuda.set_device)


def current_index() -> int:
    return getattr(_thread, "current", STAND_IN.index)

# Ops that move data between devices: their point is to take tensors of two devices.
_CROSS_DEVICE = {torch.ops.aten.copy_.default, torch.ops.aten._to_copy.default, torch.ops.aten._copy_from.default,
                 torch.ops.aten._copy_from_and_resize.default, torch.ops.aten.copy.default}
# Advanced indexing: CUDA accepts CPU indices into a device tensor (it copies them over).
_INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default,
             torch.ops.aten._index_put_impl_.default, torch.ops.aten._unsafe_index.Tensor,
             torch.ops.aten._unsafe_index_put.default}
# Host conversions, which CUDA performs by copying to the CPU (they would otherwise reach the CUDA runtime).
_HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__,
               torch.Tensor.__bool__, torch.Tensor.__index__, torch.Tensor.__complex__, torch.Tensor.data_ptr}
_NUMPY = {torch.Tensor.numpy, torch.Tensor.__array__}
# No autograd on the stand-in: torch's autograd asks the CUDA runtime for streams of cuda tensors, which a machine
# without a GPU cannot answer (the process aborts). The pack only runs inference, so parameters there never need it.
_GRAD_SWITCHES = {torch.Tensor.requires_grad_, torch.Tensor.requires_grad.__set__}


class DeviceMemory:
    """Bytes of the storages that live stand-in tensors hold, and their peak since `reset_peak()`."""

    def __init__(self) -> None:
        self.allocated = 0
        self.peak = 0
        self._holders: dict[int, int] = {}  # storage key → live stand-in tensors on it
        self._bytes: dict[int, int] = {}
        self._lock = threading.Lock()  # one host thread per device makes and frees tensors at once

    def hold(self, wrapper: torch.Tensor, host: torch.Tensor) -> None:
        storage = host.untyped_storage()
        key = storage._cdata  # the storage's own address: stable while any wrapper (and so `host`) lives
        with self._lock:
            if key not in self._holders:
                self._holders[key] = 0
                self._bytes[key] = storage.nbytes()
                self.allocated += self._bytes[key]
                self.peak = max(self.peak, self.allocated)
            self._holders[key] += 1
        weakref.finalize(wrapper, self._release, key)

    def _release(self, key: int) -> None:
        with self._lock:
            self._holders[key] -= 1
            if not self._holders[key]:
                del self._holders[key]
                self.allocated -= self._bytes.pop(key)

    def reset_peak(self) -> None:
        self.peak = self.allocated


# The stand-in's allocators, one per device: tests and benchmarks read them directly or through torch.cuda's memory
# functions. `device_memory` is cuda:0's, the one device of single-GPU tests.
device_memories = {d.index: DeviceMemory() for d in STAND_INS}
device_memory = device_memories[STAND_IN.index]


def stand_in_of(device: Any) -> torch.device | None:
    """The stand-in device that `device` names ('cuda' = the thread's current one, 'cuda:1', torch.device, 0), or
    None when it names none of them."""
    if device is None or isinstance(device, bool):
        return None
    try:
        device = torch.device(device)
    except (TypeError, RuntimeError):
        return None
    if device.type != STAND_IN.type:
        return None
    index = current_index() if device.index is None else device.index
    return torch.device(STAND_IN.type, index) if index < len(STAND_INS) else None


def is_stand_in(device: Any) -> bool:
    """True for a stand-in device however it is spelled ('cuda', 'cuda:0', 'cuda:1', torch.device, 0)."""
    return stand_in_of(device) is not None


def same_device_error(op: str, detail: str, devices: tuple = (STAND_IN, "cpu")) -> RuntimeError:
    return RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, {devices[0]} "
                        f"and {devices[1]}! (stand-in accelerator, {op}: {detail})")


class StandInTensor(torch.Tensor):
    """A tensor on the stand-in accelerator; `host` is the CPU tensor that holds its values."""

    host: torch.Tensor

    @staticmethod
    def __new__(cls, host: torch.Tensor, device: torch.device = STAND_IN) -> "StandInTensor":
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls, host.size(), strides=host.stride(), storage_offset=host.storage_offset(), dtype=host.dtype,
            layout=host.layout, device=device, requires_grad=False)
        wrapper.host = host
        device_memories[device.index].hold(wrapper, host)
        return wrapper

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"StandInTensor({self.host!r}, device='{self.device}')"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _NUMPY:
            raise TypeError(f"can't convert {args[0].device} device type tensor to numpy. Use Tensor.cpu() to copy the "
                            "tensor to host memory first.")
        if func in _HOST_READS:
            return func(*tree_map(_host_of, args), **tree_map(_host_of, kwargs))
        if func is torch.Tensor.__repr__:
            return args[0].__repr__()
        if func is torch.Tensor.__getitem__:
            return _getitem(*args)
        if func is torch.Tensor.__setitem__:
            return _setitem(*args)
        if func in _GRAD_SWITCHES:
            return args[0] if func is torch.Tensor.requires_grad_ else None
        if func in _GUARDED:
            return _on_host(func, args, kwargs)
        try:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        except torch.AcceleratorError:  # a C++ binding that sets a CUDA device guard first (e.g. contiguous)
            _GUARDED.add(func)
            return _on_host(func, args, kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._has_compatible_shallow_copy_type.default:  # Module._apply: swap data in place?
            return isinstance(args[0], StandInTensor) == isinstance(args[1], StandInTensor)
        check_devices(func, args, kwargs)
        target, args, kwargs = _device_argument(func, args, kwargs)
        on_device = stand_in_of(target) if target is not None else _device_of_inputs(args, kwargs)
        if on_device is not None:
            device_ops[func.overloadpacket.__name__] += 1
            ops_on[on_device.index][func.overloadpacket.__name__] += 1
        return _run_unwrapped(func, args, kwargs, on_device)


def _device_of_inputs(args: tuple, kwargs: dict) -> torch.device | None:
    """The stand-in device of an op's tensors (check_devices made sure there is at most one), None for CPU ones."""
    return next((t.device for t in tree_flatten((args, kwargs))[0] if isinstance(t, StandInTensor)), None)


def _device_argument(func, args: tuple, kwargs: dict):
    """The device an ATen op is told to produce on (its `device` argument, by keyword or position), and the
    arguments with the stand-in replaced by the CPU, where the work is done."""
    if "device" in kwargs:
        target = kwargs["device"]
        return target, args, ({**kwargs, "device": CPU} if is_stand_in(target) else kwargs)
    names = [a.name for a in func._schema.arguments]
    if "device" in names and names.index("device") < len(args):
        i = names.index("device")
        target = args[i]
        return target, ((*args[:i], CPU, *args[i + 1:]) if is_stand_in(target) else args), kwargs
    return None, args, kwargs


# Tensor methods whose C++ binding sets a CUDA device guard before dispatching (contiguous, copy_, new_*, ...),
# found at their first call: they run here on the held CPU tensors instead.
_GUARDED: set = set()


def _on_host(func, args: tuple, kwargs: dict):
    """Run a Tensor method on the held CPU tensors; tensors it returns are on the device it was asked for."""
    if func is not torch.Tensor.copy_:  # copy_ moves data between devices, as on CUDA
        check_devices(getattr(func, "__name__", str(func)), args, kwargs)
    target = kwargs.get("device")
    if func is torch.Tensor.to:
        target = _target_of_to(args, kwargs)[0]
    elif func is torch.Tensor.cpu:
        target = CPU
    if target is not None:
        on_device = stand_in_of(target)
        kwargs = {**kwargs, "device": CPU} if on_device is not None and "device" in kwargs else kwargs
    else:
        on_device = _device_of_inputs(args, kwargs)
    return _run_unwrapped(func, args, kwargs, on_device)


def _run_unwrapped(func, args: tuple, kwargs: dict, on_device: torch.device | None):
    """Run `func` on the held CPU tensors; the tensors it makes are on `on_device` (None: the CPU)."""
    inputs = {}  # host tensor id → its wrapper: an op that hands back its input (x.to(x.device)) gives the wrapper

    def unwrap(value):
        if isinstance(value, StandInTensor):
            inputs[id(value.host)] = value
            return value.host
        return value

    out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
    if _writes_first_argument(func):
        return args[0]  # in-place (x.add_(y), dst.copy_(src)): the caller's own tensor, on its own device

    def wrap(value):
        if not isinstance(value, torch.Tensor):
            return value
        if id(value) in inputs:
            return inputs[id(value)] if on_device is not None else value
        return StandInTensor(value, on_device) if on_device is not None and value.device.type == "cpu" else value

    return tree_map(wrap, out)


def _writes_first_argument(func) -> bool:
    schema = getattr(func, "_schema", None)
    if schema is None:  # a Tensor method (the guarded ones): in-place by torch's naming rule
        return getattr(func, "__name__", "").endswith("_") and not getattr(func, "__name__", "").startswith("__")
    first = schema.arguments[0] if schema.arguments else None
    return bool(first is not None and first.alias_info is not None and first.alias_info.is_write
                and not schema.arguments[0].kwarg_only)


def _host_of(value):
    return value.host if isinstance(value, StandInTensor) else value


def _index_tensors(index) -> list[torch.Tensor]:
    return [i for i in tree_flatten(index)[0] if isinstance(i, torch.Tensor)]


def _check_index(tensor: torch.Tensor, index) -> None:
    _check_indices(tensor, _index_tensors(index), "indexing")


def _check_indices(tensor: torch.Tensor, indices: list[torch.Tensor], name: str) -> None:
    """CUDA's rule: indices on the CPU or on the indexed tensor's own device."""
    for i in indices:
        if isinstance(i, StandInTensor) and i.device != tensor.device:
            raise RuntimeError("indices should be either on cpu or on the same device as the indexed tensor "
                               f"({tensor.device}) (stand-in accelerator, {name}: indexed {_describe(tensor)}, "
                               f"indices on {i.device})")


# Python indexing is handled here rather than in ATen: torch's C++ indexing sets a CUDA device guard first, which
# needs the CUDA runtime. The rules are CUDA's: device or CPU indices into a device tensor, CPU ones into a CPU one.
def _getitem(tensor: torch.Tensor, index):
    _check_index(tensor, index)
    out = _host_of(tensor)[tree_map(_host_of, index)]
    return StandInTensor(out, tensor.device) if isinstance(tensor, StandInTensor) else out


def _setitem(tensor: torch.Tensor, index, value) -> None:
    _check_index(tensor, index)  # values of either device are copied over, as CUDA does
    _host_of(tensor)[tree_map(_host_of, index)] = _host_of(value)


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} on {t.device}"


def check_devices(func, args: tuple, kwargs: dict) -> None:
    """Raise as CUDA would when one ATen call (or a Tensor method, by name) mixes the stand-in with CPU tensors."""
    if func in _CROSS_DEVICE:
        return
    name = func if isinstance(func, str) else getattr(func, "__name__", str(func))
    if func in _INDEXING:
        indexed, indices = args[0], [i for i in args[1] if isinstance(i, torch.Tensor)]
        _check_indices(indexed, indices, name)
        rest = [a for a in tree_flatten((args[2:], kwargs))[0] if isinstance(a, torch.Tensor)]
        tensors = [indexed, *rest]  # CPU indices into a device tensor are fine, as on CUDA
    else:
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
    device = [t for t in tensors if isinstance(t, StandInTensor)]
    host = [t for t in tensors if not isinstance(t, StandInTensor) and t.device.type == "cpu" and t.dim() > 0]
    if device and host:
        raise same_device_error(name, f"{_describe(device[0])} beside {_describe(host[0])}", (device[0].device, "cpu"))
    other = next((t for t in device if t.device != device[0].device), None)
    if other is not None:  # two GPUs: neither reads the other's memory in an operation
        raise same_device_error(name, f"{_describe(device[0])} beside {_describe(other)}",
                                (device[0].device, other.device))


def _target_of_to(args: tuple, kwargs: dict):
    """(device, dtype, non_blocking, memory_format) that a Tensor.to call asks for."""
    positional = [a for a in args[1:] if not isinstance(a, bool)]  # to(device, dtype, non_blocking, copy)
    options = {k: v for k, v in kwargs.items() if k in ("device", "dtype", "memory_format")}
    return torch._C._nn._parse_to(*positional, **options)


class StandInMode(TorchFunctionMode):
    """Creates stand-in tensors wherever torch is asked for the stand-in device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            _count_upload(args[0], kwargs)
            target = stand_in_of(args[1] if len(args) > 1 else kwargs.get("device", "cuda"))
            return _move(args[0], None, bool(kwargs.get("non_blocking", False)), device=target)
        if func is torch.Tensor.to:
            device, dtype, _, memory_format = _target_of_to(args, kwargs)
            if is_stand_in(device):
                _count_upload(args[0], kwargs)
                return _move(args[0], dtype, bool(kwargs.get("copy", False)), memory_format, stand_in_of(device))
            return func(*args, **kwargs)
        if func is torch.Tensor.pin_memory:  # host memory the stand-in's copies could queue from: any CPU memory
            return args[0]
        if func in _FROM_DATA and args and isinstance(args[0], StandInTensor):
            return _from_device_data(func, args, kwargs)
        generator = kwargs.get("generator")
        if generator is not None and "device" in kwargs:
            wanted = "cuda" if is_stand_in(kwargs["device"]) else torch.device(kwargs["device"] or "cpu").type
            found = "cuda" if isinstance(generator, StandInGenerator) else generator.device.type
            if wanted != found:
                raise RuntimeError(f"Expected a '{wanted}' device type for generator but found '{found}' "
                                   f"(stand-in accelerator, {getattr(func, '__name__', func)})")
        target = stand_in_of(kwargs.get("device"))
        if target is not None:
            out = func(*args, **{**kwargs, "device": CPU})
            return tree_map(lambda t: StandInTensor(t, target) if isinstance(t, torch.Tensor)
                            and not isinstance(t, StandInTensor) else t, out)
        return func(*args, **kwargs)


# torch.tensor(t) / torch.as_tensor(t) of a device tensor: their C++ starts the CUDA runtime for a cuda source.
_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}


def _from_device_data(func, args: tuple, kwargs: dict) -> torch.Tensor:
    target = kwargs.get("device")
    on_device = args[0].device if target is None else stand_in_of(target)
    out = func(args[0].host, *args[1:], **{**kwargs, "device": CPU})
    return StandInTensor(out, on_device) if on_device is not None else out


class StandInGenerator(_REAL_GENERATOR):
    """A generator for the stand-in device: a CPU generator (the numbers are made on the CPU) that says cuda."""

    @property
    def device(self) -> torch.device:
        return STAND_IN


class _GeneratorFor(type):
    """`torch.Generator` inside `stand_in_device()`: torch.Generator(device='cuda') would start the CUDA runtime,
    so it gives a StandInGenerator; any other device gets torch's own, and isinstance checks keep working."""

    def __call__(cls, device="cpu"):
        return StandInGenerator() if is_stand_in(device) else _REAL_GENERATOR(device)

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, _REAL_GENERATOR)


class GeneratorFor(metaclass=_GeneratorFor):
    pass


def _move(tensor: torch.Tensor, dtype, copy: bool, memory_format=None, device: torch.device | None = None
          ) -> torch.Tensor:
    device = device or stand_in_of("cuda")
    if isinstance(tensor, StandInTensor):
        if (dtype is None or dtype == tensor.dtype) and not copy and tensor.device == device:
            return tensor
        return StandInTensor(tensor.host.to(dtype=dtype or tensor.dtype, copy=True), device)  # GPU to GPU: a copy
    options = {"memory_format": memory_format} if memory_format is not None else {}
    return StandInTensor(tensor.to(dtype=dtype or tensor.dtype, copy=True, **options), device)


def to_stand_in(tensor: torch.Tensor, device: torch.device = STAND_IN) -> torch.Tensor:
    """A copy of a CPU tensor on a stand-in device (what `tensor.to('cuda')` gives inside `stand_in_device()`)."""
    return _move(tensor, None, True, device=device)


@contextmanager
def stand_in_device() -> Iterator[torch.device]:
    """Within the block, torch answers the stand-in device (cuda:0) with StandInTensors.

    Module.to() must replace a moved parameter by a new one: by default torch swaps the parameter's data in place,
    which cannot turn a CPU tensor into a StandInTensor."""
    overwrite = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    torch.Generator = GeneratorFor
    thread_run = threading.Thread.run
    threading.Thread.run = _run_on_stand_in(thread_run)
    cuda_functions = {name: getattr(torch.cuda, name) for name in _CUDA_FUNCTIONS}
    for name, answer in _CUDA_FUNCTIONS.items():
        setattr(torch.cuda, name, answer)
    try:
        with StandInMode():
            yield STAND_IN
    finally:
        threading.Thread.run = thread_run
        torch.Generator = _REAL_GENERATOR
        for name, function in cuda_functions.items():
            setattr(torch.cuda, name, function)
        torch.__future__.set_overwrite_module_params_on_conversion(overwrite)


def _memory_of(device=None) -> DeviceMemory:
    return device_memories[stand_in_of("cuda" if device is None else device).index]


def _set_device(device) -> None:
    _thread.current = stand_in_of(device if not isinstance(device, int) else f"cuda:{device}").index


def _run_on_stand_in(thread_run):
    """Thread.run for threads started inside the block: torch's function modes are per thread, and a thread that
    drives a device (one per GPU, as core's multi-GPU pool has) must see the stand-in as the main thread does."""
    def run(self) -> None:
        with StandInMode():
            thread_run(self)
    return run


# torch.cuda's allocator statistics, answered by the stand-in's per device, and the calls core 0.33 makes around
# sampling: synchronize after loading a model (the stand-in computes as it is asked, so there is never work in
# flight) and the current-device guard (per thread, as CUDA's).
_CUDA_FUNCTIONS = {
    "memory_allocated": lambda device=None: _memory_of(device).allocated,
    "max_memory_allocated": lambda device=None: _memory_of(device).peak,
    "reset_peak_memory_stats": lambda device=None: _memory_of(device).reset_peak(),
    "synchronize": lambda device=None: None,
    "current_device": current_index,
    "set_device": _set_device,
    "device_count": lambda: len(STAND_INS),
}


# ---- host syncs: reads that make a real GPU finish its queued work first (tests/test_host_syncs.py) ----------------
# Counted by kind ('item', '__float__', 'cpu', 'to', 'copy_', '__setitem__'), wrapped around StandInTensor's own
# handler so the rest of this file is untouched.
host_syncs: Counter = Counter()
_SYNC_READS = _HOST_READS - {torch.Tensor.data_ptr}  # a pointer is not a value: no sync


def _is_host_sync(func, args: tuple, kwargs: dict) -> bool:
    if func in _SYNC_READS:
        return isinstance(args[0], StandInTensor)
    if func is torch.Tensor.cpu:
        return isinstance(args[0], StandInTensor)
    if func is torch.Tensor.to:  # a non-blocking copy into pinned memory is queued, not waited for
        device = _target_of_to(args, kwargs)[0]
        return (isinstance(args[0], StandInTensor) and device is not None and torch.device(device).type == "cpu"
                and not kwargs.get("non_blocking", False))
    if func in (torch.Tensor.copy_, torch.Tensor.__setitem__):  # device values into a CPU tensor
        source = args[-1] if func is torch.Tensor.__setitem__ else args[1]
        return not isinstance(args[0], StandInTensor) and isinstance(source, StandInTensor)
    return False


def _counting(handler):
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if _is_host_sync(func, args, kwargs or {}):
            host_syncs[getattr(func, "__name__", str(func))] += 1
        return handler.__func__(cls, func, types, args, kwargs)
    return classmethod(__torch_function__)


StandInTensor.__torch_function__ = _counting(StandInTensor.__dict__["__torch_function__"])

# Host→device copies that wait too: from pageable memory CUDA first lets the queue drain. Counted apart (model loads
# make many, once per run); `non_blocking` copies from pinned memory (sonic_model/sampling/transfers.py) are not counted.
blocking_uploads: Counter = Counter()


def _count_upload(tensor: torch.Tensor, kwargs: dict) -> None:
    if not isinstance(tensor, StandInTensor) and tensor.device.type == "cpu" and not kwargs.get("non_blocking"):
        blocking_uploads[tuple(tensor.shape)] += 1


class StandInEvent:
    """torch.cuda.Event on the stand-in: its work is done when asked, so there is never anything to wait for."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def record(self, stream=None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


_CUDA_FUNCTIONS["Event"] = StandInEvent
