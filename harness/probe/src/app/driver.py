"""racegate's in-process driver: one ASGI application, its WebSocket connections served by
uvicorn's own protocol code over in-memory transports, on an asyncio loop whose clock is virtual.

racegate starts this file with the user's Python (the one that can import their app) and talks
to it over standard input and output, one JSON object a line. racegate plays the clients (its
own WebSocket client, the one `probe --url` uses) and this side plays the network and the server:

- `load`: import the app as uvicorn does (`module:attr`, `--factory`, `--app-dir`), patch the
  hooked awaitables, run the lifespan's startup, and wait.
- `case`: fork. The child starts from the state just after startup, serves one scenario and
  exits; the parent waits for it and is ready for the next. Nothing one case does to
  module-level state reaches the next.
- In a case, `advance` hands over what the clients sent (upgrade requests, frames, drops) and
  runs the loop until a virtual time or until the server wrote something, whichever is first;
  `finish` runs it until every handler and task of the connections is done (or a time), and
  reports what is still pending.

Virtual time: `loop.time()` is a number this file moves. When nothing is ready, the selector
jumps it to the next timer instead of waiting, so `asyncio.sleep`, `wait_for` and `call_later`
cost nothing. While a thread-pool job of the app is running (`run_in_executor`, anyio's
`to_thread`, which Starlette and FastAPI use for sync code), the clock waits for it in real time.

The driver needs the standard library and what the app needs (uvicorn and its WebSocket
library); nothing else. Its stdout is racegate's: the app's prints go to stderr.
"""

import asyncio
import base64
import contextvars
import gc
import importlib
import json
import logging
import os
import random
import select
import selectors
import sys
import traceback

# A thread-pool job longer than this (real seconds) is reported instead of waited for forever.
THREAD_GUARD_S = 60.0
# The peer addresses of the in-memory connections: connection i is 127.0.0.1:(PORT_BASE + i).
PORT_BASE = 50000
SERVER_ADDR = ("127.0.0.1", 8000)
PHASES = ("auth", "services", "register")

_proto_in = None
_proto_out = None


def send(obj):
    write_all(_proto_out, (json.dumps(obj, separators=(",", ":")) + "\n").encode())


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class LineReader:
    """Unbuffered beyond one line, so a forked child never inherits bytes meant for another."""

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""

    def has_line(self):
        return b"\n" in self.buf

    def line(self):
        while b"\n" not in self.buf:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)


class Fail(Exception):
    """Bad input: reported to racegate as an error of `kind`, which exits 2 with the message."""

    def __init__(self, kind, message, **extra):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.extra = extra


# --------------------------------------------------------------------------------------------
# The virtual clock


class VirtualSelector(selectors.BaseSelector):
    """The loop's selector: real for the loop's own self-pipe (threads wake the loop through it),
    virtual for time. `select(timeout)` returns what is ready at once; otherwise, with a
    thread-pool job in flight it waits for it in real time, and with none it moves the clock
    by `timeout` and returns nothing."""

    def __init__(self, loop):
        # select(), not epoll: no kernel object a forked child would share with its parent.
        self.real = selectors.SelectSelector()
        self.loop = loop

    def register(self, fileobj, events, data=None):
        return self.real.register(fileobj, events, data)

    def unregister(self, fileobj):
        return self.real.unregister(fileobj)

    def modify(self, fileobj, events, data=None):
        return self.real.modify(fileobj, events, data)

    def get_map(self):
        return self.real.get_map()

    def close(self):
        self.real.close()

    def select(self, timeout=None):
        ready = self.real.select(0)
        if ready:
            return ready
        if self.loop.busy_threads > 0:
            ready = self.real.select(THREAD_GUARD_S)
            if not ready:
                raise Fail(
                    "thread",
                    f"a thread-pool job of the app ran for more than {THREAD_GUARD_S:.0f} s of "
                    "real time; the virtual clock waits for threads, so a blocking call there "
                    "(real I/O, a lock) stops the scenario",
                )
            return ready
        if timeout is None:
            # Nothing ready, no timer: the driver's own stop timer makes this unreachable.
            raise Fail("stall", "the event loop has nothing to wait for")
        self.loop.vnow += timeout
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self):
        self.vnow = 0.0
        self.busy_threads = 0
        super().__init__(VirtualSelector(self))

    def time(self):
        return self.vnow

    def run_in_executor(self, executor, func, *args):
        future = super().run_in_executor(executor, func, *args)
        self.busy_threads += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future):
        self.busy_threads -= 1

    def fresh_after_fork(self):
        """In a forked child: its own self-pipe, and no thread pool whose threads stayed behind."""
        self._close_self_pipe()
        self._make_self_pipe()
        self._default_executor = None


