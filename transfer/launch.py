"""Try multi-worker training on one machine: N local workers on 127.0.0.1, one command.

    python -m transfer.launch 2 -- train --base mobilenet --alpha 0.25 --output models/mw \\
        --distribute multi-worker
    scripts/multiworker_local.sh 2 -- train ...        (the same)

Each worker is the same ``transfer`` command with its own ``TF_CONFIG`` (free ports on
127.0.0.1, worker 0 the chief). The chief's output is shown as it comes; the other workers'
lines are prefixed ``[worker i]``. When a worker fails, the others get ``grace`` seconds to
stop by themselves (they notice within ``--worker-timeout``: 150 s, or twice a longer
``--worker-timeout`` and 30 s) and are then killed; the exit code
is the first non-zero one, else 0. ``--distribute multi-worker`` is added when not given. On
several machines, set TF_CONFIG on each yourself (README,
"Training on several machines").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

GRACE_SECONDS = 150.0


def free_ports(n: int) -> list[int]:
    """n ports free on 127.0.0.1 now (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses: Sequence[str], index: int) -> str:
    """The TF_CONFIG of worker ``index`` of a cluster of ``addresses`` (worker 0: the chief)."""
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": index}})


def command(args: Sequence[str]) -> list[str]:
    """The ``transfer`` command line with ``args``, run by this Python."""
    return [sys.executable, "-m", "transfer", *args]


