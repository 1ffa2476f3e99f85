"""The Debian package's files, checked without building it (packaging/check.sh builds it).

The shipped configuration must validate once the postinst has written the node id, the
postinst must recognise a missing node id from the real error message, and the systemd unit
must pass `systemd-analyze verify`, score at most 5.0 and have every exposure it leaves open
explained in docs/operations.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gatewayd.config_load import load_settings
from tests.helpers import ROOT, daemon_env, free_port, run_gatewayd, write_yaml

PACKAGING = ROOT / "packaging"
UNIT = PACKAGING / "systemd" / "gatewayd.service"
POSTINST = PACKAGING / "debian" / "gatewayd.postinst"
MAX_EXPOSURE = 5.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def _etc(tmp_path: Path, *, identity: bool) -> Path:
    """An /etc/gatewayd as a fresh install leaves it, under tmp_path."""
    etc = tmp_path / "etc" / "gatewayd"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "products").mkdir()
    shutil.copy(PACKAGING / "etc" / "gatewayd.yaml", etc / "gatewayd.yaml")
    if identity:
        write_yaml(
            etc / "conf.d" / "00-identity.yaml", {"gateway": {"node_id": "gw-0a1b2c3d4e5f6a7b"}}
        )
    return etc / "gatewayd.yaml"


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def _runnable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists before installation."""
    text = UNIT.read_text().replace("ExecStart=/usr/bin/gatewayd ", f"ExecStart={sys.executable} ")
    path = tmp_path / "gatewayd.service"
    path.write_text(text)
    return path


def _security(unit: Path) -> str:
    return subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    ).stdout


def test_packaged_config_is_valid_with_the_installed_identity(tmp_path):
    settings = load_settings(_etc(tmp_path, identity=True))
    assert settings.gateway.node_id == "gw-0a1b2c3d4e5f6a7b"
    assert settings.products == tmp_path / "etc" / "gatewayd" / "products"
    assert settings.state_dir == Path("/var/lib/gatewayd")
    assert settings.cloud.host is None
    assert settings.api.host == "127.0.0.1"


def test_postinst_recognises_a_missing_node_id_from_check_config(tmp_path):
    pattern = re.search(r"grep -Eq '([^']+)'", POSTINST.read_text())
    assert pattern is not None, "postinst no longer greps check-config's output"
    result = run_gatewayd("check-config", "-c", str(_etc(tmp_path, identity=False)))
    assert result.returncode == 78
    assert re.search(pattern.group(1), result.stderr), result.stderr


