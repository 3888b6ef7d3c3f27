"""The warm clientapp launcher (client/launcher): shim + zygote, and a real federation on it.

Real processes throughout: a supervised zygote (as `atoll.services` starts one beside each
SuperNode), the generated `flwr-clientapp` shim run by name from PATH, and a target entry point
(tests/helpers/launcher_target.py) standing in for Flower's so that exit codes, streams and
signals can be provoked; one test runs Flower's own entry point through the zygote, and the last
runs a signed federation whose every message must have been a fork of its node's zygote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.launcher import (
    FALLBACK_NOTE,
    Zygote,
    fake_flwr_clientapp,
    path_with,
    start_zygote,
    without_zygote,
)
from helpers.procs import read, wait_until

from atoll.federation import LocalFederation
from atoll.partition import partition_csv
from client.launcher.install import launcher_paths, zygote_argv
from client.launcher.protocol import SHIM_NAME
from common.synth import write_csv

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CONTRACT = ROOT / "contracts" / "synthetic.yaml"


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory):
    z = start_zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.proc.stop()
    assert not z.paths.socket.exists(), "the zygote left its socket behind"


def _shim(zygote: Zygote, *args: str, env: dict[str, str] | None = None, **kw):  # type: ignore[no-untyped-def]
    """Run `flwr-clientapp ARGS` by name, as Flower's SuperExec does."""
    return subprocess.run(
        [SHIM_NAME, *args], env=env or zygote.env, capture_output=True, text=True, timeout=60, **kw
    )


