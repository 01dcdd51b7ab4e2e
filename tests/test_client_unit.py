"""The client, DB-API driver and the sql/status commands against a fake node.

The fake node is a real TCP server on 127.0.0.1 (port 0) speaking the real framing and
wire messages, with a scripted behaviour; every request it receives is recorded.
"""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner

from replidb.cli.sql_cmd import sql as sql_command
from replidb.cli.status_cmd import cluster_status
from replidb.cli.status_cmd import status as status_command
from replidb.client import Client, connect, is_read_only
from replidb.errors import (
    ConstraintError,
    InterfaceError,
    OutcomeUnknown,
    SQLError,
    Unavailable,
)
from replidb.transport import wire
from replidb.transport.framing import frame

Behaviour = Callable[["FakeNode", wire.Message], wire.Message | None]


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        node: FakeNode = self.server.node  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        while True:
            header = _recv_exact(sock, 4)
            if header is None:
                return
            payload = _recv_exact(sock, struct.unpack(">I", header)[0])
            if payload is None:
                return
            message = wire.decode(payload)
            with node.lock:
                node.requests.append(message)
            reply = node.behaviour(node, message)
            if reply is None:  # scripted failure: drop the connection without a reply
                sock.close()
                return
            sock.sendall(frame(reply))
            if node.close_after_reply:  # a node that drops idle connections
                sock.close()
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


def answer(node: FakeNode, message: wire.Message) -> wire.Message:
    """A healthy node: SELECTs return rows, anything else affects one row."""
    if isinstance(message, wire.StatusRequest):
        return wire.StatusReply(id=message.id, status=node.status)
    assert isinstance(message, wire.Execute)
    results = []
    for st in message.statements:
        if st.sql.lstrip().upper().startswith("SELECT"):
            results.append(wire.StatementResult(["a", "b"], [[1, "x"], [2, None], [3, b"\x01"]]))
        else:
            node.rowid += 1
            results.append(wire.StatementResult([], [], rowcount=1, lastrowid=node.rowid))
    return wire.ExecuteReply(id=message.id, results=results, node=node.status.id)


def error(kind: str, text: str, leader: str | None = None) -> Behaviour:
    def behave(node: FakeNode, message: wire.Message) -> wire.Message:
        assert isinstance(message, wire.Execute)
        return wire.ExecuteReply(id=message.id, error_kind=kind, error=text, leader_address=leader)

    return behave


def writes(behaviour: Behaviour) -> Behaviour:
    """Apply ``behaviour`` to write requests only; answer reads and status normally."""

    def behave(node: FakeNode, message: wire.Message) -> wire.Message | None:
        if isinstance(message, wire.Execute) and message.seq > 0:
            return behaviour(node, message)
        return answer(node, message)

    return behave


class FakeNode:
    def __init__(self, behaviour: Behaviour = answer, node_id: str = "n1") -> None:
        self.behaviour = behaviour
        self.lock = threading.Lock()
        self.requests: list[wire.Message] = []
        self.rowid = 0
        self.close_after_reply = False
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.node = self  # type: ignore[attr-defined]
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self.status = wire.NodeStatus(
            id=node_id,
            address=self.address,
            role="leader",
            term=1,
            leader=node_id,
            leader_address=self.address,
            last_index=0,
            commit_index=0,
            applied_index=0,
            peers={},
        )
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def executes(self) -> list[wire.Execute]:
        with self.lock:
            return [m for m in self.requests if isinstance(m, wire.Execute)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeNode]]:
    nodes: list[FakeNode] = []

    def make(behaviour: Behaviour = answer, node_id: str = "n1") -> FakeNode:
        nodes.append(FakeNode(behaviour, node_id))
        return nodes[-1]

    yield make
    for node in nodes:
        node.close()


