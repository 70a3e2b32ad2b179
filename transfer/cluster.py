"""Training across machines: TF_CONFIG, one MultiWorkerMirroredStrategy, a few collectives.

``transfer train --distribute multi-worker`` runs the same command on every worker. Each reads
``TF_CONFIG`` (the variable Vertex AI, Kubeflow's TFJob and SageMaker set for each worker)::

    {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
     "task": {"type": "worker", "index": 0}}

Worker 0 is the chief (or the "chief" task when the cluster names one; its rank is 0 and the
workers follow). TensorFlow's ``MultiWorkerMirroredStrategy`` is the engine: its collectives
(all-gather, all-reduce over gRPC) carry the features and gradients between workers, and its
coordination service notices a worker that dies (missing heartbeats). This module sets it up
with two bounds of our own, so that nothing waits forever:

* ``startup`` seconds for every worker to join (TensorFlow's default is to wait forever);
* ``timeout`` seconds for any collective and for the heartbeats: a worker that hangs or dies
  makes the others stop with ``WorkerLost`` (one line) instead of hanging.

``Cluster.gather`` / ``broadcast`` / ``total`` are what the frozen route needs: the feature
pass is sharded by file, and the shards are gathered on every worker in rounds (memory stays
bounded by one round). The fine-tune route trains under ``Cluster.strategy`` with a custom loop
(``transfer.phases.fit_distributed``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

from transfer.errors import TransferError, env_number, without_op_name

JOINED: list = []  # the Cluster this process joined (the CLI then ends with os._exit)
STARTUP_SECONDS = 300.0  # every worker must have joined within this (pods start at different times)


def startup_seconds() -> float:
    """How long a worker waits for the others to join: TRANSFER_STARTUP_SECONDS, default
    STARTUP_SECONDS."""
    return float(env_number("TRANSFER_STARTUP_SECONDS", STARTUP_SECONDS))
TIMEOUT_SECONDS = 60.0  # default --worker-timeout: a collective or a heartbeat waits this long
LINGER_SECONDS = 3.0  # a cluster process waits this long before it ends (cli._leave_cluster)


_WATCHDOG = """
import os, select, signal, sys
pid, limit, line = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], limit)
if not ready:
    sys.stderr.write(line + chr(10))
    sys.stderr.flush()
    # the worker ends itself (exit code 1) a moment later (faulthandler's native timer, which
    # needs no interpreter); SIGKILL only if it is still there
    ready, _, _ = select.select([sys.stdin], [], [], 10)
    if not ready:
        os.kill(pid, signal.SIGKILL)
