"""A pattern LP bound (PatternBound) searched in a worker process, beside the caller's own work.

The step objective bounds each layout's two families with two independent LPs (see layouts), each
single-threaded. Given threads ≥ 2, the planner searches one family's LP in a worker process, so both
bounds rise together instead of one after the other. The worker is a fresh interpreter running this
copy of the package's `remote.main`: not a fork (the solvers' thread pools do not survive one) nor a
multiprocessing spawn (which re-runs the caller's main script). Messages are pickles on its
stdin/stdout: the job, then better upper ends; back, every bound it proves. What it reports is proven by
the same PatternBound, so a slow or failed worker costs time, never validity.
"""
from __future__ import annotations

import pickle
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from .instance import Instance
from .patterns import PatternBound

STARTUP_S = 0.6  # starting and importing, measured here: a worker with less time than twice this is not started
REPORT_S = 0.25  # the worker reports (and reads new upper ends) at least this often
_BOOT = """import importlib.util, sys
spec = importlib.util.spec_from_file_location("hetero_sched", sys.argv[1], submodule_search_locations=[sys.argv[2]])
package = importlib.util.module_from_spec(spec)
sys.modules["hetero_sched"] = package
spec.loader.exec_module(package)
from hetero_sched.milp.remote import main
main()
"""  # the worker imports the caller's copy of the package, without touching sys.path


_largest_peak = [0]  # the largest peak RSS any closed worker of this process reported


def worker_peak_rss_bytes() -> int:
    """The largest peak resident memory a bound worker of this process reported (0 when none ran)."""
    return _largest_peak[0]


class RemoteBound:
    """PatternBound(inst, lower, upper) improved in a worker until `seconds` from now (or until it has
    nothing left to prove). `lo` is the best bound reported so far; `done` once the worker says it has
    finished, `failed` when it ended (or could not be reached) without saying so."""

    def __init__(self, inst: Instance, lower: float, upper: float, seconds: float):
        self.lo, self.done, self.failed = lower, False, False
        self.peak_rss_bytes = 0  # the worker's own high-water mark, as it last reported it
        package = Path(__file__).resolve().parents[1]  # this very copy of the package, wherever it lives
        # -P: the current directory is not put on sys.path (a stray numpy.py there cannot shadow numpy)
        self._proc = subprocess.Popen([sys.executable, "-P", "-c", _BOOT, str(package / "__init__.py"), str(package)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._outbox: queue.Queue = queue.Queue()  # written by a thread: the pipe blocks until the worker reads
        self._outbox.put((inst, lower, upper, time.time() + seconds))
        threading.Thread(target=self._write, daemon=True).start()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def exhausted(self) -> bool:
        return self.done or self.failed

    def poll(self) -> float:
        return self.lo

    def tighten(self, upper: float) -> None:
        """A better plan: nothing above `upper` needs proving."""
        self._outbox.put(upper)

    def close(self) -> float:
        """Stop the worker; the last bound it reported."""
        self._outbox.put(None)
        _largest_peak[0] = max(_largest_peak[0], self.peak_rss_bytes)
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        return self.lo

    def _write(self) -> None:
        try:
            while (message := self._outbox.get()) is not None:
                pickle.dump(message, self._proc.stdin)
                self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            self.failed = not self.done

    def _read(self) -> None:
        try:
            while True:
                lo, done, peak = pickle.load(self._proc.stdout)
                self.lo, self.done, self.peak_rss_bytes = max(self.lo, lo), done, max(self.peak_rss_bytes, peak)
        except (EOFError, OSError, ValueError, pickle.UnpicklingError):
            self.failed = not self.done  # the worker ended (or died): its last report stands


def _serve(read, write) -> None:
    """The worker: the job from `read`, bounds to `write` until the deadline or nothing is left."""
    inst, lower, upper, wall_deadline = pickle.load(read)
    deadline = time.monotonic() + (wall_deadline - time.time())
    uppers: queue.Queue = queue.Queue()
    threading.Thread(target=_forward, args=(read, uppers), daemon=True).start()
    search = PatternBound(inst, lower, upper, (), threads=1, first_step=None)
    while time.monotonic() < deadline and not search.exhausted:
        while not uppers.empty():
            upper = uppers.get()
            if upper is None:
                return  # the caller has gone
            search.tighten(upper)
        lo = search.improve(min(deadline, time.monotonic() + REPORT_S))
        pickle.dump((lo, search.exhausted, peak_rss_bytes()), write)
        write.flush()
    pickle.dump((search.lo, True, peak_rss_bytes()), write)
    write.flush()


def peak_rss_bytes() -> int:
    """This process's peak resident memory: Linux's VmHWM (getrusage's ru_maxrss also counts what a
    parent held when it forked), else ru_maxrss."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return 0  # no such measure here
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _forward(read, uppers: queue.Queue) -> None:
    try:
        while True:
            uppers.put(pickle.load(read))
    except (EOFError, OSError, ValueError, pickle.UnpicklingError):
        uppers.put(None)


def main() -> None:
    """Entry point of the worker process."""
    try:
        _serve(sys.stdin.buffer, sys.stdout.buffer)
    except (BrokenPipeError, OSError):
        pass  # the caller closed the pipes: nothing to report to
