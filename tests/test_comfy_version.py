"""The pack refuses an older ComfyUI with the fix named, and accepts the releases it has run on."""
import pytest

from tools.comfy_runtime import import_pack

import_pack()
from sonic_pack.nodes.comfy_version import MINIMUM_COMFYUI, installed_comfyui, parse_version, \
    require_comfyui  # noqa: E402


def test_versions_compare_as_numbers():
    assert parse_version("0.33.0") > parse_version("0.3.75") > parse_version("0.3.64")
    assert parse_version("0.33.0rc1") == (0, 33, 0)


@pytest.mark.parametrize("version", ["0.3.64", "0.3.75", "0.28.0", "0.33.0"])
def test_releases_it_ran_on_load(version):
    require_comfyui(version)


def test_an_older_comfyui_is_refused_with_the_update_named():
    with pytest.raises(ImportError, match=r"needs ComfyUI 0\.3\.64 or newer; this is ComfyUI 0\.3\.47\. Update"):
        require_comfyui("0.3.47")


def test_the_running_comfyui_meets_the_minimum():
    assert parse_version(installed_comfyui()) >= MINIMUM_COMFYUI
