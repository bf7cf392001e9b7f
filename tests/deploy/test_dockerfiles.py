"""The three Dockerfiles: stages, non-root user, what they install, what they copy; hadolint."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import (
    BUILT,
    DOCKERIGNORE,
    REPO,
    Stage,
    hadolint,
    parse_dockerfile,
    requirement_closure,
    requirement_names,
)

DOCKERFILES = {name: REPO / name / "Dockerfile" for name in sorted(BUILT)}
# Packages that must never be in the gateway or classifier images (docs/DESIGN.md).
HEAVY = re.compile(r"^(tensorflow.*|tf-.*|tf2onnx|keras.*|torch.*|jax.*|efficientnet.*)$")
SERVICE_REQUIREMENTS = {
    "gateway": "gateway.txt",
    "classifier": "classifier.txt",
    "converter": "converter.txt",
}


def stages(name: str) -> dict[str, Stage]:
    parsed = parse_dockerfile(DOCKERFILES[name])
    assert all(s.name for s in parsed), f"{name}: every stage needs a name"
    return {s.name: s for s in parsed}  # type: ignore[misc]


def last_user(stage: Stage) -> str | None:
    users = stage.args("USER")
    return users[-1] if users else None


@pytest.mark.parametrize("name", sorted(BUILT))
def test_hadolint_passes(name: str) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILES[name])], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(BUILT))
def test_stages_builder_runtime_test(name: str) -> None:
    parsed = parse_dockerfile(DOCKERFILES[name])
    by_name = stages(name)
    assert {"builder", "runtime", "test"} <= set(by_name)
    assert by_name["test"].base == "runtime"
    # A plain `docker build` gives the runtime image, not the test one.
    assert parsed[-1].base == "runtime" and not parsed[-1].instructions
    # The runtime copies the virtual environment built in the builder stage.
    assert any(a.startswith("--from=builder") for a in by_name["runtime"].args("COPY"))
    assert by_name["runtime"].base == by_name["builder"].base
    assert re.fullmatch(r"python:3\.11[-.\w]*", by_name["runtime"].base), "pinned Python 3.11 base"


@pytest.mark.parametrize("name", sorted(BUILT))
def test_runs_as_a_fixed_non_root_user(name: str) -> None:
    by_name = stages(name)
    for stage in ("runtime", "test"):
        user = last_user(by_name[stage])
        assert user and re.fullmatch(r"\d+(:\d+)?", user), f"{name}/{stage}: USER {user}"
        assert int(user.split(":")[0]) != 0, f"{name}/{stage} ends as root"
    assert by_name["runtime"].args("CMD"), f"{name}: no CMD"


@pytest.mark.parametrize("name", ["gateway", "classifier"])
def test_long_running_images_have_a_healthcheck(name: str) -> None:
    assert stages(name)["runtime"].args("HEALTHCHECK")


@pytest.mark.parametrize("name", sorted(BUILT))
def test_test_target_runs_pytest_on_the_service_tests(name: str) -> None:
    test = stages(name)["test"]
    assert any("pytest" in a for a in test.args("RUN"))
    assert any(f"tests/{name}" in a for a in test.args("ARG") + test.args("RUN")), "which tests it runs"
    assert any(a.split()[0].rstrip("/") == f"tests/{name}" for a in test.args("COPY"))


def installed_requirement_files(name: str) -> list[Path]:
    """The repository's requirement files that the builder stage installs with -r."""
    builder = stages(name)["builder"]
    files = []
    for run in builder.args("RUN"):
        for path in re.findall(r"-r\s+(\S+)", run):
            files.append(REPO / "requirements" / Path(path).name)
    return files


@pytest.mark.parametrize("name", sorted(BUILT))
def test_installs_its_own_requirement_file_and_everything_it_includes(name: str) -> None:
    files = installed_requirement_files(name)
    assert [f.name for f in files] == [SERVICE_REQUIREMENTS[name]]
    copied = {Path(src).name for a in stages(name)["builder"].args("COPY") for src in a.split()[:-1]}
    needed = {p.name for p in requirement_closure(files[0])}
    assert needed <= copied, f"{name}: -r includes not copied into the builder: {sorted(needed - copied)}"


@pytest.mark.parametrize("name", ["gateway", "classifier"])
def test_gateway_and_classifier_images_have_no_tensorflow_or_torch(name: str) -> None:
    installed = set()
    for f in installed_requirement_files(name):
        installed |= requirement_names(f)
    assert "numpy" in installed  # the parse found the real files
    heavy = sorted(n for n in installed if HEAVY.match(n))
    assert not heavy, f"{name} image would install {heavy}"
    if name == "gateway":
        assert "onnxruntime" not in installed
    # No package is installed by name outside the requirement files (the test stage aside).
    for stage in ("builder", "runtime"):
        for run in stages(name)[stage].args("RUN"):
            if "pip install" in run:
                assert re.search(r"pip install (--no-cache-dir )?-r ", run), run


def test_converter_takes_torch_from_the_cpu_index() -> None:
    runs = " ".join(stages("converter")["builder"].args("RUN"))
    assert "download.pytorch.org/whl/cpu" in runs
    assert "requirements/converter.txt" in runs


def copy_sources(name: str) -> list[str]:
    sources = []
    for stage in stages(name).values():
        for args in stage.args("COPY"):
            words = args.split()
            if any(w.startswith("--from") for w in words):
                continue
            sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def dockerignore_patterns() -> list[tuple[str, bool]]:
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((line[1:], False) if line.startswith("!") else (line, True))
    return out


def ignored(path: str) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a pattern matches the path or a parent."""
    result = False
    parts = Path(path).parts
    for pattern, exclude in dockerignore_patterns():
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(prefix, pattern[3:])
            ):
                result = exclude
                break
    return result


@pytest.mark.parametrize("name", sorted(BUILT))
def test_everything_copied_exists_and_is_in_the_build_context(name: str) -> None:
    for src in copy_sources(name):
        path = REPO / src
        assert path.exists(), f"{name}/Dockerfile copies {src}, which does not exist"
        if path.is_dir():
            assert any(p.is_file() for p in path.rglob("*")), f"{src} is empty: git keeps no empty folder"
        assert not ignored(src.rstrip("/")), f"{src} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    for path in (
        ".git",
        ".venv",
        "models",
        "uploads",
        "feedback",
        ".env",
        "gateway/__pycache__",
        "tests/.pytest_cache",
    ):
        assert ignored(path), f"{path} would be sent to the build"
    assert not ignored(".env.example") and not ignored("tests/data/coffee.jpg")