"""
HELLO = "transfer-worker"  # the first word of a worker's line in the rendezvous (rendezvous)


class WorkerLost(TransferError):
    """Another worker died, hung or never came: this worker stops, writing no bundle."""


@dataclass(frozen=True)
class Topology:
    """What TF_CONFIG says: every worker's address, in rank order, and which one this is."""

    addresses: tuple  # "host:port" of every worker, rank order (a "chief" task first)
    rank: int  # this worker's place in ``addresses``
    task_type: str  # "worker" or "chief", as TF_CONFIG names it
    task_index: int

    @property
    def workers(self) -> int:
        return len(self.addresses)

    @property
    def chief(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        role = "chief" if self.chief else "worker"
        return (f"{role} {self.rank} of {self.workers} ({self.task_type} {self.task_index} at "
                f"{self.addresses[self.rank]})")


def read_tf_config(environ=None) -> Topology:
    """The topology in ``TF_CONFIG``; TransferError (one line) when it is missing or malformed."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "")
    hint = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": '
            '{"type": "worker", "index": 0}}\' (scripts/multiworker_local.sh sets it for local '
            "workers)")
    if not raw.strip():
        raise TransferError(f"--distribute multi-worker needs TF_CONFIG in the environment, {hint}")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TransferError(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos}); "
                            f"{hint}") from None
    if not isinstance(config, dict):
        raise TransferError(f"TF_CONFIG must be a JSON object with cluster and task; {hint}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise TransferError(f"TF_CONFIG needs both \"cluster\" and \"task\"; {hint}")
    unknown = sorted(set(cluster) - {"chief", "worker", "evaluator", "ps"})
    if unknown or "ps" in cluster:
        what = unknown or ["ps"]
        kinds = "parameter servers" if what == ["ps"] else "other kinds of task"
        raise TransferError(f"TF_CONFIG cluster has {', '.join(what)}: multi-worker training "
                            f"uses only chief and worker tasks (no {kinds})")
    addresses = []
    for job in ("chief", "worker"):
        hosts = cluster.get(job, [])
        if not isinstance(hosts, list) or not all(isinstance(h, str) and ":" in h
                                                  for h in hosts):
            raise TransferError(f"TF_CONFIG cluster.{job} must be a list of \"host:port\" "
                                f"strings, not {json.dumps(hosts)}")
        for host in hosts:
            name, _, port = host.rpartition(":")
            if not name:
                raise TransferError(f"TF_CONFIG cluster.{job} address {host!r}: no host before "
                                    "the port (\"host:port\")")
            if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
                raise TransferError(f"TF_CONFIG cluster.{job} address {host!r}: the port must "
                                    "be a number from 1 to 65535 (\"host:port\")")
        addresses.extend(hosts)
    if len(cluster.get("chief", [])) > 1:
        raise TransferError("TF_CONFIG names more than one chief")
    if not addresses:
        raise TransferError(f"TF_CONFIG cluster lists no workers; {hint}")
    if len(set(addresses)) != len(addresses):
        raise TransferError(f"TF_CONFIG lists an address twice: {addresses}")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in ("chief", "worker"):
        raise TransferError(f"TF_CONFIG task.type must be \"worker\" or \"chief\", not "
                            f"{json.dumps(task_type)}")
    hosts = cluster.get(task_type, [])
    if not hosts:  # "index must be 0..-1 for the 0 chief task(s)"
        raise TransferError(f"TF_CONFIG task.type is {task_type!r}, but its cluster lists no "
                            f"{task_type}: add its address to cluster.{task_type}")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(hosts):
        raise TransferError(f"TF_CONFIG task.index must be 0..{len(hosts) - 1} for the "
                            f"{len(hosts)} {task_type} task(s), not {json.dumps(index)}")
    rank = index + (len(cluster.get("chief", [])) if task_type == "worker" else 0)
    return Topology(tuple(addresses), rank, task_type, index)


def reason(text: str) -> str:
    """The line of a TensorFlow error that says what happened: not its "Graph execution
    error:" heading, the "Detected at node" trace under it, nor the indented node list."""
    text = without_op_name(text)
    lines = [line for line in text.splitlines() if line.strip()]
    said = [line.strip() for line in lines if not line.startswith((" ", "\t"))
            and not line.startswith(("Graph execution error", "Detected at node"))]
    line = said[0] if said else lines[0].strip() if lines else "no message"
    if line.endswith(":") and len(said) > 1:  # "... are unhealthy (stopped sending
        line = f"{line} {said[1]}"  # heartbeats):" and, on the next line, which
    return line if len(line) <= 240 else line[:240].rsplit(" ", 1)[0] + " ..."


def lost(exc: BaseException, timeout: float, during: str,
         worker_timeout: float | None = None, kept: str | None = None) -> WorkerLost:
    """The one line for a collective that failed: which kind of failure, what was going on.
    ``timeout``: the wait of this collective; ``worker_timeout``: --worker-timeout, the bound
    of the heartbeats too, when this wait was a longer one (a worker paused for 20 s was said
    not to answer "within 1800 s (--worker-timeout)"); ``kept``: what a rerun resumes from
    (``Cluster.kept``, set by the run), or "" for nothing."""
    from transfer.tf import tf

    said = str(getattr(exc, "message", exc))
    sizes = re.search(r"joining a group with size\s*(\d+), but that group has size\s*(\d+)", said)
    if sizes:  # not a worker down: TF_CONFIG's lists differ, and would again on a rerun
        return WorkerLost(f"multi-worker training stopped during {during}: the workers' "
                          f"TF_CONFIG name different clusters (one lists {sizes[1]} workers, "
                          f"another {sizes[2]}); give every worker the same cluster list, the "
                          "same addresses in the same order")
    if isinstance(exc, tf.errors.DeadlineExceededError):
        if worker_timeout is None or timeout == worker_timeout:
            why = f"a worker did not answer within {timeout:g} s (--worker-timeout)"
        else:
            why = (f"a worker stopped answering: no heartbeat for --worker-timeout "
                   f"{worker_timeout:g} s, or no result within {timeout:g} s")
    else:
        why = f"a worker is down or unreachable ({reason(said)})"
    if during in (WRITING, HEAD_THEN_WRITING):  # it waited for the chief's bundle: it
        # cannot tell whether the chief wrote it
        return WorkerLost(f"multi-worker training stopped during {during}: {why}; the chief "
                          "may have written the bundle (look at its --output) before it "
                          "stopped answering; if not, start the same command again on every "
                          "worker")
    if kept is None:
        kept = "the cached features and the epoch checkpoints"
    again = (f"to resume ({kept} are kept)" if kept
             else "(it starts over: nothing of this run is kept)")
    return WorkerLost(f"multi-worker training stopped during {during}: {why}; no bundle "
                      f"written. Start the same command again on every worker {again}")


WRITING = "the chief's writing of the bundle"  # what the other workers wait for at the end
# ... on the frozen route without fine-tuning, where the chief trains the head meanwhile too (a
# chief hung while it trained the head was said to have stopped while writing the bundle)
HEAD_THEN_WRITING = "the chief's training of the head, or its writing of the bundle"


def rendezvous(topology: Topology, seconds: float, not_joined: str, taken: str) -> None:
    """Wait, in Python, until every worker has started: the chief listens on its own port of
    TF_CONFIG and answers "go" once every other worker has said its rank there; then it closes
    the port for TensorFlow's server. A signal is handled meanwhile (Ctrl-C, SIGTERM: the
    CLI's handlers raise), which TensorFlow's own wait does not allow. WorkerLost
    (``not_joined``) when ``seconds`` pass first; (``taken``) when the chief's port is taken."""
    if topology.workers == 1:
        return
    deadline = time.monotonic() + seconds
    host, _, port = topology.addresses[0].rpartition(":")
    if topology.chief:
        _hear_the_workers(topology, int(port), deadline, not_joined, taken)
    else:
        _tell_the_chief(topology, host.strip("[]"), int(port), deadline, not_joined)


def _hear_the_workers(topology: Topology, port: int, deadline: float, not_joined: str,
                      taken: str) -> None:
    """The chief's side of ``rendezvous``: every other rank heard, then "go" to each."""
    import socket

    dual = socket.has_dualstack_ipv6()
    try:
        listener = socket.create_server(("", port), family=socket.AF_INET6 if dual
                                        else socket.AF_INET, dualstack_ipv6=dual)
    except OSError:
        raise WorkerLost(taken) from None
    heard: dict = {}  # rank -> connection
    try:
        listener.settimeout(0.2)
        while len(heard) < topology.workers - 1:
            if time.monotonic() > deadline:
                raise WorkerLost(not_joined)
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            words = _line_of(conn, 5.0).split()
            if len(words) != 3 or words[0] != HELLO or not all(w.isdigit() for w in words[1:]):
                conn.close()  # not a worker of ours (a port scanner): not counted
                continue
            rank, workers = int(words[1]), int(words[2])
            if rank in heard:  # a worker started again: its new connection counts
                heard.pop(rank).close()
            heard[rank] = conn
            if workers != topology.workers:  # TensorFlow's join says the clusters differ
                break
        for conn in heard.values():
            with contextlib.suppress(OSError):
                conn.sendall(b"go\n")
        for conn in heard.values():  # each closes first: the port is left free for TensorFlow
            _line_of(conn, 5.0)
    finally:
        for conn in heard.values():
            conn.close()
        listener.close()


def _tell_the_chief(topology: Topology, host: str, port: int, deadline: float,
                    not_joined: str) -> None:
    """A worker's side of ``rendezvous``: say its rank to the chief until it says "go" (or
    until TensorFlow's server answers there: the chief is in TensorFlow's join already)."""
    import socket

    hello = f"{HELLO} {topology.rank} {topology.workers}\n".encode()
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=2.0) as conn:
                conn.sendall(hello)
                while time.monotonic() < deadline:
                    try:
                        conn.recv(64)
                    except TimeoutError:
                        continue
                    # "go"; or else TensorFlow's server, which answers our line otherwise
                    # or closes: the chief is in TensorFlow's join already (this worker was
                    # started again), which is where this one goes too
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise WorkerLost(not_joined)