def hold_clock_for_anyio_threads(loop):
    """Starlette and FastAPI run sync code with `anyio.to_thread.run_sync`, through its module
    attribute: wrapped here so the clock waits for those threads too."""
    try:
        import anyio.to_thread
    except ImportError:
        return
    original = anyio.to_thread.run_sync

    async def run_sync(*args, **kwargs):
        loop.busy_threads += 1
        try:
            return await original(*args, **kwargs)
        finally:
            loop.busy_threads -= 1

    anyio.to_thread.run_sync = run_sync


# --------------------------------------------------------------------------------------------
# The network: one in-memory transport per client connection


EOF = object()


class MemoryTransport(asyncio.Transport):
    """The server's end of one connection. What the server writes goes to racegate's client;
    what the client sends, and the end of its connection, are delivered through the loop in
    order, and held while the protocol has paused reading, as a socket transport's are."""

    def __init__(self, case, conn):
        super().__init__()
        self.case = case
        self.conn = conn
        self.protocol = None
        # The server closed its end: nothing more is written or read.
        self.closing = False
        # The client's TCP connection ended; the server has not necessarily read that yet.
        self.gone = False
        self.writes_after_gone = 0
        self.lost = False
        self.paused = False
        self.held = []

    def get_extra_info(self, name, default=None):
        return {
            "peername": ("127.0.0.1", PORT_BASE + self.conn),
            "sockname": SERVER_ADDR,
        }.get(name, default)

    def set_protocol(self, protocol):
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    def is_closing(self):
        return self.closing

    def write(self, data):
        # A closed socket transport drops what is written after close, as asyncio's does.
        if self.closing or self.lost or not data:
            return
        if self.gone:
            # The peer has gone: the first write still leaves (the kernel takes it, the peer
            # answers with a reset), the next one fails, and the transport is lost.
            self.writes_after_gone += 1
            if self.writes_after_gone == 2:
                self.closing = True
                self.case.loop.call_soon(self._lose, ConnectionResetError("peer gone"))
            return
        self.case.output(self.conn, bytes(data))

    def writelines(self, chunks):
        self.write(b"".join(chunks))

    def can_write_eof(self):
        return False

    def get_write_buffer_size(self):
        return 0

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_write_buffer_limits(self):
        return (0, 0)

    def close(self):
        if self.closing:
            return
        self.closing = True
        if not self.gone:
            self.case.output(self.conn, None)
        self.case.loop.call_soon(self._lose, None)

    def abort(self):
        self.close()

    def is_reading(self):
        return not self.paused and not self.closing

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        if not self.paused:
            return
        self.paused = False
        held, self.held = self.held, []
        for item in held:
            self.case.loop.call_soon(self._deliver, item)

    def receive(self, data):
        """Bytes from the client, delivered in the loop like a socket's."""
        if not self.gone:
            self.case.loop.call_soon(self._deliver, data)

    def client_gone(self):
        """The client's TCP connection ended (after its close handshake, or a drop): read after
        whatever it sent before, when reading is not paused."""
        if self.gone:
            return
        self.gone = True
        self.case.loop.call_soon(self._deliver, EOF)

    def _deliver(self, item):
        if self.closing or self.lost:
            return
        if self.paused:
            self.held.append(item)
            return
        if item is EOF:
            keep_open = self.protocol.eof_received()
            if not keep_open:
                self.closing = True
                self._lose(None)
        else:
            self.protocol.data_received(item)

    def _lose(self, exc):
        if self.lost:
            return
        self.lost = True
        self.protocol.connection_lost(exc)


