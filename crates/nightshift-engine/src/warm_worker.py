"""nightshift's warm dbt runner (written by nightshift; do not edit).

One long-lived Python process per dbt project, profile, target and set of user vars, started
by a nightshift engine. It takes dbt invocations one at a time over a Unix socket and runs
them with dbt's programmatic dbtRunner, so dbt's import (about 2 s) is paid once, and keeps
the parsed project (the manifest) while the project's files, the profile and the user's own
vars are unchanged, so a night's calls do not parse it again. nightshift's own vars (ds, the
interval, run_id) change every night; dbt renders them when it compiles a node, so they need
no new parse. A var read at parse time (in a config: enabled, materialized) is a user var:
a change of one changes the key nightshift starts this worker under.

Protocol: the client (`nightshift __dbt_warm`, the try's own process) sends one JSON line,
{"argv", "parse_argv", "manifest_key", "cwd", "env"}, then reads JSON lines: dbt's events as
{"info": {"name", "level", "msg"}}, and last {"exit": N} (0 success, 1 failures, 2 dbt could
not run), as the dbt command line would exit. When the client goes away mid-invocation (a
timeout or a cancel killed it) the invocation is interrupted and this process exits; the
engine starts a fresh one for the next call.

Arguments: SOCKET (a path relative to the working directory, a folder only its user can
enter) and PARENT_PID (the engine's: when it is gone, this process ends too).
"""

import gc
import hashlib
import json
import os
import socket
import sys
import threading
import time
import _thread

SOCKET = sys.argv[1]
SOCKET_PATH = os.path.abspath(SOCKET)  # for removing it after a chdir
PARENT = int(sys.argv[2])


def watch_parent():
    # The engine that started us is gone: so are we.
    while True:
        try:
            os.kill(PARENT, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass
        time.sleep(1)


threading.Thread(target=watch_parent, daemon=True).start()

try:
    os.unlink(SOCKET)
except FileNotFoundError:
    pass
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(SOCKET)
server.listen(16)
# dbt also prints its events on stdout; each call's go to its client through the callback.
sys.stdout = open(os.devnull, "w")
# The slow import after the socket exists: a client connects at once and waits.
from dbt.cli.main import dbtRunner  # noqa: E402

# Parsed projects by what they depend on, the most recently used last: tasks of one
# project with different vars of their own each keep theirs.
manifests = {}
KEEP = 4


PARSED = (".sql", ".yml", ".yaml", ".csv", ".py", ".md", ".jinja")


def fingerprint(cwd, argv, manifest_key):
    """What the saved manifest depends on: the task's own vars (nightshift's key), the
    project's files dbt reads (their names, sizes and modification times; not a DuckDB
    file the profile may keep in the project) and the profile."""
    def flag(name):
        return argv[argv.index(name) + 1] if name in argv else "."

    project = os.path.join(cwd, flag("--project-dir"))
    profiles = os.path.join(cwd, flag("--profiles-dir"))
    h = hashlib.sha256(manifest_key.encode())
    for root, dirs, files in os.walk(project):
        dirs[:] = sorted(d for d in dirs if d not in ("target", "logs", ".git", "__pycache__"))
        for f in sorted(files):
            if not f.endswith(PARSED):
                continue
            p = os.path.join(root, f)
            try:
                st = os.stat(p)
            except OSError:
                continue
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    p = os.path.join(profiles, "profiles.yml")
    try:
        h.update(open(p, "rb").read())
    except OSError:
        pass
    for name in ("--target", "--profile"):
        if name in argv:
            h.update(f"{name}={flag(name)}".encode())
    return h.hexdigest()


def release_connections():
    # dbt-duckdb keeps the database file open after an invocation; another process (the
    # publish task's export, another worker) would find it locked.
    try:
        from dbt.adapters.duckdb.connections import DuckDBConnectionManager

        DuckDBConnectionManager.close_all_connections()
    except Exception:
        pass
    gc.collect()


def serve(conn):
    reader = conn.makefile("rb")
    line = reader.readline()
    if not line:
        return
    req = json.loads(line)
    lock = threading.Lock()
    gone = threading.Event()

    def send(obj):
        data = (json.dumps(obj) + "\n").encode()
        with lock:
            try:
                conn.sendall(data)
            except OSError:
                gone.set()

    def note(msg):
        send({"info": {"name": "NightshiftWarm", "level": "info", "msg": msg}})

    def on_event(e):
        if e.info.level in ("debug",):
            return
        send({"info": {"name": e.info.name, "level": e.info.level, "msg": e.info.msg}})

    def watch_client():
        # The client sends nothing more: end of file means it was stopped.
        try:
            reader.read()
        except OSError:
            pass
        if not finished.is_set():
            gone.set()
            # No new client may wait on a process about to end: the engine sees the socket
            # gone and starts a fresh worker for the next call.
            try:
                server.close()
                os.unlink(SOCKET_PATH)
            except OSError:
                pass
            _thread.interrupt_main()
            # dbt gets a moment to cancel its queries, then the process goes.
            time.sleep(15)
            os._exit(1)

    finished = threading.Event()
    threading.Thread(target=watch_client, daemon=True).start()

    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    argv = req["argv"]
    code = 2
    try:
        manifest = None
        if req.get("parse_argv"):
            key = fingerprint(req["cwd"], argv, req.get("manifest_key", ""))
            manifest = manifests.get(key)
            if manifest is None:
                started = time.monotonic()
                parsed = dbtRunner(callbacks=[on_event]).invoke(req["parse_argv"])
                if parsed.success and parsed.result is not None:
                    manifest = parsed.result
                    manifests[key] = manifest
                    while len(manifests) > KEEP:
                        del manifests[next(iter(manifests))]
                    note(f"warm dbt: parsed the project in {time.monotonic() - started:.2f}s; later calls reuse it while files, profile and vars stay the same")
            else:
                manifests[key] = manifests.pop(key)
                note("warm dbt: reusing the parsed project (no file, profile or var changed)")
        runner = dbtRunner(manifest=manifest, callbacks=[on_event])
        res = runner.invoke(argv)
        if res.success:
            code = 0
        elif res.exception is None:
            code = 1
        else:
            code = 2
            note(f"error: {res.exception}")
    except BaseException as e:  # noqa: BLE001 - every failure is this invocation's
        note(f"error: {type(e).__name__}: {e}")
        code = 2
    finally:
        finished.set()
        release_connections()
    if gone.is_set():
        os._exit(1)
    send({"exit": code})


while True:
    conn, _ = server.accept()
    try:
        serve(conn)
    finally:
        try:
            conn.close()
        except OSError:
            pass
