"""Real `replidb serve` processes in Linux network namespaces, with real partitions.

Step 4 of the testing ladder (docs: DESIGN.md): every node runs in a namespace of its
own, the nodes talk over veth links, and a partition is iptables DROP rules (INPUT and
OUTPUT) inside the namespaces -- a silent partition: packets vanish, nothing is
refused. Layout for ``NetnsCluster(nodes=3)`` started by process PID (K counts the
clusters this process made)::

    root namespace: the test process, link rdb<PID>c<K> = 10.203.X.254/24
        | veth
    hub namespace rdb-<PID>-<K>-hub: bridge br0 with ports ctl, vn1, vn2, vn3
        | veth vn1 <-> eth0          | vn2 <-> eth0          | vn3 <-> eth0
    rdb-<PID>-<K>-n1: 10.203.X.1    rdb-<PID>-<K>-n2: .2    rdb-<PID>-<K>-n3: .3

X is a third octet no address or route of the root namespace uses yet. All traffic
stays inside 10.203.X.0/24, on links this module creates and deletes.

Two ways to reach a node from the test process:

- ``connect`` (``"10.203.X.1:7100,..."``) goes over the controller veth from the root
  namespace; usable with ``replidb.connect``. Partitions never cut the controller
  address: it is the operator's management network, so a test can always observe.
- ``status``/``query``/``write``/``submit`` run the client in a thread that has
  entered the node's own namespace (``setns``), and talk to the node's address from
  inside it, as an application co-located with that node would.

Cleanup always runs (``__exit__``, an ``atexit`` hook, and SIGTERM/SIGHUP turned into
an exception while a cluster is up): it ends only the PIDs it started, then deletes the
links and namespaces it created.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import ctypes.util
import functools
import hashlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

from replidb.client.transport import Client, probe_status
from replidb.errors import Error
from replidb.transport import wire

__all__ = ["NetnsCluster", "NetnsError", "available"]

T = TypeVar("T")

SUBNET = "10.203"
PORT = 7100
CONTROLLER_HOST = 254
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = Path("/run/netns")
_counter = itertools.count(1)
_lock = threading.Lock()


class NetnsError(RuntimeError):
    """Setting up or tearing down the namespaces failed (a command's stderr included)."""


# ---- low-level helpers ------------------------------------------------------------


@functools.cache
def _which(tool: str) -> str | None:
    """``tool``'s path; the sbin directories count even when PATH lacks them."""
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    return shutil.which(tool, path=path)


def _resolve(args: Sequence[str]) -> list[str]:
    """Absolute paths for the command, and for the one ``ip netns exec NS`` runs."""
    command = list(args)
    command[0] = _which(command[0]) or command[0]
    if command[1:3] == ["netns", "exec"] and len(command) > 4:
        command[4] = _which(command[4]) or command[4]
    return command


def _run(args: Sequence[str], *, stdin: str | None = None, timeout: float = 10.0) -> str:
    try:
        done = subprocess.run(
            _resolve(args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(args)}: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _enter_netns(name: str) -> None:
    """Move the calling thread (only it) into namespace ``name``."""
    fd = os.open(_NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc().setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NetnsError(f"setns({name}): {os.strerror(errno)}")
    finally:
        os.close(fd)


def _in_thread(netns: str, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
    """Run ``fn`` in a new thread that first enters ``netns``; the thread ends with ``fn``
    (so it holds no reference to the namespace afterwards)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def body() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            _enter_netns(netns)
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=body, name=f"netns-{netns}", daemon=True).start()
    return future


@functools.cache
def available() -> str | None:
    """None when namespace tests can run here, else the reason they cannot."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if _which(tool) is None:
            return f"{tool} not found: install {package} (scripts/install-netns-tools.sh)"
    try:
        _libc().setns  # noqa: B018 -- is setns there at all?
    except (OSError, AttributeError) as exc:
        return f"libc setns unavailable: {exc}"
    probe = f"rdb-{os.getpid()}-probe"
    try:
        _run(["ip", "netns", "add", probe])
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _run(["ip", "-n", probe, "link", "set", "lo", "up"])
        _run(["ip", "netns", "exec", probe, "iptables", "-w", "5", "-A", "OUTPUT", "-d",
              f"{SUBNET}.255.1", "-j", "DROP"])  # fmt: skip
        _run(["ip", "netns", "exec", probe, "iptables", "-w", "5", "-F"])
        _in_thread(probe, lambda: None).result(5)
    except (NetnsError, OSError, concurrent.futures.TimeoutError) as exc:
        return f"iptables/setns do not work inside a network namespace: {exc}"
    finally:
        try:
            _run(["ip", "netns", "del", probe])
        except NetnsError:
            pass
    return None


def _pick_octet() -> int:
    """A third octet for 10.203.X.0/24 that nothing in the root namespace uses."""
    used = _run(["ip", "-4", "-o", "addr", "show"]) + _run(["ip", "-4", "route", "show"])
    taken = {int(m) for m in re.findall(rf"\b{re.escape(SUBNET)}\.(\d+)\.", used)}
    start = os.getpid() % 200
    for offset in range(250):
        octet = (start + offset) % 250 + 1
        if octet not in taken:
            return octet
    raise NetnsError(f"no free /24 left in {SUBNET}.0.0/16")


# ---- the cluster ----------------------------------------------------------------


class NetnsCluster:
    """N real nodes, one per network namespace; see the module docstring.

    ``with NetnsCluster(tmp_path) as cluster: cluster.isolate(cluster.wait_for_leader().id)``
    """

    def __init__(
        self,
        base: Path | None = None,
        nodes: int = 3,
        *,
        election_timeout_ms: int = 1000,
        heartbeat_ms: int = 100,
        extra: tuple[str, ...] = (),
    ) -> None:
        if not 1 <= nodes <= 200:
            raise ValueError("nodes must be between 1 and 200")
        self._own_base = base is None
        self.base = Path(tempfile.mkdtemp(prefix="replidb-netns-")) if base is None else base
        self.base.mkdir(parents=True, exist_ok=True)
        self.election_timeout = election_timeout_ms / 1000
        self.ids = [f"n{i + 1}" for i in range(nodes)]
        self.tag = f"rdb-{os.getpid()}-{next(_counter)}"
        self.hub = f"{self.tag}-hub"
        self.namespaces = {node: f"{self.tag}-{node}" for node in self.ids}
        # Root-namespace interface names are global: at most 15 characters, unique.
        self.controller_link = f"rdb{os.getpid()}c{self.tag.rsplit('-', 1)[1]}"[:15]
        self.octet = 0
        self.hosts: dict[str, str] = {}
        self.addresses: dict[str, str] = {}
        self.controller_address = ""
        self.extra = (
            "--election-timeout-ms",
            str(election_timeout_ms),
            "--heartbeat-ms",
            str(heartbeat_ms),
            *extra,
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._created_ns: list[str] = []
        self._created_root_link = False
        self._closed = False
        self._old_handlers: dict[int, Any] = {}

    # ---- lifecycle ----------------------------------------------------------------

    def __enter__(self) -> NetnsCluster:
        self._install_signal_handlers()
        atexit.register(self.close)
        try:
            self._create_network()
            for node in self.ids:
                self.start(node)
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop our processes, delete our links and namespaces. Safe to call twice."""
        with _lock:
            if self._closed:
                return
            self._closed = True
        problems: list[str] = []
        # Stop nodes on a healed network: what we test is partitions, not shutdown
        # while partitioned (stop_all reports a node that needed SIGKILL).
        if self.procs:
            try:
                self.heal()
            except NetnsError as exc:
                problems.append(str(exc))
        self.stop_all()
        if self._created_root_link:
            try:
                _run(["ip", "link", "del", self.controller_link])
            except NetnsError as exc:
                problems.append(str(exc))
        for name in reversed(self._created_ns):
            try:
                _run(["ip", "netns", "del", name])
            except NetnsError as exc:
                if (_NETNS_DIR / name).exists():
                    problems.append(str(exc))
        self._created_ns.clear()
        self._restore_signal_handlers()
        atexit.unregister(self.close)
        if self._own_base and not problems:
            shutil.rmtree(self.base, ignore_errors=True)
        if problems:
            print(f"NetnsCluster cleanup problems: {problems}", file=sys.stderr)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def interrupted(signum: int, frame: FrameType | None) -> None:
            del frame
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}: cleaning up")

        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                self._old_handlers[sig] = signal.signal(sig, interrupted)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()

    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._created_ns.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _create_network(self) -> None:
        self.octet = _pick_octet()
        prefix = f"{SUBNET}.{self.octet}"
        self.hosts = {node: f"{prefix}.{i + 1}" for i, node in enumerate(self.ids)}
        self.addresses = {node: f"{host}:{PORT}" for node, host in self.hosts.items()}
        self.controller_address = f"{prefix}.{CONTROLLER_HOST}"
        hub = self.hub
        self._add_ns(hub)
        _run(["ip", "-n", hub, "link", "add", "name", "br0", "type", "bridge"])
        _run(["ip", "-n", hub, "link", "set", "br0", "up"])
        for node, ns in self.namespaces.items():
            self._add_ns(ns)
            port = f"v{node}"
            _run(["ip", "-n", hub, "link", "add", "name", port, "type", "veth",
                  "peer", "name", "eth0", "netns", ns])  # fmt: skip
            _run(["ip", "-n", hub, "link", "set", port, "master", "br0"])
            _run(["ip", "-n", hub, "link", "set", port, "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.hosts[node]}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _run(["ip", "link", "add", "name", self.controller_link, "type", "veth",
              "peer", "name", "ctl", "netns", hub])  # fmt: skip
        self._created_root_link = True
        _run(["ip", "-n", hub, "link", "set", "ctl", "master", "br0"])
        _run(["ip", "-n", hub, "link", "set", "ctl", "up"])
        _run(["ip", "addr", "add", f"{self.controller_address}/24", "dev", self.controller_link])
        _run(["ip", "link", "set", self.controller_link, "up"])

    def start(self, node: str) -> None:
        peers = ",".join(f"{p}={a}" for p, a in self.addresses.items() if p != node)
        command = [
            "ip", "netns", "exec", self.namespaces[node],  # execs: the PID is the node's
            sys.executable, "-m", "replidb", "serve",
            "--node-id", node,
            "--data", str(self.base / node),
            "--listen", self.addresses[node],
            "--peers", peers,
            *self.extra,
        ]  # fmt: skip
        with (self.base / f"{node}.log").open("ab") as log_file:
            self.procs[node] = subprocess.Popen(
                _resolve(command), stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )

    def kill(self, node: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(node)
        if proc.poll() is None:
            proc.send_signal(sig)
        proc.wait(10)

    def stop_all(self, grace: float = 5.0) -> list[str]:
        """SIGTERM every node we started, SIGKILL those still running after ``grace``
        seconds; return (and log to stderr) the ids of the nodes that needed SIGKILL."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        forced = []
        for node, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                forced.append(node)
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        if forced:
            print(f"NetnsCluster: {forced} ignored SIGTERM for {grace}s", file=sys.stderr)
        return forced

    def alive(self, node: str) -> bool:
        proc = self.procs.get(node)
        return proc is not None and proc.poll() is None

    def log(self, node: str) -> str:
        path = self.base / f"{node}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self, lines: int = 40) -> str:
        """The last ``lines`` lines of every node's log, for failure messages."""
        parts = []
        for node in self.ids:
            tail = self.log(node).splitlines()[-lines:]
            parts.append(f"--- {node} ({self.hosts.get(node)}) ---\n" + "\n".join(tail))
        return "\n".join(parts)

    # ---- faults -------------------------------------------------------------------

    def iptables(self, node: str, *args: str) -> str:
        return _run(["ip", "netns", "exec", self.namespaces[node], "iptables", "-w", "5", *args])

    def partition(self, groups: Sequence[Iterable[str]]) -> None:
        """Cut node-to-node traffic between groups (nodes in no group form one more
        group). Both directions, in both namespaces: INPUT -s and OUTPUT -d DROP."""
        group_of: dict[str, int] = {}
        for number, group in enumerate(groups):
            for node in group:
                if node not in self.namespaces:
                    raise ValueError(f"no node {node!r} in this cluster")
                if node in group_of:
                    raise ValueError(f"{node} is in two groups")
                group_of[node] = number
        for node in self.ids:
            group_of.setdefault(node, len(groups))
        for node in self.ids:
            cut = [p for p in self.ids if group_of[p] != group_of[node]]
            if not cut:
                continue
            rules = ["*filter"]
            for peer in cut:
                rules.append(f"-A INPUT -s {self.hosts[peer]}/32 -j DROP")
                rules.append(f"-A OUTPUT -d {self.hosts[peer]}/32 -j DROP")
            rules.append("COMMIT")
            _run(
                ["ip", "netns", "exec", self.namespaces[node],
                 "iptables-restore", "-w", "5", "--noflush"],
                stdin="\n".join(rules) + "\n",
            )  # fmt: skip

    def isolate(self, node: str) -> None:
        """Cut ``node`` off from every other node (the controller still reaches it)."""
        self.partition([[node]])

    def heal(self) -> None:
        """Remove every rule (flush the filter table in every node namespace)."""
        for node in self.ids:
            self.iptables(node, "-F")

    def rules(self, node: str) -> str:
        return self.iptables(node, "-S")

    # ---- clients ------------------------------------------------------------------

    @property
    def connect(self) -> str:
        """A connect string for ``replidb.connect`` from the test process (root ns)."""
        return ",".join(self.addresses.values())

    def submit(self, node: str, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``fn`` in a fresh thread inside ``node``'s namespace."""
        return _in_thread(self.namespaces[node], fn)

    def run_in(self, node: str, fn: Callable[[], T], timeout: float = 15.0) -> T:
        return self.submit(node, fn).result(timeout)

    def status(self, node: str, timeout: float = 1.0) -> wire.NodeStatus | None:
        """The node's status, asked from inside its namespace; None if it does not answer."""
        address = self.addresses[node]
        try:
            return self.run_in(node, lambda: probe_status(address, timeout), timeout + 2)
        except (Error, concurrent.futures.TimeoutError):
            return None

    def execute(self, node: str, sql: str, *, write: bool, timeout: float = 5.0) -> list[list[Any]]:
        """One statement sent to exactly this node by a client in its namespace."""
        address = self.addresses[node]

        def call() -> list[list[Any]]:
            client = Client(address, timeout=timeout)
            try:
                return client.execute([wire.Statement(sql)], write=write)[0].rows
            finally:
                client.close()

        return self.run_in(node, call, timeout + 5)

    def query(self, node: str, sql: str, timeout: float = 5.0) -> list[list[Any]]:
        """A read served by exactly this node (no failover to others)."""
        return self.execute(node, sql, write=False, timeout=timeout)

    def write(self, node: str, sql: str, timeout: float = 5.0) -> list[list[Any]]:
        """A write sent to this node only (it forwards to its leader if it can)."""
        return self.execute(node, sql, write=True, timeout=timeout)

    def checksum(self, node: str, table: str, key: str = "id") -> str:
        rows = self.query(node, f"SELECT * FROM {table} ORDER BY {key}")
        return hashlib.sha256(repr(rows).encode()).hexdigest()

    # ---- waiting ------------------------------------------------------------------

    def statuses(self, nodes: Iterable[str] | None = None) -> dict[str, wire.NodeStatus | None]:
        """Everyone's status, asked in parallel (each from inside its namespace)."""
        chosen = list(self.ids if nodes is None else nodes)
        futures = {
            node: self.submit(node, functools.partial(probe_status, self.addresses[node], 1.0))
            for node in chosen
        }
        result: dict[str, wire.NodeStatus | None] = {}
        for node, future in futures.items():
            try:
                result[node] = future.result(3.0)
            except (Error, concurrent.futures.TimeoutError):
                result[node] = None
        return result

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Every node answers status requests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n in self.ids if n in self.procs and not self.alive(n)]
            if dead:
                raise NetnsError(f"{dead} exited during startup:\n{self.logs()}")
            if all(self.statuses().values()):
                return
            time.sleep(0.1)
        raise NetnsError(f"nodes not answering within {timeout}s:\n{self.logs()}")

    def wait_for_leader(
        self,
        nodes: Iterable[str] | None = None,
        timeout: float = 10.0,
        min_term: int = 0,
    ) -> wire.NodeStatus:
        """The status of the leader that all of ``nodes`` agree on (in ``min_term`` or
        later), with exactly one of them in the leader role."""
        chosen = list(self.ids if nodes is None else nodes)
        deadline = time.monotonic() + timeout
        seen: dict[str, wire.NodeStatus | None] = {}
        while time.monotonic() < deadline:
            seen = self.statuses(chosen)
            found = [s for s in seen.values() if s is not None]
            leaders = [s for s in found if s.role == "leader"]
            if (
                len(found) == len(chosen)
                and len(leaders) == 1
                and leaders[0].term >= min_term
                and all(s.leader == leaders[0].id and s.term == leaders[0].term for s in found)
            ):
                return leaders[0]
            time.sleep(0.05)
        raise AssertionError(f"no agreed leader among {chosen} within {timeout}s: {seen}")

    def wait_converged(self, table: str, key: str = "id", timeout: float = 15.0) -> str:
        """Wait until every node holds the same rows of ``table``; return the checksum."""
        deadline = time.monotonic() + timeout
        sums: dict[str, str | None] = {}
        while time.monotonic() < deadline:
            futures = {
                node: self.submit(node, functools.partial(self._local_checksum, node, table, key))
                for node in self.ids
            }
            for node, future in futures.items():
                try:
                    sums[node] = future.result(5.0)
                except (Error, concurrent.futures.TimeoutError):
                    sums[node] = None
            values = set(sums.values())
            if len(values) == 1 and None not in values:
                return next(iter(values))  # type: ignore[return-value]
            time.sleep(0.1)
        raise AssertionError(f"{table} did not converge within {timeout}s: {sums}")

    def _local_checksum(self, node: str, table: str, key: str) -> str:
        """(Runs inside the node's namespace already.)"""
        client = Client(self.addresses[node], timeout=2.0)
        try:
            rows = client.execute(
                [wire.Statement(f"SELECT * FROM {table} ORDER BY {key}")], write=False
            )[0].rows
        finally:
            client.close()
        return hashlib.sha256(repr(rows).encode()).hexdigest()