# --------------------------------------------------------------------------------------------
# Watching the app: what no client can see


current = contextvars.ContextVar("racegate_connection", default=None)


class Connection:
    """What the driver knows of one connection's handler."""

    def __init__(self, case, index, user, fail_at):
        self.case = case
        self.index = index
        self.user = user
        self.fail_at = fail_at
        self.transport = None
        self.handler = None
        self.handler_done = False
        self.accepted = False
        self.app_closed = False
        self.disconnect_received = False
        self.tasks = []
        # When each of `tasks` ended, in virtual microseconds: an exception it raised that nobody
        # retrieves is reported at that time.
        self.ended_at = {}

    def fact(self, kind, **fields):
        self.case.fact(self.index, kind, **fields)

    def misuse(self, op, error):
        self.fact("misuse", op=op, error=error)


def note_misuse(op, exc):
    """A RuntimeError from a use of the socket: Starlette's state errors, uvicorn's "Unexpected
    ASGI message", noted once per exception however many layers it crosses."""
    conn = current.get()
    if conn is None or getattr(exc, "_racegate_noted", False):
        return
    try:
        exc._racegate_noted = True
    except AttributeError:
        pass
    conn.misuse(op, str(exc))


def watch_starlette():
    """Starlette checks its own state before a message reaches uvicorn (receive_text before
    accept raises without calling `receive`): its errors are noted where they are raised."""
    try:
        from starlette.websockets import WebSocket
    except ImportError:
        return
    for name in ("receive", "send", "receive_text", "receive_bytes", "receive_json"):
        original = getattr(WebSocket, name)

        def wrapped(self, *args, __original=original, __name=name, **kwargs):
            return _watched(__original(self, *args, **kwargs), __name)

        wrapped.__name__ = name
        wrapped.__qualname__ = f"WebSocket.{name}"
        wrapped.__doc__ = original.__doc__
        setattr(WebSocket, name, wrapped)


async def _watched(awaitable, name):
    try:
        return await awaitable
    except RuntimeError as exc:
        note_misuse(name, exc)
        raise


class Observer:
    """Wraps the loaded app: each WebSocket call gets its connection's context (the hooks and the
    task factory read it), and the app's use of the ASGI connection is checked against its
    state."""

    def __init__(self, app, driver):
        self.app = app
        self.driver = driver

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket" or self.driver.case is None:
            return await self.app(scope, receive, send)
        case = self.driver.case
        conn = case.conns[scope["client"][1] - PORT_BASE]
        current.set(conn)
        conn.handler = asyncio.current_task()

        async def receive_watched():
            message = await receive()
            if message["type"] == "websocket.disconnect":
                conn.disconnect_received = True
            return message

        async def send_watched(message):
            kind = message["type"]
            if kind == "websocket.accept" and case.accept_ms and not conn.accepted:
                await asyncio.sleep(case.accept_ms / 1000)
            broken = None
            if kind in ("websocket.send", "websocket.close"):
                verb = "sent" if kind == "websocket.send" else "closed"
                if conn.app_closed:
                    broken = f"the app {verb} after its own close"
                elif conn.disconnect_received:
                    broken = f"the app {verb} after the client's disconnect reached it"
                elif not conn.accepted and kind == "websocket.send":
                    broken = "the app sent before accept"
            if broken is not None:
                conn.misuse(kind.replace("websocket.", ""), broken)
            try:
                await send(message)
            except RuntimeError as exc:
                if broken is None:
                    note_misuse(kind.replace("websocket.", "send "), exc)
                else:
                    exc._racegate_noted = True
                raise
            if kind == "websocket.accept":
                conn.accepted = True
            elif kind == "websocket.close":
                conn.app_closed = True

        try:
            await self.app(scope, receive_watched, send_watched)
        except BaseException as exc:
            if not self.driver.is_client_disconnected(exc):
                conn.fact("raised", type=type(exc).__name__, message=str(exc))
            raise
        finally:
            conn.handler_done = True
            case.settled()


