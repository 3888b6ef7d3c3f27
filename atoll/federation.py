"""A whole federation on one machine, with the real deployment engine: the main job's engine.

`LocalFederation` owns a work directory (certs, keys, coordinator state, node homes, logs) and the
processes it starts; it is a context manager so nothing outlives it. Its runs go through
`atoll.runs.follow_run`; `atoll.partition.partition_csv` makes the silos for demos and tests.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from atoll import pki
from atoll.flower_cli import register_node, write_connection
from atoll.processes import ManagedProcess, flower_env, free_port, spawn, wait_for_port
from atoll.proxy import ProxySettings, start_proxy
from atoll.runs import APP_DIR, CONNECTION, RunOutcome, follow_run
from atoll.services import start_app_store, start_runtime, start_superlink, start_supernode
from client.runtime.config import NodeConfig
from common.files import write_private
from common.wire import RUNTIME_SOCKET
from privacy.ledger import Ledger, Policy
from privacy.limits import RequestLimits
from server.api.audit_trail import key_change_recorder, operator_log
from server.api.auth import ApiKeyStore
from server.app_store import SigningKey, StoredApp, publish_app
from server.coordinator_audit import close_abandoned_runs
from server.coordinator_settings import CoordinatorSettings
from server.node_names import NodeNames
from server.registry_signing import load_publishing_key

DEFAULT_POLICY = Policy(cap_epsilon=10.0, delta=1e-5)  # the demo's per-node budget
COORDINATOR = "coordinator"  # the coordinator's host name for `LocalFederation.on_host`
OnHost = Callable[[str], AbstractContextManager[object]]


def same_host(_host: str) -> AbstractContextManager[object]:
    """Every party on this machine (the default `on_host`)."""
    return nullcontext()


@dataclass
class LocalFederation:
    workdir: Path
    node_auth: bool = True
    proxy: bool = False  # nodes dial an nginx fleet proxy, never the SuperLink (atoll.proxy)
    signed_apps: bool = True  # nodes run only apps signed by the coordinator (server.app_store)
    # each SuperNode's `flwr-clientapp` is forked from a per-node zygote (client/launcher);
    # False: Flower's own launch, a fresh interpreter per message
    warm_clientapp: bool = True
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    # Where each party runs: a context manager putting the calling thread (and the processes it
    # starts) on host COORDINATOR or on a node's host (its name), e.g. a network namespace
    # (tests/helpers/netns.py). `public_host` is the coordinator's address nodes dial; off
    # loopback they reach it through the fleet proxy only, and the certificate names it.
    on_host: OnHost = same_host
    public_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.public_host not in pki.DEFAULT_HOSTS and not self.proxy:
            raise ValueError(
                f"nodes dialling {self.public_host} reach the SuperLink through the fleet proxy "
                "only (its Control API stays on loopback): set proxy=True"
            )
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.coordinator_home = self.workdir / "coordinator"
        self.logs = self.workdir / "logs"
        self.registry_url = f"sqlite:///{self.coordinator_home / 'registry.db'}"
        self.superlink_port = 0
        self.proxy_port = 0
        self.tls: pki.TlsFiles | None = None
        self.app_signing: pki.AppSigningFiles | None = None
        self.app_store_url: str | None = None
        self.last_app: StoredApp | None = None  # the signed build the last run submitted

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for proc in reversed(list(self.processes.values())):
            proc.stop()

    # -- coordinator -----------------------------------------------------------------------
    def start_coordinator(self, port: int | None = None) -> None:
        """App store, SuperLink and (with `proxy`) the fleet proxy, on the coordinator's host."""
        with self.on_host(COORDINATOR):
            self._start_coordinator(port)

    def _start_coordinator(self, port: int | None) -> None:
        self.coordinator_home.mkdir(parents=True, exist_ok=True)
        hosts: tuple[str, ...] = pki.DEFAULT_HOSTS
        if self.public_host not in hosts:
            hosts = (*hosts, self.public_host)
        self.tls = pki.create_tls(self.workdir / "certs", hosts=hosts)
        self.superlink_port = port or free_port()
        if self.signed_apps:
            self.app_signing = pki.create_app_signing_key(self.coordinator_home / "app-signing")
            store_port = free_port()
            self.processes["app-store"] = start_app_store(
                directory=self.app_store_dir,
                tls=self.tls,
                port=store_port,
                log_path=self.logs / "app-store.log",
            )
            self.app_store_url = f"https://127.0.0.1:{store_port}"
        load_publishing_key(self.publishing_key)  # created now: the API pins its .pub
        self.coordinator_settings = CoordinatorSettings(
            registry_url=self.registry_url,
            audit_key=self.coordinator_home / "audit" / "coordinator.pem",
            publishing_key=self.publishing_key,
            contracts_dir=self.contracts_dir,
            checkpoint_dir=self.workdir / "checkpoints" / "coordinator",
        )
        self.coordinator_settings.write(self.coordinator_home / "coordinator.toml")
        self._start_superlink()
        write_connection(self.coordinator_home / "flwr", CONNECTION, self.address, self.tls.ca_cert)
        if self.proxy:
            self.proxy_port = free_port()
            self.processes["proxy"] = start_proxy(
                ProxySettings(
                    # off loopback: every address of the coordinator host (its own network)
                    listen=self.node_address
                    if self.public_host in pki.DEFAULT_HOSTS
                    else f"0.0.0.0:{self.proxy_port}",
                    upstream=self.address,
                    tls=self.tls,
                    runtime_dir=self.coordinator_home / "proxy",
                ),
                self.logs / "proxy.log",
            )

    def _start_superlink(self) -> None:
        assert self.tls is not None
        own = self.coordinator_settings
        close_abandoned_runs(own.registry_url, own.audit_key)  # as `atoll superlink start` does
        self.processes["superlink"] = start_superlink(
            tls=self.tls,
            port=self.superlink_port,
            state_db=self.coordinator_home / "superlink-state.db",
            log_path=self.logs / "superlink.log",
            node_auth=self.node_auth,
            app_store=self.app_store_url,
            coordinator_config=self.coordinator_home / "coordinator.toml",
        )

    def restart_superlink(self) -> None:
        """Stop the SuperLink (and the ServerApp it runs) if still alive and start it again on
        the same port and state database: runs, registrations and messages survive."""
        self.processes["superlink"].stop()
        with self.on_host(COORDINATOR):
            self._start_superlink()

    @property
    def publishing_key(self) -> Path:
        """The coordinator's registry publishing key; its .pub is what the API pins."""
        return self.coordinator_home / "publishing" / "publishing.pem"

    @property
    def contracts_dir(self) -> Path:
        return self.coordinator_home / "contracts"

    @property
    def app_store_dir(self) -> Path:
        return self.coordinator_home / "app-store"

    @property
    def address(self) -> str:
        """The SuperLink itself (coordinator host only: Control API included)."""
        return f"127.0.0.1:{self.superlink_port}"

    @property
    def node_address(self) -> str:
        """What SuperNodes dial: the fleet proxy when there is one."""
        return f"{self.public_host}:{self.proxy_port}" if self.proxy else self.address

    # -- nodes -----------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        data: Path | str,
        contract: Path,
        *,
        register: bool = True,
        policy: Policy | None = DEFAULT_POLICY,
        trusted_entities: Path | None | Literal["coordinator"] = "coordinator",
        limits: RequestLimits | None = None,
        supernode_user: str | None = None,
        **data_config: Any,
    ) -> ManagedProcess:
        """Set up a node as its owner would, then start its runtime and its SuperNode.

        The owner's side: a node.toml (data source, contract, state), a budget ledger with
        `policy` (`policy=None` leaves none: the runtime will not start), then `atoll node
        runtime`. The SuperNode gets only the runtime's socket. Its key is registered with the
        coordinator unless `register=False`. By default the node runs only apps signed by this
        coordinator's key (when `signed_apps`). `data_config` holds [data] keys of node.toml
        (e.g. `id-from-row=True`). Returns the SuperNode; see processes["runtime:NAME"].
        """
        if trusted_entities == "coordinator":
            trusted_entities = self.app_signing.trusted_entities if self.app_signing else None
        assert self.tls is not None, "start_coordinator() first"
        home = self.workdir / "nodes" / name
        home.mkdir(parents=True, exist_ok=True)
        node_cfg = NodeConfig.model_validate(
            {
                "name": name,
                "contract": str(contract.resolve()),
                "state-dir": str(home / "state"),
                "socket": str(home / "runtime.sock"),
                "socket-group": _group_of(supernode_user) if supernode_user else "",
                # the runtime checks each build's signed manifest against the same key(s)
                "trusted-app-key": str(trusted_entities) if trusted_entities else None,
                # the node log's signed checkpoints, outside the node's state (as a share would be)
                "checkpoint-dir": str(self.workdir / "checkpoints" / "nodes" / name),
                "data": {"source": str(data), **data_config},
            }
        )
        config_path = home / "node.toml"
        # the owner's config names the data source: the owner's alone (the SuperNode's user
        # must traverse the node's directory to reach its socket, so the file itself is 0600)
        write_private(config_path, node_cfg.to_toml())
        if policy is not None:
            if limits is not None:
                policy = policy.model_copy(update={"limits": limits})
            Ledger.initialize(home / "state", name, policy).close_db()
        key = None
        if self.node_auth:
            key, pub = pki.create_node_key(home / "keys", "node")
            if supernode_user is not None:  # the SuperNode's own key, and only that
                for path in (key.parent, key):
                    os.chown(path, pwd.getpwnam(supernode_user).pw_uid, -1)
            if register:
                with self.on_host(COORDINATOR):
                    self._register(name, pub)
        with self.on_host(name):  # the node's own host: its runtime, then its SuperNode
            return self._start_node(
                name, home, node_cfg, key, policy is not None, trusted_entities, supernode_user
            )

    def _register(self, name: str, pub: Path) -> None:
        """The coordinator admits a node's key (as `atoll node register` does)."""
        fingerprint = hashlib.sha256(pub.read_bytes().split()[1]).hexdigest()
        operator_log(self.registry_url).append(
            "operator",
            "node.registered",
            f"node:{name}",
            {"name": name, "public_key_sha256": fingerprint},
        )
        node_id = register_node(self.coordinator_home / "flwr", CONNECTION, pub, name)
        names = NodeNames(self.registry_url)
        names.add(node_id, name, fingerprint)
        names.close()

    def _start_node(
        self,
        name: str,
        home: Path,
        node_cfg: NodeConfig,
        key: Path | None,
        runtime: bool,
        trusted_entities: Path | None,
        supernode_user: str | None,
    ) -> ManagedProcess:
        assert self.tls is not None
        if runtime:
            self.processes[f"runtime:{name}"] = start_runtime(
                name=name,
                config=home / "node.toml",
                socket_path=node_cfg.socket,
                log_path=self.logs / f"runtime-{name}.log",
            )
        proc = start_supernode(
            name=name,
            superlink=self.node_address,
            ca_cert=self.tls.ca_cert,
            private_key=key,
            node_config={RUNTIME_SOCKET: f"unix:{node_cfg.socket}"},
            port=free_port(),
            flwr_home=home / "flwr",
            log_path=self.logs / f"{name}.log",
            trusted_entities=trusted_entities,
            user=supernode_user,
            warm_clientapp=self.warm_clientapp,
        )
        self.processes[f"node:{name}"] = proc
        return proc

    # -- runs ------------------------------------------------------------------------------
    def run(
        self,
        config: dict[str, Any],
        *,
        on_line: Callable[[str], None] | None = None,
        timeout: float = 3600,
    ) -> RunOutcome:
        cfg = dict(config)  # no secret, no coordinator path: those are coordinator.toml's
        app: Path | str = APP_DIR
        if self.app_signing is not None:
            self.last_app = publish_app(
                APP_DIR, self.app_store_dir, SigningKey.load(self.app_signing.private_key)
            )
            app = self.last_app.spec
        with self.on_host(COORDINATOR):
            return follow_run(
                flwr_home=self.coordinator_home / "flwr",
                config=cfg,
                app=app,
                work=self.coordinator_home,
                log_path=self.logs / "runs.log",
                on_line=on_line,
                timeout=timeout,
                contracts_dir=self.contracts_dir,
            )

    # -- serving ---------------------------------------------------------------------------
    def create_api_key(self, role: str, name: str | None = None) -> str:
        """A new API key for the scoring API (the full key string; only its hash is stored)."""
        recorder = key_change_recorder(self.registry_url)
        with ApiKeyStore.open(self.registry_url, on_event=recorder) as store:
            _info, key = store.create(name or f"local-{role}", role)
        return key

    def start_api(self, port: int | None = None, host: str = "127.0.0.1", tls: bool = True) -> str:
        """Serve the scoring API; over HTTPS with the federation's certificate unless tls=False."""
        port = port or free_port()
        argv = [
            sys.executable,
            "-m",
            "atoll",
            "serve",
            "--registry",
            self.registry_url,
            "--host",
            host,
            "--port",
            str(port),
        ]
        if tls:
            assert self.tls is not None, "start_coordinator() first (it creates the certificates)"
            argv += ["--certfile", str(self.tls.server_cert), "--keyfile", str(self.tls.server_key)]
        argv += ["--registry-public-key", str(self.publishing_key.with_suffix(".pub"))]
        coordinator_pub = self.coordinator_home / "audit" / "coordinator.pub"
        if coordinator_pub.exists():  # lets GET /audit/verify check the coordinator's log too
            argv += ["--audit-public-key", str(coordinator_pub)]
        with self.on_host(COORDINATOR):
            proc = spawn("api", argv, self.logs / "api.log", flower_env())
            self.processes["api"] = proc
            wait_for_port(port, timeout=60, proc=proc)
        return f"{'https' if tls else 'http'}://{host}:{port}"


def _group_of(user: str) -> str:
    return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
