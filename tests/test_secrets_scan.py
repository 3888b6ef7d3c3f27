"""No secret is ever committed, and the secrets Atoll makes are private to their owner.

The scan covers every file git would commit (tracked, plus untracked files that are not ignored)
and fails on private-key headers (PEM, OpenSSH) and Atoll API keys. Nothing is allow-listed: a
test that needs a key makes one at run time.
"""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atoll import pki
from atoll.cli import app as atoll_cli
from server.api.auth import parse_key

ROOT = Path(__file__).resolve().parents[1]
_DASHES = "-" * 5
SECRET_PATTERNS = {
    "private key (PEM/OpenSSH)": re.compile(
        _DASHES + r"BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY" + _DASHES
    ),
    "Atoll API key": re.compile(r"atoll_[0-9a-f]{12}_[A-Za-z0-9_-]{43}"),
}


def _committable_files() -> list[Path]:
    res = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.fail(f"`git ls-files` failed in {ROOT}: {res.stderr.decode(errors='replace')}")
    return [ROOT / name for name in sorted(set(res.stdout.decode().split("\0"))) if name]


def _findings(files: list[Path]) -> list[str]:
    found = []
    for path in files:
        if not path.is_file():  # deleted in the work tree
            continue
        text = path.read_bytes().decode("latin-1")
        for label, pattern in SECRET_PATTERNS.items():
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                found.append(f"{shown}:{line}: {label}")
    return found


def test_no_secret_in_the_repository() -> None:
    files = _committable_files()
    assert len(files) > 20, "git listed too few files: is this the repository?"
    found = _findings(files)
    assert not found, "remove these secrets and rotate them:\n" + "\n".join(found)


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The patterns match real keys: the ones Atoll writes."""
    tls = pki.create_tls(tmp_path / "certs")
    node_key, _pub = pki.create_node_key(tmp_path / "keys", "node")
    api_key = tmp_path / "api.txt"
    api_key.write_text("atoll_" + "0" * 12 + "_" + "A" * 43 + "\n")
    assert parse_key(api_key.read_text().strip()) is not None
    found = _findings([tls.server_key, tmp_path / "certs" / "ca.key", node_key, api_key])
    assert len(found) == 4, found


def test_private_keys_are_owner_only(tmp_path: Path) -> None:
    tls = pki.create_tls(tmp_path / "certs")
    node_key, _pub = pki.create_node_key(tmp_path / "keys", "node")
    for private in (tls.server_key, tmp_path / "certs" / "ca.key", node_key):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    for directory in (tmp_path / "certs", tmp_path / "keys"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_key_commands_never_print_private_keys(tmp_path: Path) -> None:
    runner = CliRunner()
    outputs = [
        runner.invoke(atoll_cli, ["certs", "create", "--out", str(tmp_path / "certs")]),
        runner.invoke(atoll_cli, ["keys", "node", "n1", "--out", str(tmp_path / "keys")]),
    ]
    for res in outputs:
        assert res.exit_code == 0, res.output
        assert "PRIVATE KEY" not in res.output and "mode 600" in res.output