def task_factory(loop, coro, **kwargs):
    """Every task knows the connection it was spawned for (the context it was created in)."""
    task = asyncio.Task(coro, loop=loop, **kwargs)
    conn = current.get()
    if conn is not None and conn.case is loop.driver.case:
        conn.tasks.append(task)

        def ended(t):
            conn.ended_at[t] = conn.case.now_us()
            conn.case.settled()

        task.add_done_callback(ended)
    return task


# --------------------------------------------------------------------------------------------
# Hooks: the app's own awaitables, timed and failed per the scenario's [server]


def resolve(spec, phase, key):
    """The object `spec` (MODULE:ATTR, ATTR dotted) names, and where it lives, for patching."""
    what = f"{phase}.{key} = {spec!r}"
    kind = f"hooks:{phase}:{key}"
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise Fail(kind, f"{what}: expected MODULE:ATTR")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise Fail(kind, f"{what}: importing {module_name} failed: {exc}") from None
        raise Fail(kind, f"{what}: no module named {module_name!r}") from None
    except Exception as exc:
        raise Fail(kind, f"{what}: importing {module_name} raised {describe(exc)}") from None
    owner = module
    path = attr.split(".")
    for part in path[:-1]:
        owner = getattr(owner, part, None)
        if owner is None:
            raise Fail(kind, f"{what}: {module_name} has no attribute {part!r}")
    name = path[-1]
    if not hasattr(owner, name):
        raise Fail(kind, f"{what}: {module_name} has no attribute {attr!r}")
    return owner, name, getattr(owner, name)


def install_hooks(hooks, driver):
    """Replaces each hooked awaitable with one that first sleeps the phase's time and fails
    where the scenario says, for the connection it is called for. Done before the app is
    imported, so `from module import f` in the app binds the hooked one."""
    import inspect

    for phase in PHASES:
        hook = hooks.get(phase)
        if not hook:
            continue
        owner, name, original = resolve(hook["call"], phase, "call")
        if not inspect.iscoroutinefunction(original):
            raise Fail(
                f"hooks:{phase}:call",
                f"{phase}.call = {hook['call']!r} is not a coroutine function (async def); "
                "hooks time the app's awaitables",
            )
        error = None
        if hook.get("raise"):
            _, _, error = resolve(hook["raise"], phase, "raise")
            if not (isinstance(error, type) and issubclass(error, BaseException)):
                raise Fail(
                    f"hooks:{phase}:raise",
                    f"{phase}.raise = {hook['raise']!r} is not an exception class",
                )
        setattr(owner, name, hooked(original, phase, error, driver))


def hooked(original, phase, error, driver):
    import functools

    @functools.wraps(original)
    async def hook(*args, **kwargs):
        conn = current.get()
        case = driver.case
        if conn is not None and case is not None:
            delay = case.phase_ms.get(phase, 0)
            if delay:
                await asyncio.sleep(delay / 1000)
            # racegate refuses a scenario that fails a phase whose hook names no exception.
            if conn.fail_at == phase and error is not None:
                raise make_error(error, f"racegate: {phase} fails for user {conn.user} (fail_at)")
        return await original(*args, **kwargs)

    return hook


def make_error(error, message):
    try:
        return error(message)
    except TypeError:
        return error()


# --------------------------------------------------------------------------------------------
# One case: the forked child's conversation


