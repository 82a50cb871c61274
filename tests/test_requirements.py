"""requirements.txt: every bound holds for what the suite runs on, and diffusers, whose internals the UNet leans on,
has an upper bound."""
from importlib.metadata import version

from packaging.requirements import Requirement

from conftest import REPO


def _requirements() -> dict[str, Requirement]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    parsed = [Requirement(line) for line in (line.split("#")[0].strip() for line in lines) if line]
    return {r.name.lower(): r for r in parsed}


def test_installed_versions_meet_the_requirements():
    for name, requirement in _requirements().items():
        assert requirement.specifier.contains(version(name), prereleases=True), (name, version(name))


def test_diffusers_has_an_upper_bound_and_torchaudio_is_not_required():
    requirements = _requirements()
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirements["diffusers"].specifier)
    assert "torchaudio" not in requirements and "scipy" in requirements