def start(n: int, args: Sequence[str], ports: Sequence[int] | None = None,
          env: dict | None = None) -> list[subprocess.Popen]:
    """Start n workers of ``transfer <args>``; worker 0's output is inherited, the others' is
    piped (see ``run_local``)."""
    ports = list(ports) if ports is not None else free_ports(n)
    addresses = [f"127.0.0.1:{p}" for p in ports]
    procs = []
    try:
        for i in range(n):
            worker_env = {**(os.environ if env is None else env),
                          "TF_CONFIG": tf_config(addresses, i)}
            piped = {} if i == 0 else {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
            # a session of its own: a terminal's Ctrl-C reaches the launcher alone, which
            # passes it on once (it reached the workers too, and the second one, 0.2 s later,
            # fell in their clean-up)
            procs.append(subprocess.Popen(command(args), env=worker_env, text=True,
                                          start_new_session=True, **piped))
    except BaseException:  # one that could not start (no memory, no process left): the ones
        for proc in procs:  # started would wait for it until their start-up watchdog
            proc.kill()
            proc.wait()
        raise
    return procs


def _relay(proc: subprocess.Popen, index: int) -> None:
    for line in proc.stdout:
        sys.stderr.write(f"[worker {index}] {line}")
    sys.stderr.flush()


STOP_SECONDS = 60.0  # after Ctrl-C or SIGTERM: what the workers get to clean up and stop


def exit_code(returncode: int) -> int:
    """A worker's return code as a shell shows it: killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _said(returncode: int) -> str:
    import signal

    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


def run_local(n: int, args: Sequence[str], grace: float = GRACE_SECONDS) -> int:
    """Run ``transfer <args>`` as n local workers and wait for them; the exit code.

    Ctrl-C or SIGTERM to the launcher is passed on to the workers (each in a session of its
    own: a terminal's Ctrl-C reaches the launcher alone), which stop with their usual
    clean-up; those still running ``STOP_SECONDS`` later are killed. The exit code is then
    130 or 143 (SIGHUP, a terminal closed: passed on as SIGTERM, 129). A worker killed by a
    signal is said, and counts as 128 + the signal's number."""
    import signal

    if n < 1:
        raise ValueError("at least one worker")
    stop: list[int] = []

    def on_signal(signum, frame):
        stop.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        # SIGHUP too (the terminal closed): the workers, in sessions of their own, would
        # not hear of it; they are stopped as by SIGTERM
        previous = {sig: signal.signal(sig, on_signal)
                    for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
                    if sig is not None}  # no SIGHUP on Windows
    try:
        procs = start(n, args)
        relays = [threading.Thread(target=_relay, args=(p, i), daemon=True)
                  for i, p in enumerate(procs) if i > 0]
        for t in relays:
            t.start()
        code, failed_at, stopped_at, first, killed = 0, None, None, None, set()
        while any([p.poll() is None for p in procs]):  # a list: every worker polled
            if stop and stopped_at is None:
                stopped_at = time.monotonic()
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(stop[0] if stop[0] in (signal.SIGINT, signal.SIGTERM)
                                      else signal.SIGTERM)  # SIGHUP: as SIGTERM
            for i, p in enumerate(procs):
                if p.returncode not in (None, 0) and failed_at is None:
                    code, failed_at, first = exit_code(p.returncode), time.monotonic(), i
            late = ((failed_at is not None and time.monotonic() - failed_at > grace)
                    or (stopped_at is not None and time.monotonic() - stopped_at > STOP_SECONDS))
            if late:
                for i, p in enumerate(procs):
                    if p.poll() is None:
                        p.kill()
                        killed.add(i)
            time.sleep(0.2)
        for t in relays:
            t.join(timeout=5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # the worker that failed first said first; one the launcher killed is said so (it was
    # said "killed by SIGKILL", as if it had crashed)
    order = sorted(range(n), key=lambda i: (i != first, i))
    for i in order:
        p, name = procs[i], f"worker {i}{' (the chief)' if i == 0 else ''}"
        if i in killed and not stop:
            print(f"[launch] {name} had not stopped {grace:g} s after worker {first} failed: "
                  "killed by the launcher", file=sys.stderr)
        elif p.returncode < 0 and not stop:
            print(f"[launch] {name} {_said(p.returncode)}", file=sys.stderr)
        if p.returncode and not code:
            code = exit_code(p.returncode)
    if stop:
        return 128 + int(stop[0])  # 130 (Ctrl-C), 143 (SIGTERM), 129 (SIGHUP)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # the name it was started by: scripts/multiworker_local.sh says its own (its usage named
    # `python -m transfer.launch`)
    name = os.environ.get("TRANSFER_LAUNCH_NAME") or "python -m transfer.launch"
    usage = f"usage: {name} N -- train <options> --distribute multi-worker"
    if argv[:1] in (["-h"], ["--help"]):  # asked for: said on stdout, exit 0
        print(f"{usage}\n\nRuns N local workers of `transfer train` on 127.0.0.1, each with "
              "its own TF_CONFIG (worker 0 the chief);\n--distribute multi-worker is added "
              "when not given. README: \"Training on several machines\".")
        return 0
    if not argv or not argv[0].isdigit() or int(argv[0]) < 1:
        print(usage, file=sys.stderr)
        return 2
    n, rest = int(argv[0]), argv[1:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if not rest:
        print(usage, file=sys.stderr)
        return 2
    command_name = next((a for a in rest if not a.startswith("-")), None)
    if command_name != "train":  # predict and the rest have no --distribute: said twice
        print(f"error: the launcher runs `transfer train` on several workers, not "
              f"`transfer {command_name or ' '.join(rest)}`", file=sys.stderr)
        return 2
    given = distribute_option(rest)
    if given is None:  # without it, N separate trainings would race for one bundle
        rest = [*rest, "--distribute", "multi-worker"]
    elif given == "":  # no value: the workers each said so, after "--distribute" was added
        print("error: --distribute has no value; the launcher runs --distribute multi-worker "
              "(added when not given)", file=sys.stderr)
        return 2
    elif given != "multi-worker":
        print(f"error: the launcher runs multi-worker training, not --distribute {given}",
              file=sys.stderr)
        return 2
    return run_local(n, rest, grace_for(rest))


def grace_for(args: Sequence[str]) -> float:
    """What the other workers get to stop by themselves after one fails: GRACE_SECONDS, or
    more for a long ``--worker-timeout`` (they notice within it and its margins, then say why
    in one line): a chief killed before it could say so left only the launcher's line."""
    try:
        timeout = float(option_value(args, "--worker-timeout") or "")
    except ValueError:  # not given, or not a number (the workers say so themselves)
        return GRACE_SECONDS
    return max(GRACE_SECONDS, 2 * timeout + 30)


def distribute_option(args: Sequence[str]) -> str | None:
    """The value of ``--distribute`` in ``args`` (either spelling), None when not given, ""
    when given without one (last, or followed by another option)."""
    return option_value(args, "--distribute")


def option_value(args: Sequence[str], name: str) -> str | None:
    """The value of option ``name`` in ``args`` (``name V`` or ``name=V``; the last one
    given), None when not given, "" when given without one (last, or followed by another
    option)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name:
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else ""
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


if __name__ == "__main__":
    sys.exit(main())