class Case:
    def __init__(self, driver, spec):
        self.driver = driver
        self.loop = driver.loop
        self.t0 = self.loop.time()
        self.accept_ms = spec["accept_ms"]
        self.phase_ms = {p: spec.get(f"{p}_ms", 0) for p in PHASES}
        self.conns = [
            Connection(self, i, c["user"], c.get("fail_at")) for i, c in enumerate(spec["conns"])
        ]
        self.out = []
        self.facts = []

    def now_us(self):
        return round((self.loop.time() - self.t0) * 1_000_000)

    def output(self, conn, data):
        self.out.append([conn, None if data is None else base64.b64encode(data).decode()])
        # Stop after this step so the client sees it at this instant; while finishing, the
        # clients are gone and only the app's own work is left to run.
        if self.loop.is_running() and not self.finishing:
            self.loop.stop()

    def fact(self, conn, kind, **fields):
        self.facts.append({"conn": conn, "at_us": self.now_us(), "kind": kind, **fields})

    def pending(self):
        handlers = [c.handler for c in self.conns if c.handler is not None and not c.handler_done]
        return handlers + [t for c in self.conns for t in c.tasks if not t.done()]

    def settled(self):
        """Called as handlers and tasks end: while finishing, stop once nothing is left."""
        if self.finishing and not self.pending() and self.loop.is_running():
            self.loop.stop()

    finishing = False

    def connect(self, i):
        """A new connection, served as uvicorn serves one: its HTTP protocol reads the upgrade
        request and hands the connection to its WebSocket protocol (bytes after the request in
        the same read are the HTTP protocol's to keep or lose, as under uvicorn)."""
        t = MemoryTransport(self, i)
        d = self.driver
        protocol = d.config.http_protocol_class(
            config=d.config, server_state=d.server_state, app_state=d.app_state, _loop=self.loop
        )
        t.set_protocol(protocol)
        self.conns[i].transport = t
        protocol.connection_made(t)

    def run_until(self, until_us):
        stop = self.loop.call_at(self.t0 + until_us / 1_000_000, self.loop.stop)
        try:
            self.loop.run_forever()
        finally:
            stop.cancel()

    def advance(self, msg):
        for item in msg.get("inputs", []):
            i = item["conn"]
            if item["op"] == "connect":
                self.connect(i)
            elif item["op"] == "data":
                self.conns[i].transport.receive(base64.b64decode(item["b64"]))
            elif item["op"] == "gone":
                self.conns[i].transport.client_gone()
            elif item["op"] == "shutdown":
                self.shutdown()
        self.run_until(msg["until_us"])
        out, self.out = self.out, []
        facts, self.facts = self.facts, []
        send({"ev": "step", "now_us": self.now_us(), "out": out, "facts": facts})

    def shutdown(self):
        """uvicorn's Server.shutdown, for the connections: each is asked to shut down (its
        HTTP protocol, or the WebSocket protocol it handed the connection to)."""
        for protocol in list(self.driver.server_state.connections):
            protocol.shutdown()

    def finish(self, msg):
        for c in self.conns:
            if c.transport is not None:
                c.transport.client_gone()
        self.finishing = True
        # One pass over what the departures set off, then on until nothing is pending.
        self.loop.call_soon(self.settled)
        self.run_until(msg["until_us"])
        for c in self.conns:
            if c.handler is not None and not c.handler_done:
                c.fact("handler_pending", name=coro_name(c.handler))
            for t in c.tasks:
                if not t.done():
                    c.fact("task_pending", name=coro_name(t))
                elif unretrieved(t):
                    # What asyncio would log as "Task exception was never retrieved" once the
                    # task is collected: an exception that escaped the app, through a task.
                    # Reading it here marks it retrieved, so asyncio does not log it too.
                    exc = t.exception()
                    text = str(exc)
                    where = f"in task {coro_name(t)}, never retrieved"
                    self.facts.append(
                        {
                            "conn": c.index,
                            "at_us": c.ended_at.get(t, self.now_us()),
                            "kind": "raised",
                            "type": type(exc).__name__,
                            "message": f"{text} ({where})" if text else f"({where})",
                        }
                    )
        send({"ev": "finished", "now_us": self.now_us(), "out": [], "facts": self.facts})