def test_changelog_version_is_the_project_version():
    first = (PACKAGING / "debian" / "changelog").read_text().splitlines()[0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert first.startswith(f"gatewayd ({project}) ")


def test_unit_is_notify_restarting_sandboxed_and_allowed_its_devices():
    unit = _unit_settings()
    assert unit["Type"] == ["notify"]
    assert unit["WatchdogSec"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["78"]
    assert unit["LimitNOFILE"] == ["8192"]
    assert unit["User"] == ["gatewayd"]
    assert unit["SupplementaryGroups"] == ["dialout"]
    assert unit["StateDirectory"] == ["gatewayd"]
    assert unit["ConfigurationDirectory"] == ["gatewayd"]
    assert unit["LoadCredential"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["PrivateTmp"] == ["yes"]
    families = unit["RestrictAddressFamilies"][0].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} <= set(families)
    assert {"char-ttyUSB rw", "char-ttyS rw", "char-ttyACM rw"} <= set(unit["DeviceAllow"])


def _exit_statuses() -> dict[str, int]:
    from gatewayd import errors  # noqa: PLC0415

    named = {name: getattr(errors, name) for name in errors.__all__ if name.startswith("EX_")}
    return {"clean stop": 0, "bug": 1, **named}


def test_every_exit_status_is_documented_and_only_78_keeps_the_service_down():
    statuses = _exit_statuses()
    assert set(statuses.values()) == {0, 1, 65, 69, 75, 77, 78}
    man = (PACKAGING / "debian" / "gatewayd.1").read_text()
    section = man.split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    operations = (ROOT / "docs" / "operations.md").read_text()
    table = operations.split("### Exit statuses", 1)[1].split("\n#", 1)[0]
    for what, status in statuses.items():
        assert f".B {status}\n" in section, f"man page: exit status {status} ({what})"
        assert f"\n| {status} | " in table, f"operations.md: exit status {status} ({what})"
    assert _unit_settings()["RestartPreventExitStatus"] == [str(statuses["EX_CONFIG"])]


def test_maintainer_scripts_and_build_scripts_parse():
    for script in POSTINST, PACKAGING / "debian" / "gatewayd.postrm":
        subprocess.run(["sh", "-n", str(script)], check=True)
    for script in (
        PACKAGING / "check.sh",
        PACKAGING / "build-deb.sh",
        PACKAGING / "systemd-check.sh",
    ):
        subprocess.run(["bash", "-n", str(script)], check=True)


@needs_analyze
def test_unit_verifies_without_a_word(tmp_path):
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(_runnable_unit(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    # Without systemd as PID 1 the exit status is 0 even for errors: any output is a failure.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@needs_analyze
def test_unit_exposure_is_at_most_five_and_every_exposure_is_explained(tmp_path):
    report = _security(_runnable_unit(tmp_path))
    score = re.search(r"Overall exposure level for gatewayd\.service: ([0-9.]+)", report)
    assert score is not None, report
    assert float(score.group(1)) <= MAX_EXPOSURE
    open_items = [line.split()[1] for line in report.splitlines() if line.startswith("✗")]
    assert open_items, report
    operations = (ROOT / "docs" / "operations.md").read_text().replace("\\|", "|")
    unexplained = [item for item in open_items if f"`{item}`" not in operations]
    assert not unexplained, f"explain these in docs/operations.md: {unexplained}"


def test_a_broken_unit_is_caught(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    broken = tmp_path / "gatewayd.service"
    broken.write_text(_runnable_unit(tmp_path).read_text().replace("Type=notify", "Type=notfy"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(broken)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "notfy" in result.stdout + result.stderr


def test_notify_checker_passes_a_daemon_that_gets_ready(tmp_path):
    config = write_yaml(
        tmp_path / "gw.yaml",
        {
            "gateway": {"node_id": "gw-check"},
            "state_dir": str(tmp_path / "state"),
            "api": {"port": free_port()},
        },
    )
    result = subprocess.run(
        [
            sys.executable,
            str(PACKAGING / "notify_ready.py"),
            "--timeout-s",
            "20",
            "--",
            sys.executable,
            "-m",
            "gatewayd",
            "run",
            "-c",
            str(config),
        ],
        env=daemon_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "READY=1 after" in result.stdout


def test_notify_checker_fails_a_daemon_that_never_gets_ready(tmp_path):
    result = subprocess.run(
        [sys.executable, str(PACKAGING / "notify_ready.py"), "--timeout-s", "5", "--", "false"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 1
    assert "exited with 1 before READY=1" in result.stderr


def _built_deb(build: Path = PACKAGING / "build") -> Path:
    """The .deb of this checkout's version, as packaging/check.sh leaves it in packaging/build.

    In CI (`CI=true`) the package is always built before the tests (.ci/run), so a missing
    .deb or dpkg-deb fails the test; elsewhere the package tests are skipped.
    """
    with (ROOT / "pyproject.toml").open("rb") as file:
        version = tomllib.load(file)["project"]["version"]
    debs = sorted(build.glob(f"gatewayd_{version}_*.deb"))
    if len(debs) == 1 and shutil.which("dpkg-deb") is not None:
        return debs[0]
    if shutil.which("dpkg-deb") is None:
        why = "dpkg-deb is not installed"
    elif debs:
        why = f"{len(debs)} .debs of version {version} in {build}: {[d.name for d in debs]}"
    else:
        why = f"no gatewayd_{version}_*.deb in {build} (make deb, or packaging/check.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI builds the package before the tests (.ci/run): {why}")
    pytest.skip(why)


def test_a_missing_deb_fails_in_ci_and_is_skipped_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no gatewayd_"):
        _built_deb(tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no gatewayd_"):
        _built_deb(tmp_path)


ALLOWED = (
    "./etc/gatewayd/",
    "./lib/systemd/system/gatewayd.service",
    "./opt/venvs/gatewayd/",
    "./usr/bin/gatewayd",
    "./usr/share/doc/gatewayd/",
    "./usr/share/lintian/overrides/gatewayd",
    "./usr/share/man/man1/gatewayd.1.gz",
)


def test_built_deb_holds_only_its_own_places_and_states_its_dependencies(tmp_path):
    deb = _built_deb()
    listing = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True, timeout=120
    ).stdout
    tar = tmp_path / "data.tar"
    tar.write_bytes(listing)
    names = subprocess.run(
        ["tar", "-tf", str(tar)], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    files = [n for n in names if not n.endswith("/")]
    assert [f for f in files if not f.startswith(ALLOWED)] == []
    assert not any("/site-packages/setuptools/" in f for f in files)
    depends = subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True, check=True
    ).stdout
    for needed in ("python3 (<< 3.12)", "libsystemd0", "adduser", "libc6"):
        assert needed in depends
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True, timeout=60)
    assert (control / "conffiles").read_text().split()[0] == "/etc/gatewayd/gatewayd.yaml"


def test_built_deb_bytecode_never_goes_stale(tmp_path):
    deb = _built_deb()
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True, timeout=120)
    pycs = list((tmp_path / "opt").rglob("*.pyc"))
    assert len(pycs) > 1000
    # PEP 552 flags word: bit 0 = hash-based, bit 1 = check the source. Unchecked hash: 0b01.
    flags = {int.from_bytes(p.read_bytes()[4:8], "little") for p in pycs}
    assert flags == {1}


# What an operator reads on the gateway, from /usr/share/doc/gatewayd/.
OPERATOR_DOCS = {
    "README.md",
    "docs/operations.md",
    "docs/configuration.md",
    "docs/api.md",
    "docs/protocol.md",
}


def test_operator_docs_are_listed_for_the_package_and_exist():
    listed = (PACKAGING / "debian" / "gatewayd.docs").read_text().split()
    assert [doc for doc in listed if not (ROOT / doc).is_file()] == []
    assert OPERATOR_DOCS - set(listed) == set()


def test_built_deb_ships_the_operator_docs(tmp_path):
    deb = _built_deb()
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True, timeout=120)
    shipped = {p.name for p in (tmp_path / "usr" / "share" / "doc" / "gatewayd").iterdir()}
    assert {Path(doc).name for doc in OPERATOR_DOCS} <= shipped
