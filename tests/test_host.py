"""The library's one host interface (sonic_model/host.py): progress that never goes backwards and checks Cancel after
every update, one bar shared by parts, and out-of-memory errors explained once, after the host freed its cache."""
import pytest
import torch

from recording_host import Cancelled, RecordingHost
from sonic_model.host import Host, explained, retried_once


def test_progress_is_shown_then_cancel_is_checked_and_it_never_goes_backwards():
    host = RecordingHost(cancel_after=3)
    progress = host.progress(4)
    progress(1)
    progress(3)
    with pytest.raises(Cancelled):
        progress(2)  # a 2-evaluation sampler redoing a step: shown as 3 again, then Cancel
    assert host.updates == [(1, 4), (3, 4), (3, 4)]


def test_parts_share_one_bar():
    host = RecordingHost()
    progress = host.progress(5)
    second = progress.share(1, 3)
    second(5)
    progress.share(2, 3)(1)
    assert host.updates == [(10, 15), (11, 15)]


def test_a_preview_frame_reaches_the_host():
    host = RecordingHost()
    frame = torch.zeros(4, 4, 3)
    host.progress(2)(1, preview=frame)
    assert host.previews == [frame]


def test_out_of_memory_is_explained_once_after_the_host_frees_memory():
    host = RecordingHost()
    with pytest.raises(torch.OutOfMemoryError, match="inner stage") as caught:
        with explained(host, lambda _: "outer stage"):
            with explained(host, lambda _: "inner stage"):
                raise torch.OutOfMemoryError("CUDA out of memory")
    assert host.freed == 1 and "outer" not in str(caught.value)


def test_an_os_error_is_explained_without_freeing_memory():
    host = RecordingHost()
    with pytest.raises(OSError, match="disk full: free space"):
        with explained(host, lambda error: f"disk full: free space ({error})", (OSError,)):
            raise OSError(28, "No space left on device")
    assert host.freed == 0


def test_retried_once_after_freeing_then_the_second_failure_propagates():
    host, calls = RecordingHost(), []

    def fails_once():
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("fragmented")
        return "ok"

    assert retried_once(host, fails_once) == "ok" and host.freed == 1

    def always_fails():
        raise torch.OutOfMemoryError("too big")

    with pytest.raises(torch.OutOfMemoryError, match="too big"):
        retried_once(host, always_fails)
    assert host.freed == 2


def test_the_library_alone_is_its_own_host():
    host = Host()
    assert host.compute_device == host.offload_device == torch.device("cpu")
    host.progress(3)(2)  # no display, never cancelled