def unretrieved(task):
    """Whether `task` ended with an exception that no one has read (not a cancellation): the
    flag asyncio's own "never retrieved" report reads, on CPython's tasks and futures alike."""
    return not task.cancelled() and getattr(task, "_log_traceback", False)


def coro_name(task):
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or getattr(coro, "__name__", None) or repr(coro)
    module = getattr(getattr(coro, "cr_code", None), "co_filename", None)
    return name if module is None else f"{name} ({os.path.basename(module)})"


def describe(exc):
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# The driver: load once, then one forked child per case


class UvicornErrors(logging.Handler):
    """Keeps what uvicorn logs at ERROR, to explain a failed load or startup."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines = []

    def emit(self, record):
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text.strip()}: {describe(record.exc_info[1])}"
        self.lines.append(text.strip())


class Driver:
    def __init__(self):
        self.loop = VirtualLoop()
        self.loop.driver = self
        self.loop.set_task_factory(task_factory)
        asyncio.set_event_loop(self.loop)
        self.case = None
        self.config = None
        self.spare = None
        # Cases running or just finished, by their watch pipe, and those exiting.
        self.active = {}
        self.exited = []
        self.scratch_log = False
        self.errors = UvicornErrors()

    def is_client_disconnected(self, exc):
        return type(exc).__name__ == "ClientDisconnected"

    def load(self, msg):
        self.scratch_log = msg.get("scratch_log", False)
        sys.path.insert(0, os.path.abspath(msg["app_dir"]))
        try:
            import uvicorn
            from uvicorn.importer import ImportFromStringError, import_from_string
            from uvicorn.server import ServerState
        except ImportError as exc:
            raise Fail(
                "python",
                f"{sys.executable} cannot import uvicorn ({exc}); --app runs the app with "
                "uvicorn's own WebSocket code, so install uvicorn where the app is installed, "
                "or point --python at that environment",
            ) from None
        logging.getLogger("uvicorn.error").addHandler(self.errors)
        hold_clock_for_anyio_threads(self.loop)
        watch_starlette()
        install_hooks(msg.get("hooks") or {}, self)
        try:
            app = import_from_string(msg["app"])
        except ImportFromStringError as exc:
            raise Fail("app", f"--app {msg['app']}: {exc}") from None
        except BaseException as exc:
            raise Fail(
                "app", f"--app {msg['app']}: importing it raised {describe(exc)}{where(exc)}"
            ) from None
        config = uvicorn.Config(
            app,
            factory=msg["factory"],
            ws=msg["ws"],
            lifespan=msg["lifespan"],
            log_config=None,
            proxy_headers=False,
        )
        try:
            config.load()
        except SystemExit:
            raise Fail("app", "; ".join(self.errors.lines) or "uvicorn could not load the app")
        except ModuleNotFoundError as exc:
            if exc.name in ("websockets", "wsproto", "httptools"):
                raise Fail(
                    "python",
                    f"--ws {msg['ws']}: uvicorn's implementation needs the Python package "
                    f"{exc.name!r}, which {sys.executable} does not have",
                ) from None
            raise Fail("app", f"--app {msg['app']}: loading it raised {describe(exc)}") from None
        except BaseException as exc:
            raise Fail("app", f"--app {msg['app']}: loading it raised {describe(exc)}") from None
        if config.ws_protocol_class is None:
            raise Fail("app", f"--ws {msg['ws']}: uvicorn has no WebSocket implementation")
        config.loaded_app = Observer(config.loaded_app, self)
        self.config = config
        self.server_state = ServerState()
        self.server_state.default_headers = [
            (b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")
        ] + config.encoded_headers
        self.lifespan = config.lifespan_class(config)
        self.errors.lines.clear()
        self.loop.run_until_complete(self.lifespan.startup())
        if self.lifespan.should_exit:
            why = "; ".join(untraced(line) for line in self.errors.lines if "Exiting" not in line)
            why = why or "the app's startup failed"
            raise Fail("startup", f"--app {msg['app']}: lifespan startup failed: {why}")
        self.app_state = self.lifespan.state
        routes = check_route(config, msg["path"])
        warm_static_caches(routes)
        ws = config.ws_protocol_class
        http = config.http_protocol_class
        send(
            {
                "ev": "loaded",
                "ws": f"{ws.__module__}.{ws.__qualname__}",
                "http": f"{http.__module__}.{http.__qualname__}",
                "python": sys.version.split()[0],
                "uvicorn": uvicorn.__version__,
            }
        )

    def run_case(self, msg, commands):
        """One case in a process of its own: the spare forked while the last case ran gets the
        case, and a new spare is forked while this one runs. The parent does not wait for it:
        the case says when it is done, and the parent watches it only to report a crash."""
        if self.spare is None:
            self.spare = self.prefork(commands)
        pid, handoff, watch = self.spare
        if self.scratch_log:
            # Without --app-log only the last case's output is wanted, to explain a failure.
            os.ftruncate(2, 0)
        write_all(handoff, (json.dumps(msg) + "\n").encode())
        os.close(handoff)
        self.active[watch] = pid
        self.spare = self.prefork(commands)

    def prefork(self, commands):
        """A child forked from the started app that waits, on a pipe of its own, for the case it
        is to serve; it reads nothing of racegate's until then. A second pipe tells the parent
        how it ended: a byte before it exits on its own, nothing if it died."""
        handoff_r, handoff_w = os.pipe()
        watch_r, watch_w = os.pipe()
        # Everything the parent holds stays where it is: a collection in the child would walk
        # (and copy, page by page) the whole imported app for garbage a short case never makes.
        gc.freeze()
        pid = os.fork()
        if pid != 0:
            os.close(handoff_r)
            os.close(watch_w)
            return pid, handoff_w, watch_r
        os.close(handoff_w)
        os.close(watch_r)
        code = 0
        try:
            gc.disable()
            msg = LineReader(handoff_r).line()
            os.close(handoff_r)
            if msg is None:
                # The driver is quitting: this spare is not needed.
                os._exit(0)
            self.loop.fresh_after_fork()
            random.seed(msg.get("seed", 0))
            self.case = Case(self, msg)
            send({"ev": "ready"})
            while True:
                cmd = commands.line()
                if cmd is None:
                    break
                if cmd["op"] == "advance":
                    self.case.advance(cmd)
                elif cmd["op"] == "finish":
                    self.case.finish(cmd)
                    break
        except Fail as fail:
            send({"ev": "error", "kind": fail.kind, "message": fail.message, **fail.extra})
            code = 3
        except BaseException:
            send({"ev": "error", "kind": "driver", "message": traceback.format_exc()})
            code = 4
        finally:
            sys.stderr.flush()
            os.write(watch_w, b"k")
            os._exit(code)

    def wait_command(self, commands):
        """Waits for racegate's next command. While a case runs, racegate's commands are the
        case's to read: the parent first waits for the case to say it is done (a byte on its
        watch pipe, written before it exits; nothing if it died, which is reported at once)."""
        while self.active:
            ready, _, _ = select.select(list(self.active), [], [])
            for fd in ready:
                self.case_ended(fd)
        self.reap()
        return commands.line()

    def case_ended(self, watch):
        pid = self.active.pop(watch)
        said = os.read(watch, 1)
        os.close(watch)
        if said:
            self.exited.append(pid)
            return
        _, status = os.waitpid(pid, 0)
        send({"ev": "crashed", "status": os.waitstatus_to_exitcode(status)})

    def reap(self):
        """Collects the cases that have exited by now, without waiting for the rest."""
        still = []
        for pid in self.exited:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if not done:
                still.append(pid)
        self.exited = still

    def quit(self):
        if self.spare is not None:
            pid, handoff, watch = self.spare
            os.close(handoff)
            os.waitpid(pid, 0)
            os.close(watch)
            self.spare = None
        for watch, pid in self.active.items():
            os.close(watch)
            self.exited.append(pid)
        self.active = {}
        for pid in self.exited:
            os.waitpid(pid, 0)
        self.exited = []
        if self.config is not None:
            self.loop.run_until_complete(self.lifespan.shutdown())


def untraced(text):
    """A logged message without the traceback it may carry: its last line (the exception) and
    the innermost place it was raised."""
    if "Traceback (most recent call last)" not in text:
        return text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    places = [line.strip() for line in lines if line.strip().startswith('File "')]
    place = ""
    if places:
        parts = places[-1].split('"')
        number = places[-1].partition(", line ")[2].partition(",")[0]
        if len(parts) > 1 and number:
            place = f" ({parts[1]}:{number})"
    return f"{lines[-1].strip()}{place}"


def where(exc):
    """The innermost frame of an import error, for a message that points at the line."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    return f" ({tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})"