def dead_address() -> str:
    """An address nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


# --- classification ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "read"),
    [
        ("SELECT 1", True),
        ("  -- note\n /* c */ select * from t", True),
        ("VALUES (1)", True),
        ("EXPLAIN QUERY PLAN SELECT 1", True),
        ("PRAGMA table_info(t)", True),
        ("PRAGMA journal_mode = wal", False),
        ("WITH x AS (SELECT 1) SELECT * FROM x", True),
        ("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x", False),
        ("SELECT 'INSERT; DELETE'", True),
        ("INSERT INTO t VALUES (1)", False),
        ("SELECT 1; DELETE FROM t", False),
        ("CREATE TABLE t (x)", False),
    ],
)
def test_classification(sql: str, read: bool) -> None:
    assert is_read_only(sql) is read


# --- transactions ----------------------------------------------------------------------


def test_writes_are_buffered_and_committed_as_one_request(fake: Callable[..., FakeNode]) -> None:
    node = fake()
    conn = connect(node.address)
    cur = conn.cursor()
    cur.execute("INSERT INTO t VALUES (?)", (1,))
    other = conn.cursor()
    other.executemany("INSERT INTO t VALUES (?)", [(2,), (3,)])
    assert node.executes == []  # no result was looked at: nothing left the client
    conn.commit()
    [request] = node.executes
    assert [s.sql for s in request.statements] == ["INSERT INTO t VALUES (?)"] * 3
    assert [s.params for s in request.statements] == [[1], [2], [3]]
    assert request.client_id and request.seq == 1 and not request.dry_run
    assert (cur.rowcount, cur.lastrowid) == (1, 1)
    assert (other.rowcount, other.lastrowid) == (2, 3)  # executemany: summed rowcount
    cur.execute("DELETE FROM t")
    conn.commit()
    assert node.executes[1].seq == 2 and node.executes[1].client_id == request.client_id
    conn.close()


def test_rollback_sends_nothing(fake: Callable[..., FakeNode]) -> None:
    node = fake()
    conn = connect(node.address)
    cur = conn.cursor()
    cur.execute("INSERT INTO t VALUES (1)")
    conn.rollback()
    conn.commit()
    with conn:
        conn.execute("INSERT INTO t VALUES (2)")
        conn.execute("ROLLBACK")
    with pytest.raises(RuntimeError), conn:
        conn.execute("INSERT INTO t VALUES (3)")
        raise RuntimeError("abandon")
    assert node.executes == []
    assert cur.rowcount == -1
    conn.close()


def test_read_with_pending_writes_is_a_dry_run(fake: Callable[..., FakeNode]) -> None:
    node = fake()
    conn = connect(node.address)
    cur = conn.cursor()
    cur.execute("SELECT a, b FROM t")  # nothing pending: a plain read
    cur.execute("INSERT INTO t VALUES (1)")
    cur.execute("SELECT a, b FROM t WHERE a = ?", [1])
    plain, dry = node.executes
    assert not plain.dry_run and plain.seq == 0 and len(plain.statements) == 1
    assert dry.dry_run and dry.seq == 0
    assert [s.sql for s in dry.statements] == [
        "INSERT INTO t VALUES (1)",
        "SELECT a, b FROM t WHERE a = ?",
    ]
    assert cur.description is not None and [d[0] for d in cur.description] == ["a", "b"]
    assert all(len(d) == 7 for d in cur.description)
    assert cur.fetchone() == (1, "x")
    assert cur.fetchmany(5) == [(2, None), (3, b"\x01")]
    assert cur.fetchall() == []
    conn.commit()  # the insert is still pending: now it goes, as a real write
    assert node.executes[-1].seq == 1 and not node.executes[-1].dry_run
    assert [r for r in conn.execute("SELECT a, b FROM t")] == [(1, "x"), (2, None), (3, b"\x01")]
    conn.close()


def test_autocommit_and_explicit_transactions(fake: Callable[..., FakeNode]) -> None:
    node = fake()
    conn = connect([node.address], autocommit=True)
    cur = conn.execute("INSERT INTO t VALUES (1)")
    assert (cur.rowcount, cur.lastrowid) == (1, 1) and node.executes[-1].seq == 1
    conn.executemany("INSERT INTO t VALUES (?)", [(2,), (3,)])
    assert len(node.executes[-1].statements) == 2 and node.executes[-1].seq == 2
    cur = conn.cursor()
    cur.execute("BEGIN")
    cur.execute("INSERT INTO t VALUES (4)")
    cur.execute("INSERT INTO t VALUES (5)")
    assert len(node.executes) == 2  # held by the transaction
    cur.execute("COMMIT;")
    assert len(node.executes[-1].statements) == 2 and node.executes[-1].seq == 3
    assert node.executes[-1].expect == ""  # no result was seen: nothing to validate
    assert cur.lastrowid == 5
    conn.close()
    with pytest.raises(InterfaceError):
        conn.cursor()


def test_bad_parameter_is_a_programming_error(fake: Callable[..., FakeNode]) -> None:
    node = fake()
    conn = connect(node.address)
    with pytest.raises(SQLError, match="not supported"):
        conn.execute("INSERT INTO t VALUES (?)", (object(),))
    with pytest.raises(SQLError, match="64 bits"):
        conn.execute("INSERT INTO t VALUES (?)", (2**70,))
    assert node.executes == []
    conn.close()


# --- retries and failures ----------------------------------------------------------------


def test_not_leader_is_followed_with_the_same_client_id_and_seq(
    fake: Callable[..., FakeNode],
) -> None:
    leader = fake(node_id="n2")
    follower = fake(writes(error("not_leader", "not the leader", leader.address)))
    conn = connect(f"{follower.address},{leader.address}")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    [refused] = follower.executes
    [accepted] = leader.executes
    assert (
        (refused.client_id, refused.seq)
        == (accepted.client_id, accepted.seq)
        == (
            conn.client.client_id,
            1,
        )
    )
    conn.execute("INSERT INTO t VALUES (2)")
    conn.commit()  # the learnt leader is tried first now
    assert len(follower.executes) == 1 and leader.executes[-1].seq == 2
    conn.execute("SELECT a FROM t")  # reads stay on the node we connected to
    assert follower.executes[-1].statements[0].sql == "SELECT a FROM t"
    conn.close()


def test_unavailable_is_retried_with_the_same_seq(fake: Callable[..., FakeNode]) -> None:
    def flaky(node: FakeNode, message: wire.Message) -> wire.Message | None:
        if len(node.executes) <= 2:
            return error("unavailable", "no leader yet")(node, message)
        return answer(node, message)

    node = fake(flaky)
    conn = connect(node.address)
    cur = conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    assert cur.rowcount == 1
    attempts = node.executes
    assert len(attempts) == 3
    assert {(m.client_id, m.seq) for m in attempts} == {(conn.client.client_id, 1)}
    assert len({m.id for m in attempts}) == 3
    conn.close()


def test_write_without_reply_until_deadline_is_outcome_unknown(
    fake: Callable[..., FakeNode],
) -> None:
    node = fake(writes(lambda node, message: None))  # accept, then hang up
    conn = connect(node.address, timeout=0.6)
    conn.execute("INSERT INTO t VALUES (1)")
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        conn.commit()
    assert time.monotonic() - started < 3
    assert len(node.executes) >= 2  # it did retry...
    assert {(m.client_id, m.seq) for m in node.executes} == {(conn.client.client_id, 1)}
    conn.execute("SELECT 1")  # ...and the connection is still usable
    conn.close()


def test_silent_node_times_out_write_unknown_read_unavailable(
    fake: Callable[..., FakeNode],
) -> None:
    never = threading.Event()

    def hang(node: FakeNode, message: wire.Message) -> wire.Message | None:
        never.wait(5)
        return None

    node = fake(hang)
    client = Client(node.address, timeout=0.3)
    with pytest.raises(Unavailable):
        client.execute([wire.Statement("SELECT 1")], write=False)
    with pytest.raises(OutcomeUnknown):
        client.execute([wire.Statement("INSERT INTO t VALUES (1)")], write=True)
    never.set()
    client.close()


def test_a_hung_node_is_abandoned_after_the_attempt_timeout(
    fake: Callable[..., FakeNode],
) -> None:
    """A stopped process keeps its connections open: do not wait out the whole budget."""
    never = threading.Event()

    def hang(node: FakeNode, message: wire.Message) -> wire.Message | None:
        never.wait(5)
        return None

    hung, healthy = fake(hang), fake()
    client = Client([hung.address, healthy.address], timeout=10.0, attempt_timeout=0.3)
    started = time.monotonic()
    client.execute([wire.Statement("INSERT INTO t VALUES (1)")], write=True)
    assert time.monotonic() - started < 2.0
    # The retry on the healthy node kept the write's identity: exactly-once.
    assert hung.executes[0].seq == healthy.executes[0].seq
    assert hung.executes[0].client_id == healthy.executes[0].client_id
    never.set()
    client.close()


def test_unreachable_cluster_is_unavailable_not_unknown(fake: Callable[..., FakeNode]) -> None:
    conn = connect([dead_address(), dead_address()], timeout=0.3)
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(Unavailable, match="cannot connect"):
        conn.commit()


def test_failover_to_the_next_reachable_address(fake: Callable[..., FakeNode]) -> None:
    node = fake()
    conn = connect(f"{dead_address()}, {node.address}")
    assert conn.execute("SELECT a FROM t").fetchone() == (1, "x")
    conn.close()


def test_a_dropped_idle_connection_is_reopened_to_the_same_node(
    fake: Callable[..., FakeNode],
) -> None:
    first, second = fake(), fake()
    first.close_after_reply = True
    conn = connect([first.address, second.address])
    for _ in range(3):
        conn.execute("SELECT a FROM t")
    assert (len(first.executes), len(second.executes)) == (3, 0)
    conn.close()


def test_switching_autocommit_on_commits_the_pending_writes(
    fake: Callable[..., FakeNode],
) -> None:
    node = fake()
    conn = connect(node.address)
    conn.execute("INSERT INTO t VALUES (1)")
    conn.autocommit = True
    assert len(node.executes) == 1 and node.executes[0].seq == 1
    conn.close()


def test_constraint_error_is_raised_at_once(fake: Callable[..., FakeNode]) -> None:
    node = fake(writes(error("constraint", "UNIQUE constraint failed: t.x")))
    conn = connect(node.address)
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ConstraintError, match="UNIQUE"):
        conn.commit()
    assert len(node.executes) == 1
    conn.close()


@pytest.mark.parametrize("bad", ["nohost", "h:abc", "h:99999", ":7101", "127.0.0.1:7101,oops"])
def test_bad_address_is_an_interface_error(bad: str) -> None:
    with pytest.raises(InterfaceError, match=bad.split(",")[-1]):
        connect(bad)


def test_bad_consistency_is_an_interface_error() -> None:
    with pytest.raises(InterfaceError, match="consistency"):
        connect("127.0.0.1:1", consistency="strongest")
    connect("127.0.0.1:1", consistency="bounded:2.5").close()


# --- replidb sql -------------------------------------------------------------------------


def test_sql_c_prints_a_table_and_sends_one_request(fake: Callable[..., FakeNode]) -> None:
    node = fake()
    result = CliRunner().invoke(
        sql_command, ["--connect", node.address, "-c", "SELECT a, b FROM t"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["a", "b"] and set(lines[1]) <= {"-", " "}
    assert lines[2:] == ["1  x", "2  NULL", "3  X'01'"]
    [request] = node.executes
    assert request.seq == 0 and [s.sql for s in request.statements] == ["SELECT a, b FROM t"]


def test_sql_c_runs_the_whole_text_as_one_write(fake: Callable[..., FakeNode]) -> None:
    node = fake()
    text = "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)"
    result = CliRunner().invoke(sql_command, ["--connect", node.address, "-c", text, "--json"])
    assert result.exit_code == 0, result.output
    [request] = node.executes
    assert request.seq == 1 and [s.sql for s in request.statements] == [text]
    assert json.loads(result.stdout) == {"columns": [], "rows": [], "rowcount": 1}


def test_sql_json_is_one_object_per_line(fake: Callable[..., FakeNode]) -> None:
    node = fake()
    result = CliRunner().invoke(
        sql_command, ["--connect", node.address, "--json", "-c", "SELECT 1"]
    )
    assert result.exit_code == 0
    [line] = result.stdout.splitlines()
    assert json.loads(line) == {
        "columns": ["a", "b"],
        "rows": [[1, "x"], [2, None], [3, {"base64": "AQ=="}]],
        "rowcount": -1,
    }


def test_sql_c_failure_is_one_line_and_exit_1(fake: Callable[..., FakeNode]) -> None:
    node = fake(error("sql", "no such table: t\n(while preparing)"))
    result = CliRunner().invoke(sql_command, ["--connect", node.address, "-c", "SELECT * FROM t"])
    assert result.exit_code == 1
    assert result.stderr == "error: no such table: t (while preparing)\n"
    assert result.stdout == ""
    result = CliRunner().invoke(sql_command, ["--connect", "nowhere", "-c", "SELECT 1"])
    assert result.exit_code == 1 and result.stderr.startswith("error: bad address 'nowhere'")
    assert result.stderr.count("\n") == 1


def test_sql_shell_runs_complete_statements_and_survives_errors(
    fake: Callable[..., FakeNode],
) -> None:
    def behave(node: FakeNode, message: wire.Message) -> wire.Message | None:
        if isinstance(message, wire.Execute) and "missing" in message.statements[0].sql:
            return error("sql", "no such table: missing")(node, message)
        return answer(node, message)

    node = fake(behave)
    typed = (
        "SELECT a,\n b FROM t;\nSELECT * FROM missing;\nINSERT INTO t VALUES (1);\n"
        ".quit\nSELECT 9;\n"
    )
    result = CliRunner().invoke(sql_command, ["--connect", node.address], input=typed)
    assert result.exit_code == 0, result.output
    assert "replidb> " in result.stdout and "   ...> " in result.stdout
    assert "3  X'01'" in result.stdout
    assert result.stderr == "error: no such table: missing\n"
    sent = [m.statements[0].sql.strip() for m in node.executes]
    assert sent == ["SELECT a,\n b FROM t;", "SELECT * FROM missing;", "INSERT INTO t VALUES (1);"]
    assert node.executes[-1].seq == 1  # the shell autocommits each write


# --- replidb status ----------------------------------------------------------------------


def test_status_json_with_one_unreachable_node(fake: Callable[..., FakeNode]) -> None:
    import msgspec

    leader = fake(node_id="n1")
    follower = fake(node_id="n2")
    gone = dead_address()
    leader.status = msgspec.structs.replace(
        leader.status,
        term=3,
        last_index=10,
        commit_index=10,
        applied_index=10,
        peers={"n2": follower.address, "n3": gone},
        durability="durable enough",
        discarded=2,
    )
    follower.status = msgspec.structs.replace(
        follower.status,
        role="follower",
        term=3,
        leader="n1",
        leader_address=leader.address,
        last_index=9,
        commit_index=8,
        applied_index=7,
        peers={"n1": leader.address, "n3": gone},
    )
    result = CliRunner().invoke(status_command, ["--connect", follower.address, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["leader"] == "n1"
    n1, n2, n3 = report["nodes"]
    assert [n["id"] for n in report["nodes"]] == ["n1", "n2", "n3"]
    assert n1 == {
        "id": "n1",
        "address": leader.address,
        "role": "leader",
        "term": 3,
        "last_index": 10,
        "commit_index": 10,
        "applied_index": 10,
        "lag": 0,
        "healthy": True,
        "leader": "n1",
        "discarded": 2,
        "subscription": "",
        "first_index": 1,
        "snapshot": "",
    }
    assert (n2["role"], n2["lag"], n2["healthy"], n2["address"]) == (
        "follower",
        3,
        True,
        follower.address,
    )
    assert n3 == {
        "id": "n3",
        "address": gone,
        "role": "unreachable",
        "term": None,
        "last_index": None,
        "commit_index": None,
        "applied_index": None,
        "lag": None,
        "healthy": False,
        "leader": None,
        "discarded": None,
    }
    assert (report["policy"], report["durability"]) == ("async", "durable enough")
    assert report["stream"] == "logical"
    text = CliRunner().invoke(status_command, ["--connect", leader.address])
    assert text.exit_code == 0 and "leader: n1" in text.stdout and "unreachable" in text.stdout
    assert "commit policy: async — durable enough" in text.stdout
    assert "stream format: logical" in text.stdout


def test_status_with_nothing_reachable_fails_in_one_line() -> None:
    result = CliRunner().invoke(status_command, ["--connect", dead_address(), "--timeout", "0.3"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    with pytest.raises(Unavailable):
        cluster_status([dead_address()], timeout=0.2)


def test_status_request_via_client(fake: Callable[..., FakeNode]) -> None:
    node = fake(node_id="solo")
    client = Client([node.address])
    assert client.status().id == "solo" and client.status(node.address).role == "leader"
    client.close()