def test_the_shim_hands_argv_env_cwd_and_umask_to_a_fork_of_the_zygote(
    zygote: Zygote, tmp_path: Path
) -> None:
    before = len(zygote.launches())
    res = _shim(zygote, "report", "two words", "é", cwd=tmp_path, umask=0o027)
    assert res.returncode == 0, res.stderr
    assert FALLBACK_NOTE not in res.stderr
    seen = json.loads(res.stdout)
    assert seen["ppid"] == zygote.pid  # forked by the zygote, not exec'd
    assert seen["pid"] in zygote.launches()[before:]
    assert seen["argv"] == [str(VENV_BIN / SHIM_NAME), "report", "two words", "é"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["umask"] == 0o027
    assert seen["env"] == zygote.env
    assert seen["path0"] == os.path.realpath(VENV_BIN)  # what the real script's sys.path has
    assert seen["app_modules"] == []  # the launcher's own `client.*` modules were dropped
    assert seen["threads"] == 1
    assert sorted(seen["fds"]) == ["0", "1", "2"], seen["fds"]  # none of the zygote's


def test_exit_code_and_both_streams_are_the_child_s(zygote: Zygote) -> None:
    res = _shim(zygote, "exit", "3")
    assert (res.returncode, res.stdout, res.stderr) == (3, "to stdout\n", "to stderr\n")
    res = _shim(zygote, "die")
    assert res.returncode == -signal.SIGKILL  # the shim dies of the child's signal
    assert re.search(r"exited status=-9", zygote.log())


def test_sigterm_to_the_shim_reaches_the_child(zygote: Zygote) -> None:
    shim = subprocess.Popen(
        [SHIM_NAME, "wait-for-term"], env=zygote.env, stdout=subprocess.PIPE, text=True
    )
    assert shim.stdout is not None
    child = int(shim.stdout.readline())
    assert child != shim.pid and child in zygote.launches()
    shim.send_signal(signal.SIGTERM)
    assert shim.wait(timeout=30) == 7  # the child's own SIGTERM handler chose 7
    assert shim.stdout.read() == "got SIGTERM\n"


def test_killing_the_shim_kills_the_child(zygote: Zygote) -> None:
    shim = subprocess.Popen([SHIM_NAME, "sleep"], env=zygote.env, stdout=subprocess.PIPE, text=True)
    assert shim.stdout is not None
    child = int(shim.stdout.readline())
    assert read(child) is not None
    shim.kill()
    shim.wait(timeout=10)
    assert wait_until(lambda: read(child) is None, timeout=30, poll=0.1), "the child outlived"
    assert f"shim of clientapp pid={child} is gone" in zygote.log()


def test_without_a_zygote_the_shim_execs_the_real_binary(zygote: Zygote, tmp_path: Path) -> None:
    fake = fake_flwr_clientapp(tmp_path / "real")
    env = without_zygote(zygote.env, tmp_path / "nobody.sock")
    env["PATH"] = path_with(zygote.paths.bin_dir, fake.parent)
    shim = subprocess.Popen(
        [SHIM_NAME, "--token", "t"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = shim.communicate(timeout=60)
    assert shim.returncode == 0
    assert out.decode() == f"real {shim.pid} --token t\n"  # same pid: exec, not a subprocess
    assert b"no zygote at" in err
    # and the venv's own flwr-clientapp when that is the next one on PATH
    env["PATH"] = path_with(zygote.paths.bin_dir, VENV_BIN)
    res = _shim(zygote, "--help", env=env)
    assert res.returncode == 0 and res.stdout.startswith("usage: flwr-clientapp")


def test_only_variables_read_at_import_must_match(zygote: Zygote, tmp_path: Path) -> None:
    res = _shim(zygote, "report", env={**zygote.env, "NOT_READ_AT_IMPORT": "1"})
    assert res.returncode == 0 and FALLBACK_NOTE not in res.stderr
    assert json.loads(res.stdout)["env"]["NOT_READ_AT_IMPORT"] == "1"
    # the target reads ATOLL_TARGET_MODE at import: a different value means a cold start
    fake = fake_flwr_clientapp(tmp_path / "real")
    path = path_with(zygote.paths.bin_dir, fake.parent)
    tz = zygote.env.get("TZ", "") + "X"  # TZ: read by C code (time, libc), not via os.environ
    for changed in ({"ATOLL_TARGET_MODE": "other"}, {"TZ": tz}):
        res = _shim(zygote, "report", env={**zygote.env, "PATH": path, **changed})
        assert res.returncode == 0 and res.stdout.startswith("real "), res.stderr
        name = next(iter(changed))
        assert f"zygote refused: environment differs from the zygote's imports in {name}" in (
            res.stderr
        )
    assert "refused a request: environment differs" in zygote.log()


def test_the_socket_is_private_to_the_node_user(zygote: Zygote, tmp_path: Path) -> None:
    assert stat.S_IMODE(zygote.paths.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(zygote.paths.socket.stat().st_mode) == 0o600
    # a zygote refuses to listen in a directory others can enter
    shared = launcher_paths(tmp_path / "flwr")
    shared.directory.mkdir(parents=True, mode=0o755)
    shared.directory.chmod(0o755)
    res = subprocess.run(
        zygote_argv(shared, entry="helpers.launcher_target:main"),
        env=zygote.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and "with mode 0700" in res.stderr
    assert not shared.socket.exists()


def test_a_deep_flwr_home_gets_a_private_temporary_directory(tmp_path: Path) -> None:
    deep = start_zygote(tmp_path / ("d" * 60) / ("e" * 60))
    try:
        assert deep.paths.temporary and len(str(deep.paths.socket)) <= 100
        assert stat.S_IMODE(deep.paths.directory.stat().st_mode) == 0o700
        res = _shim(deep, "exit", "0")
        assert res.returncode == 0 and len(deep.launches()) == 1
    finally:
        deep.proc.stop()
    assert not deep.paths.directory.exists()  # socket, shim and directory gone with the zygote


def test_flower_s_own_entry_point_runs_in_the_fork(tmp_path: Path) -> None:
    real = start_zygote(tmp_path, entry=None)
    try:
        res = _shim(real, "--help")
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("usage: flwr-clientapp")
        assert FALLBACK_NOTE not in res.stderr
        assert len(real.launches()) == 1
        assert "launcher modules dropped: client, client.launcher" in real.log()
    finally:
        real.proc.stop()


# ---- a real federation ------------------------------------------------------------------------


def test_a_federation_runs_every_message_through_the_zygotes(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "synthetic.csv", 2400, seed=1, departments=2)
    parts = partition_csv(data, "department", 2, tmp_path / "silos")
    outputs: list[str] = []
    with LocalFederation(tmp_path / "fed") as fed:
        assert fed.warm_clientapp  # the default
        fed.start_coordinator()
        for part in parts:
            fed.add_node(part.name, part.path, CONTRACT)
        outcome = fed.run(
            {"num-server-rounds": 2, "min-nodes": 2, "contract-path": str(CONTRACT)},
            on_line=outputs.append,
            timeout=900,
        )
        zygotes = {p.name: fed.processes[f"node:{p.name}"].companions for p in parts}
    assert outcome.exit_code == 0, "\n".join(outputs[-40:])
    assert outcome.model_name and outcome.model_version == 1  # published: the signed relay ran
    for part in parts:
        node_log = (fed.logs / f"{part.name}.log").read_text(errors="replace")
        zygote_log = (fed.logs / f"{part.name}.launcher.log").read_text(errors="replace")
        messages = len(re.findall(r"Receiving: \S+ message", node_log))
        started = node_log.count("Start `flwr-clientapp` process")
        forks = re.findall(r"launched clientapp pid=(\d+)", zygote_log)
        statuses = re.findall(r"clientapp pid=\d+ exited status=(-?\d+)", zygote_log)
        assert messages >= 3  # two train rounds and the final evaluation, at least
        assert len(forks) == started == messages, (part.name, zygote_log[-2000:])
        assert len(set(forks)) == len(forks)
        assert statuses == ["0"] * len(forks)
        assert FALLBACK_NOTE not in node_log
        assert [z.alive for z in zygotes[part.name]] == [False]  # stopped with its SuperNode