def warm_static_caches(routes):
    """Fills, once in the parent, what FastAPI caches lazily per endpoint and never changes:
    where each endpoint's source is (it reads and tokenizes the file the first time). Every
    forked case would otherwise pay for it again; no state of the app is touched."""
    fastapi_routing = sys.modules.get("fastapi.routing")
    extract = getattr(fastapi_routing, "_extract_endpoint_context", None)
    if extract is None:
        return
    for route in routes:
        call = getattr(getattr(route, "dependant", None), "call", None)
        if call is not None:
            try:
                extract(call)
            except Exception:
                pass


def check_route(config, path):
    """A `--path` no WebSocket route of a Starlette (or FastAPI) app matches is bad input, not a
    refusal to judge: said now, with the routes there are. Other apps are not looked into.
    Returns the WebSocket routes found."""
    try:
        from starlette.routing import Match, Mount, WebSocketRoute
    except ImportError:
        return []
    app = config.loaded_app.app
    seen = set()
    while not hasattr(app, "router") and hasattr(app, "app") and id(app) not in seen:
        seen.add(id(app))
        app = app.app
    router = getattr(app, "router", None)
    if router is None or not hasattr(router, "routes"):
        return []
    raw_path = path.partition("?")[0]
    scope = {"type": "websocket", "path": raw_path, "root_path": "", "headers": []}
    found = []
    seen_routes = []

    def walk(routes, scope, prefix):
        for route in routes:
            match, child = route.matches(scope)
            if isinstance(route, WebSocketRoute):
                found.append(prefix + route.path)
                seen_routes.append(route)
                if match == Match.FULL:
                    return True
            elif isinstance(route, Mount) and match == Match.FULL:
                inner = {**scope, **child}
                if walk(getattr(route, "routes", []) or [], inner, prefix + route.path):
                    return True
        return False

    if not walk(router.routes, scope, ""):
        routes = ", ".join(found) or "none"
        raise Fail(
            "path",
            f"--path {path}: no WebSocket route of the app matches it (its WebSocket routes: "
            f"{routes})",
        )
    return seen_routes


def main():
    global _proto_in, _proto_out
    # The protocol keeps its own copies of stdin and stdout; the app's prints go to stderr and
    # its reads get nothing.
    _proto_in = os.dup(0)
    _proto_out = os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdout = sys.stderr
    commands = LineReader(_proto_in)
    driver = Driver()
    while True:
        msg = driver.wait_command(commands)
        if msg is None or msg["op"] == "quit":
            try:
                driver.quit()
            finally:
                send({"ev": "bye"})
            return
        try:
            if msg["op"] == "load":
                driver.load(msg)
            elif msg["op"] == "case":
                driver.run_case(msg, commands)
        except Fail as fail:
            send({"ev": "error", "kind": fail.kind, "message": fail.message, **fail.extra})
            return


if __name__ == "__main__":
    main()