def _line_of(conn, seconds: float) -> str:
    """The first line a connection sends within ``seconds`` ("" when none)."""
    conn.settimeout(seconds)
    data = b""
    with contextlib.suppress(OSError):
        while b"\n" not in data and len(data) < 256:
            part = conn.recv(256)
            if not part:
                break
            data += part
    return data.split(b"\n")[0].decode("ascii", "replace")


class Cluster:
    """This worker's place in the cluster and the strategy that joins it to the others.

    Create it before anything else touches TensorFlow's runtime (the strategy configures the
    eager context): ``transfer.phases.build_model`` does so first.
    """

    def __init__(self, topology: Topology, timeout: float = TIMEOUT_SECONDS,
                 startup: float | None = None):
        from transfer.tf import tf  # first: TensorFlow imported quietly

        from tensorflow.python.eager import context  # isort: skip

        self.topology, self.timeout = topology, float(timeout)
        # what a rerun resumes from, asked when a worker is lost (training sets it; see lost)
        self.keeps = None  # a function of this cluster: "" for nothing
        self.features_kept = False  # a shard of this run's features is in the cache (phases)
        self.checkpoints_kept = False  # the chief has saved an epoch checkpoint (phases)
        self.startup = startup_seconds() if startup is None else float(startup)
        self.promised = self.startup  # the wait the lines name
        # every worker waits for the others in Python first, where Ctrl-C and SIGTERM work
        # (TensorFlow's own wait holds the interpreter and installs its SIGTERM handler,
        # under which a waiting worker could only be killed); TensorFlow's join then finds
        # the others there, and gets what is left of the start-up wait (at least 10 s)
        waited = time.perf_counter()
        rendezvous(topology, self.startup, self._not_joined(), self._port_taken())
        self.startup = max(self.startup - (time.perf_counter() - waited), 10.0)
        quiet_native_logs()
        self.during = "start-up"
        # one job in rank order (a "chief" task becomes worker 0), given to the strategy as a
        # resolver so that TF_CONFIG itself is left as it was
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": list(topology.addresses)}), task_type="worker",
            task_id=topology.rank, rpc_layer="grpc")
        # the coordination service (heartbeats between workers) set up first with our bounds;
        # the strategy keeps a service that is already configured
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2

        context.context().configure_coordination_service(
            service_type="standalone", service_leader="/job:worker/replica:0/task:0",
            cluster_register_timeout_in_ms=int(self.startup * 1000),
            heartbeat_timeout_in_ms=int(max(self.timeout, 10) * 1000),
            shutdown_barrier_timeout_in_ms=int(self.timeout * 1000),
            coordinated_jobs=[coordination_config_pb2.CoordinatedJob(
                name="worker", num_tasks=topology.workers)])
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=self.timeout)
        started = time.perf_counter()
        watchdog = self._start_watchdog()
        import faulthandler

        # past the watchdog's line, the worker ends itself with exit code 1 (the watchdog's
        # SIGKILL made it 137, "Killed"); faulthandler's timer is native, it runs while
        # TensorFlow holds the interpreter
        devnull = open(os.devnull, "w")  # noqa: SIM115 (closed below)
        faulthandler.dump_traceback_later(self.startup + 1, exit=True, file=devnull)
        try:
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy(
                cluster_resolver=resolver, communication_options=options)
        except (tf.errors.OpError, RuntimeError) as exc:
            detail = str(exc).strip().splitlines()[0][:160]
            if "Could not start gRPC server" in str(exc):  # its own address is taken
                raise WorkerLost(self._port_taken()) from None
            raise WorkerLost(self._not_joined(detail)) from None
        finally:
            faulthandler.cancel_dump_traceback_later()
            devnull.close()
            watchdog.stdin.close()  # joined (or failed by itself): the watchdog leaves quietly
        self.joined_seconds = time.perf_counter() - started
        JOINED.append(self)
        self._gathers: dict = {}

    @property
    def kept(self) -> str | None:
        """What is on this worker's disk for a rerun to resume from, in words, now (the line
        named the cached features and the checkpoints before either was written)."""
        return None if self.keeps is None else self.keeps(self)

    def _port_taken(self) -> str:
        mine = self.topology.addresses[self.topology.rank]
        return (f"cannot listen on {mine}, this worker's address in TF_CONFIG (another program "
                "uses that port, or another worker has this task index: "
                f"{self.topology.describe()})")

    def _not_joined(self, detail: str = "") -> str:
        t = self.topology
        return (f"the {t.workers} workers of TF_CONFIG did not all join within {self.promised:g} s "
                f"(this is {t.describe()}{'; ' + detail if detail else ''}); start the same "
                "command on every worker, each with the same cluster list in TF_CONFIG (the "
                "same addresses in the same order) and its own task index")

    def check_same_cluster(self) -> None:
        """Every worker's TF_CONFIG lists as many workers, checked before the join is said (a
        worker listing 3 addresses where 2 run said "3 workers joined"): a first collective,
        which fails for a group of another size (``lost`` says so). The addresses themselves
        may be spelt otherwise from machine to machine (a host's name, its IP address)."""
        seen = self.gather([np.array([self.workers], "int32")],
                           "comparing the workers' cluster lists")
        sizes = sorted({int(sent[0][0]) for sent in seen})
        if len(sizes) > 1:
            raise WorkerLost(f"the workers' TF_CONFIG name different clusters (of "
                             f"{' and '.join(map(str, sizes))} workers); give every worker "
                             "the same cluster list, the same addresses in the same order")

    def _start_watchdog(self):
        """A tiny process that ends this one if the workers have not all joined within
        ``startup`` seconds: TensorFlow waits for them inside C++, holding the interpreter
        (no Python thread or signal handler runs meanwhile), for ever. It says so in one line
        first; closing its stdin dismisses it."""
        import subprocess

        return subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.startup),
             f"error: {self._not_joined()}"], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=sys.stderr)

    @property
    def workers(self) -> int:
        return self.topology.workers

    @property
    def rank(self) -> int:
        return self.topology.rank

    @property
    def chief(self) -> bool:
        return self.topology.chief

    def gather(self, arrays: list, during: str, timeout: float | None = None) -> list:
        """Every worker's ``arrays`` (same count, dtypes and trailing shapes on every worker;
        the first dimension may differ): [worker][i] -> numpy array, on every worker.
        ``timeout`` replaces --worker-timeout for this call (a wait known to be long)."""
        from transfer.tf import tf

        limit = self.timeout if timeout is None else float(timeout)
        if limit not in self._gathers:
            strategy = self.strategy
            options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=limit)

            def replica(values):
                ctx = tf.distribute.get_replica_context()
                sizes = [ctx.all_gather(tf.identity(tf.shape(v)[:1]), axis=0, options=options)
                         for v in values]
                return sizes, [ctx.all_gather(tf.identity(v), axis=0, options=options)
                               for v in values]

            @tf.function(reduce_retracing=True, autograph=False)
            def step(values):
                return strategy.run(replica, args=(values,))

            self._gathers[limit] = step

        ndims = [np.ndim(a) for a in arrays]  # scalars travel as shape (1,)

        def run():
            tensors = [tf.convert_to_tensor(np.ascontiguousarray(a).reshape(-1) if d == 0
                                            else np.ascontiguousarray(a))
                       for a, d in zip(arrays, ndims, strict=True)]
            sizes, values = self._gathers[limit](tensors)
            local = self.strategy.experimental_local_results
            out: list = [[] for _ in range(self.workers)]
            for size, value, ndim in zip(sizes, values, ndims, strict=True):
                counts = np.asarray(local(size)[0]).astype(int)
                whole = np.asarray(local(value)[0])
                for w, piece in enumerate(np.split(whole, np.cumsum(counts)[:-1])):
                    out[w].append(piece.reshape(()) if ndim == 0 else piece)
            return out

        try:
            return run()
        except tf.errors.OpError as exc:
            raise lost(exc, limit, during, self.timeout, self.kept) from None

    def broadcast(self, arrays: list, during: str, timeout: float | None = None) -> list:
        """The chief's ``arrays`` on every worker (others pass arrays of the same shapes)."""
        return self.gather(arrays, during, timeout)[0]

    def total(self, values, during: str) -> np.ndarray:
        """The sum over workers of a float64 vector."""
        parts = self.gather([np.asarray(values, "float64").reshape(1, -1)], during)
        return np.sum([p[0][0] for p in parts], axis=0)

    def barrier(self, during: str, timeout: float | None = None) -> None:
        """Wait until every worker gets here (a tiny gather)."""
        self.gather([np.zeros((1,), "float32")], during, timeout)

    def farewell(self) -> None:
        """One last tiny collective after a run's final barrier; its failure means nothing.

        A collective can be complete on one worker while another is still fetching its result
        from it, and a process ends (``os._exit``) right after its last barrier: a worker whose
        chief had written the bundle once failed that barrier ("Graph execution error", under
        load). Every worker enters this only after its final barrier returned, so when this
        completes anywhere, the final barrier has completed everywhere; whoever leaves first
        may cut this one short, which is ignored. (Every cluster process also lingers
        ``LINGER_SECONDS`` before it ends, for the collectives that end a run in error.)"""
        try:
            self.barrier("the farewell")
        except WorkerLost:
            pass

    def state(self, arrays: list, note: dict | None, during: str,
              timeout: float | None = None) -> tuple[list, dict | None]:
        """The chief's arrays and JSON-able note on every worker (others pass arrays of the
        same trailing shapes, e.g. their own weights, and any note)."""
        # one flat float64 vector (exact for float32 and for counters below 2**53): a model's
        # hundreds of weights cross in one collective, not hundreds
        arrays = [np.asarray(a) for a in arrays]
        # (an empty vector's collective crashed the process: SIGSEGV; one zero stands for none)
        flat = (np.concatenate([a.astype("float64").reshape(-1) for a in arrays]) if arrays
                else np.zeros((1,), "float64"))
        text = json.dumps(note).encode()
        got = self.broadcast([flat, np.frombuffer(text, np.uint8).astype("int32")], during,
                             timeout)
        out, start = [], 0
        for a in arrays:  # the chief's values, in this worker's shapes and dtypes
            out.append(got[0][start:start + a.size].reshape(a.shape).astype(a.dtype))
            start += a.size
        return out, json.loads(bytes(got[1].astype(np.uint8)).decode())


def quiet_native_logs() -> None:
    """Send TensorFlow's C++ log lines (file descriptor 2: a peer's crash is logged there by
    every survivor) to /dev/null for the rest of the process, keeping Python's sys.stderr on a
    copy of the real one; TRANSFER_VERBOSE=1 (``--verbose``) keeps them."""
    if os.environ.get("TRANSFER_VERBOSE") == "1":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    sys.stderr = os.fdopen(saved, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                           errors="backslashreplace")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
