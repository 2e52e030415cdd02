"""How a time is taken: worker processes, interleaved turns, rounds, medians and ratios within rounds.

Processes
---------
Every measurement runs in a fresh worker process that keeps one numeric
library busy, so no thread pool, allocator or cache state of an earlier
measurement (or of another library) is left in it. :class:`Runner` starts the
workers of a script in one of two ways:

* forked from a server (``SCRIPT --server GROUP``) that has imported one group
  of libraries and computes nothing: a worker starts like a new interpreter
  that has just imported its library, without paying the import again (about
  2 s for torch);
* ``spawn_each``: a new interpreter per worker (``SCRIPT --worker CONTENDER
  CASE... --connect ADDRESS``).

A script that uses :class:`Runner` answers those two command lines with
:func:`run_fork_server` and :func:`serve_case`. A worker builds its step
function (``build(contender, *case)``), runs one warm-up iteration, then
connects back to the parent over a Unix socket and times iterations on
request; messages are JSON, never pickles.

Turns and rounds
----------------
:func:`interleaved_round` times the contenders of one case in interleaved turns
(A B C A B C ...), so that their timed iterations are as close in time as they
can be and the machine's drift hits all of them alike. A turn runs two
iterations and keeps the second: the first warms the caches the other
contenders just used, so what is timed is a warm iteration, as in a training
loop. Before each turn the parent pauses ``gap`` seconds so that the previous
worker's idle BLAS/OpenMP threads stop spinning. :class:`Rounds` keeps each
round's median per contender and the ratios computed within the round
(contenders timed seconds apart see the same conditions); a script rotates
the order of the contenders from round to round with :func:`rotated`.

Scripts whose workers time themselves (``bench_gpu.py``, ``lm_vs_torch.py``)
start one process per measurement with :func:`run_json` and rotate the order
the same way.

Threads
-------
By default every library keeps its own thread count (every core). A script
that takes ``--threads N`` starts its workers (and their servers) with
:func:`thread_environment`'s variables: ``OPENBLAS_NUM_THREADS`` and
``OMP_NUM_THREADS`` set to N, ``BENCH_THREADS=N`` telling the worker what it
was asked for, and for JAX (N = 1 only: XLA's CPU client has no switch for
another count) ``XLA_FLAGS`` with :data:`XLA_ONE_THREAD`. In the worker,
:func:`serve_case` calls :func:`limit_threads` after building the step (torch:
``set_num_threads(N)`` and ``set_num_interop_threads(N)``; a fork server sets
the inter-op count before it forks, since torch takes it only once and
before any work), then after the warm-up reads what the libraries it has
loaded say (:func:`thread_report`) and refuses to be timed where a count
differs from N (:func:`thread_problems`). The parent keeps every worker's
report (:attr:`Runner.thread_reports`) for the script to print.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Client, Listener

# On some processors this workplace sets these for older OpenBLAS builds (which compute wrong
# results or crash there); they slow down a current NumPy. Removed together, for NumPy workers only.
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def environment(strip_openblas=False, **extra):
    """This process's environment for a worker: OpenBLAS's overrides removed if asked, ``extra`` added."""
    env = dict(os.environ)
    if strip_openblas:
        for var in OPENBLAS_VARS:
            env.pop(var, None)
    env.update(extra)
    return env


# ---------------------------------------------------------------- thread counts

#: The variables that set NumPy's OpenBLAS and the OpenMP runtimes (torch's, oneDNN's) to N threads.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
#: The count a worker was asked for (unset: each library's default); read by limit_threads and thread_problems.
ASKED_VARIABLE = "BENCH_THREADS"
#: What XLA_FLAGS gets for a one-thread JAX worker (the setting JAX's issues 743 and 1539 give). Only the first
#: flag acts: XLA's parser of XLA_FLAGS stops at the first word without a leading "-", so the second is inert
#: (kept as the issue states it). Whether XLA:CPU then runs on one thread is not checked by any library call:
#: the worker's report shows its OS threads.
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
#: The libraries a worker group keeps busy, as thread_environment takes them.
THREAD_LIBRARIES = ("numpy", "torch", "jax")


def thread_setting(threads, jax=False):
    """One line for a table's header: the thread count every worker ran with (``threads`` None: the defaults);
    ``jax``: whether JAX workers ran."""
    if threads is None:
        return ("threads: each library's default (NumPy's OpenBLAS, torch's OpenMP/MKL/oneDNN"
                + (" and XLA" if jax else "") + ": every core)")
    return (f"threads: {threads} per worker (--threads {threads}): OPENBLAS_NUM_THREADS={threads}, "
            f"OMP_NUM_THREADS={threads}; torch.set_num_threads({threads}), set_num_interop_threads({threads})"
            + (f"; JAX: XLA_FLAGS={XLA_ONE_THREAD!r}" if jax and threads == 1 else ""))


def jax_threads_problem(threads):
    """Why JAX cannot run with ``threads`` threads (None where it can: the default or 1)."""
    if threads is None or threads == 1:
        return None
    return (f"--threads {threads}: XLA's CPU client takes no thread count, only one thread "
            f"(XLA_FLAGS={XLA_ONE_THREAD!r}) or its default of one per core")


def thread_environment(threads, library):
    """The variables that give a worker of ``library`` (``"numpy"``, ``"torch"`` or ``"jax"``) ``threads`` threads.

    Returns ``{}`` for ``threads`` None (each library's default). Raises
    ``ValueError`` for a library not in :data:`THREAD_LIBRARIES`, a count that
    is not an int >= 1, and JAX with a count other than 1
    (:func:`jax_threads_problem`).
    """
    if library not in THREAD_LIBRARIES:
        raise ValueError(f"library must be one of {THREAD_LIBRARIES}; got {library!r}")
    if threads is None:
        return {}
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an int >= 1 or None (the defaults); got {threads!r}")
    if library == "jax" and jax_threads_problem(threads):
        raise ValueError(jax_threads_problem(threads))
    env = {var: str(threads) for var in THREAD_VARIABLES}
    env[ASKED_VARIABLE] = str(threads)
    if library == "jax":
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_ONE_THREAD}".strip()
    return env


def asked_threads():
    """The count this worker was asked for (``BENCH_THREADS``), or None for the libraries' defaults."""
    text = os.environ.get(ASKED_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ASKED_VARIABLE} is {text!r}; expected an int >= 1")
    return int(text)


def limit_threads(server=False):
    """Give the libraries this process has imported the count it was asked for; nothing where none was asked.

    NumPy's OpenBLAS and the OpenMP runtimes read :data:`THREAD_VARIABLES`
    when they load, so only torch is told here: ``set_num_interop_threads``
    (taken once, before any work: a fork server sets it before forking and its
    workers inherit it) and, in a worker (``server`` False),
    ``set_num_threads`` (which may start a thread pool, so not in a server).
    """
    threads = asked_threads()
    torch = sys.modules.get("torch")
    if threads is None or torch is None:
        return
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # set already (by the fork server): thread_problems checks the count
        pass
    if not server:
        torch.set_num_threads(threads)


def thread_report():
    """The thread counts of the libraries this process has loaded, as they say them, and its OS threads.

    Keys (each where its library is loaded): ``openblas`` (NumPy's OpenBLAS),
    ``xseq_lanes`` (the most lanes an xseq loop may get now), ``torch_intra``
    and ``torch_interop``, ``xla_flags`` (JAX); ``os_threads`` (Linux: the
    process's threads now), ``asked`` (:func:`asked_threads`).
    """
    import ctypes

    from .report import numpy_openblas_call

    found = {"asked": asked_threads()}
    np = sys.modules.get("numpy")
    if np is not None:
        found["openblas"] = numpy_openblas_call(np, "get_num_threads", ctypes.c_int)
    if "xseq" in sys.modules:
        import xseq

        found["xseq_lanes"] = xseq.cpu_runtime().lane_limit()[0]
    torch = sys.modules.get("torch")
    if torch is not None:
        found["torch_intra"] = torch.get_num_threads()
        found["torch_interop"] = torch.get_num_interop_threads()
    if "jax" in sys.modules:
        found["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    try:
        found["os_threads"] = len(os.listdir("/proc/self/task"))
    except OSError:
        pass
    return found


def thread_problems(found):
    """What in a :func:`thread_report` differs from the count asked for; ``[]`` where nothing (or none was asked)."""
    threads = found.get("asked")
    if threads is None:
        return []
    problems = [f"{name} is {found[name]}" if found[name] is not None else
                f"the {name} thread count cannot be read here (NumPy's OpenBLAS not found among its libraries)"
                for name in ("openblas", "torch_intra", "torch_interop") if name in found and found[name] != threads]
    if "xseq_lanes" in found and found["xseq_lanes"] > threads:
        problems.append(f"xseq_lanes is {found['xseq_lanes']}")
    if "xla_flags" in found and XLA_ONE_THREAD not in found["xla_flags"]:
        problems.append(f"XLA_FLAGS is {found['xla_flags']!r}, without {XLA_ONE_THREAD!r}")
    return [f"asked for {threads} thread(s) ({ASKED_VARIABLE}), but {p}" for p in problems]


def describe_threads(found):
    """A :func:`thread_report` in words, e.g. ``OpenBLAS 1, xseq lanes <= 1, OS threads 1``."""
    names = (("openblas", "OpenBLAS {}"), ("xseq_lanes", "xseq lanes <= {}"), ("torch_intra", "torch intra-op {}"),
             ("torch_interop", "inter-op {}"), ("xla_flags", "XLA_FLAGS {!r}"), ("os_threads", "OS threads {}"))
    return ", ".join(text.format(found[key]) for key, text in names if key in found)


def rotated(items, round_):
    """``items`` starting at position ``round_ % len(items)``: each goes first in turn, round after round."""
    items = list(items)
    k = round_ % len(items)
    return items[k:] + items[:k]


class WorkerFailed(RuntimeError):
    """A worker process exited with an error; the message holds its command and output."""


def run_json(script, argv, env=None, cwd=None):
    """Run ``python SCRIPT ARGV...`` to the end; returns the JSON object on the last line of its output."""
    cmd = [sys.executable, str(script), *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        raise WorkerFailed(f"{' '.join(cmd[1:])} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise WorkerFailed(f"{' '.join(cmd[1:])} printed nothing; expected a JSON line\n{done.stderr}")
    return json.loads(lines[-1])


def time_iterations(step, iters):
    """``iters`` timed calls of ``step``; their times in milliseconds."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


# ---------------------------------------------------------------- worker side


def serve_case(build, contender, case, address):
    """A worker: build the step, run one warm-up iteration, then time iterations on request.

    Connects to the parent at ``address`` and answers ``{"iters": k}`` with the
    times of k iterations, until ``{"quit": true}`` or the connection closes.
    Returns the process's exit status.
    """
    with Client(address, family="AF_UNIX") as conn:
        try:
            step = build(contender, *case)
            limit_threads()
            step()  # warm-up
            threads = thread_report()
            problems = thread_problems(threads)
            if problems:
                raise RuntimeError(f"{contender}'s worker: " + "; ".join(problems))
        except BaseException:
            import traceback

            conn.send_bytes(json.dumps({"error": traceback.format_exc()}).encode())
            return 1
        conn.send_bytes(json.dumps({"ready": os.getpid(), "threads": threads}).encode())
        while True:
            try:
                request = json.loads(conn.recv_bytes())
            except EOFError:
                return 0
            if request.get("quit"):
                return 0
            conn.send_bytes(json.dumps({"ms": time_iterations(step, int(request["iters"]))}).encode())


def run_worker(build, contender, case, connect=None, iters=3, profile=False):
    """``--worker``: serve the parent at ``connect`` (:func:`serve_case`), or, run by hand, build ``case``, run one
    warm-up iteration and time ``iters`` more (printed as JSON), or with ``profile`` run them under cProfile and
    print the top functions. Returns the process's exit status."""
    if connect:
        return serve_case(build, contender, case, connect)
    step = build(contender, *case)
    step()
    if not profile:
        times = time_iterations(step, iters)
        print(json.dumps({"ms": statistics.median(times), "all_ms": times}), flush=True)
        return 0
    import cProfile
    import pstats

    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(iters):
        step()
    prof.disable()
    ms = (time.perf_counter() - t0) / iters * 1e3
    print(f"{contender} {' '.join(case)}: {ms:.2f} ms/iteration under cProfile")
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    return 0


def run_fork_server(build, preload):
    """Import one group's libraries (``preload()``), then fork a fresh worker for every request on stdin.

    A request is a JSON list ``[contender, case, address]``; the forked child
    runs :func:`serve_case`; the server answers with the child's pid and reaps
    children as they exit. The server itself never computes anything; where a
    thread count was asked for, it sets torch's inter-op count
    (:func:`limit_threads`) before forking.
    """
    preload()
    limit_threads(server=True)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        contender, case, address = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = serve_case(build, contender, case, address)
            finally:
                os._exit(code)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        while True:  # reap the workers that have finished
            try:
                done, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if done == 0:
                break
    return 0


# ---------------------------------------------------------------- parent side


class Runner:
    """Starts a script's worker processes: forked from a per-group server, or (``spawn_each``) new interpreters.

    Parameters
    ----------
    script : path of the script whose ``--server`` and ``--worker`` command lines start the processes
    group_of : callable, contender -> the name of the server that forks its workers
    env_of : callable, contender -> the environment of its worker (and of its group's server)
    spawn_each : bool
        Start every worker as a new interpreter (always where ``os.fork`` is missing).
    cwd : working directory of the processes

    Attributes
    ----------
    thread_reports : dict
        contender -> the distinct :func:`thread_report` dicts its workers sent after their warm-up.
    """

    def __init__(self, script, group_of, env_of, spawn_each=False, cwd=None):
        self.script, self.group_of, self.env_of, self.cwd = str(script), group_of, env_of, cwd
        self.spawn_each = spawn_each or not hasattr(os, "fork")
        self.thread_reports = {}
        self.servers = {}
        self.procs = []
        self.tmp = tempfile.TemporaryDirectory(prefix="bench_")
        self.address = os.path.join(self.tmp.name, "parent.sock")
        self.listener = Listener(self.address, family="AF_UNIX")

    def start_worker(self, contender, case):
        """A connection to a new worker of ``contender`` for ``case`` (a list of strings), once it is warm."""
        if self.spawn_each:
            cmd = [sys.executable, self.script, "--worker", contender, *case, "--connect", self.address]
            self.procs.append(subprocess.Popen(cmd, env=self.env_of(contender), cwd=self.cwd))
        else:
            group = self.group_of(contender)
            server = self._server(group, contender)
            server.stdin.write(json.dumps([contender, list(case), self.address]) + "\n")
            server.stdin.flush()
            if not server.stdout.readline():
                raise WorkerFailed(f"the {group} server exited (exit {server.wait()})")
        conn = self.listener.accept()
        hello = json.loads(conn.recv_bytes())
        if "error" in hello:
            raise WorkerFailed(f"{contender} {' '.join(case)} failed:\n{hello['error']}")
        seen = self.thread_reports.setdefault(contender, [])
        if hello.get("threads") not in seen:
            seen.append(hello.get("threads"))
        return conn

    def thread_lines(self):
        """One line per contender: the thread counts its workers reported (:func:`describe_threads`)."""
        return [f"{contender}: " + "; ".join(describe_threads(found) for found in reports if found)
                for contender, reports in self.thread_reports.items()]

    def _server(self, group, contender):
        if group not in self.servers:
            cmd = [sys.executable, self.script, "--server", group]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    env=self.env_of(contender), cwd=self.cwd)
            if proc.stdout.readline().strip() != "ready":
                raise WorkerFailed(f"the {group} server failed to start (exit {proc.wait()})")
            self.servers[group] = proc
        return self.servers[group]

    def close(self):
        for proc in self.servers.values():
            proc.stdin.close()
            proc.wait()
            proc.stdout.close()
        for proc in self.procs:
            proc.wait()
        self.servers, self.procs = {}, []
        self.listener.close()
        self.tmp.cleanup()


class LiveCase:
    """One round of one case: a fresh worker per contender, all alive at once, timed in turns."""

    def __init__(self, runner, case, contenders):
        self.conns = {}
        try:
            for contender in contenders:
                self.conns[contender] = runner.start_worker(contender, case)
        except BaseException:
            self.close()
            raise

    def time(self, contender, iters):
        """The times (ms) of ``iters`` iterations of ``contender``, run now."""
        conn = self.conns[contender]
        conn.send_bytes(json.dumps({"iters": iters}).encode())
        return json.loads(conn.recv_bytes())["ms"]

    def close(self):
        for conn in self.conns.values():
            try:
                conn.send_bytes(json.dumps({"quit": True}).encode())
            except OSError:
                pass
            conn.close()
        self.conns = {}


def interleaved_round(runner, case, order, iters, gap, before_turn=None):
    """Time the contenders of ``case`` in ``order``, in interleaved turns, until each has ``iters`` iterations.

    Each turn runs two iterations and keeps the second (warm). ``before_turn``,
    if given, is called before each turn (e.g. :meth:`IdleWaiter.wait`).

    Returns
    -------
    dict
        ``contender -> median`` of its timed iterations, milliseconds.
    """
    live = LiveCase(runner, case, order)
    turns = {contender: [] for contender in order}
    try:
        for _ in range(iters):
            for contender in order:
                if before_turn is not None:
                    before_turn()
                time.sleep(gap)
                turns[contender].append(live.time(contender, 2)[-1])
    finally:
        live.close()
    return {contender: statistics.median(ms) for contender, ms in turns.items()}


class Rounds:
    """Each round's median time per (contender, case) and the ratios computed within each round.

    Parameters
    ----------
    ratio_pairs : sequence of (numerator, denominator) contender names, e.g. ``[("xseq", "torch")]``
    """

    def __init__(self, ratio_pairs):
        self.ratio_pairs = list(ratio_pairs)
        self.times = {}  # (contender, case) -> [ms per round]
        self.ratios = {}  # (case, numerator, denominator) -> [ratio per round]

    def add(self, case, medians):
        """Record one round of ``case``: ``medians`` maps contender -> ms."""
        for contender, ms in medians.items():
            self.times.setdefault((contender, case), []).append(ms)
        for a, b in self.ratio_pairs:
            if a in medians and b in medians:
                self.ratios.setdefault((case, a, b), []).append(medians[a] / medians[b])

    def median(self, contender, case):
        """Median over the rounds, or None where the contender did not run."""
        ms = self.times.get((contender, case))
        return statistics.median(ms) if ms else None

    def ratio(self, case, a, b):
        """Median over the rounds of the per-round ratio ``a / b``, or None."""
        r = self.ratios.get((case, a, b))
        return statistics.median(r) if r else None

    def ratio_range(self, case, a, b):
        r = self.ratios[(case, a, b)]
        return min(r), max(r)

    def widest_spread(self):
        """``(spread, (contender, case))``: the largest (max - min) / median of one contender's times."""
        return max(((max(v) - min(v)) / statistics.median(v), key) for key, v in self.times.items())


# ---------------------------------------------------------------- the machine's load


def cpu_idle(seconds):
    """Fraction of CPU time idle over the next ``seconds`` (Linux /proc/stat), or None."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(n) for n in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]

    try:
        t1, i1 = sample()
        time.sleep(seconds)
        t2, i2 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (i2 - i1) / max(t2 - t1, 1)


class IdleWaiter:
    """Before each measurement, wait (at most ``max_wait`` s) until other processes leave the CPUs idle.

    Attributes
    ----------
    waited : float
        Seconds waited in all.
    busy : int
        Measurements that started on a busy machine (the wait ran out).
    turns : int
        Measurements waited for.
    """

    IDLE = 0.85  # fraction of CPU time idle over 0.25 s

    def __init__(self, max_wait):
        self.max_wait = max_wait
        self.waited, self.busy, self.turns = 0.0, 0, 0

    def wait(self):
        self.turns += 1
        t0 = time.perf_counter()
        while True:
            idle = cpu_idle(0.25)
            if idle is None or idle >= self.IDLE:
                self.waited += time.perf_counter() - t0
                return
            if time.perf_counter() - t0 > self.max_wait:
                self.waited += time.perf_counter() - t0
                self.busy += 1
                return
            time.sleep(1.0)


def load_average():
    """The 1-minute load average, or None where the system does not tell."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
