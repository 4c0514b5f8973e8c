"""How a run ends when it cannot go on: one line and exit status 1, never a traceback, wherever Ctrl-C lands.

- Ctrl-C: "Interrupted.", from the first import on. The interrupt is Interrupted,
  a SystemExit, so that it ends the program quietly even while a module is still
  being imported; every `finally` and context manager on the way out still runs.
  Inside an object's `__del__`, which is where a syft 0.2.6 pointer asks its client
  to delete what it points to, Python would only print "Exception ignored", go on,
  and leave that client's connection with half a message written: so while a
  `__del__` runs, the interrupt waits, and comes again a moment later, once the
  finalizer has returned; and so it does inside syft's own code, which can lose an
  exception or leave an object half built (safe_to_raise). Should anything else
  swallow it, it comes again until the program has ended.
- A failure that the run foresees (a client lost or refusing, a message this side
  refuses, an average that cannot be made, a model saved elsewhere): "error: ...".

What the run has finished stays (the metrics file is written after every epoch);
its context managers stop every client process it started on the way out.
"""
import os
import signal
import sys

from fl_tutorial.core.files import Rescued
from fl_tutorial.privacy.aggregation import AggregationError
from fl_tutorial.pysyft.owners import ClientError
from fl_tutorial.pysyft.wire import Refused

FORESEEN = (ClientError, AggregationError, Refused, Rescued)
AGAIN_AFTER_S = 0.01  # an interrupt that could not be raised where it landed comes again this much later


class Interrupted(SystemExit):
    """Ctrl-C: the program ends with "Interrupted." and exit status 1."""

    def __init__(self):
        super().__init__("Interrupted.")


def run(main, *args):
    """main(*args) as a program: Ctrl-C and the foreseen failures end it in one line, exit status 1."""
    catch_interrupts()
    _state["running"] = True
    try:
        return main(*args)
    except KeyboardInterrupt:  # one that came another way (a test's, a library's own)
        sys.exit("Interrupted.")
    except FORESEEN as error:
        sys.exit("error: {}".format(error))
    finally:
        _state["running"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)  # the program is ending: no interrupt comes again


_state = {"running": False}  # True while run() runs main: an interrupt then comes again until main has ended


def catch_interrupts():
    """From now on Ctrl-C raises Interrupted, never in a finalizer; unless Ctrl-C is ignored (a background job)."""
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, interrupt):
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGALRM, interrupt)  # the interrupt again, once a finalizer has returned


def interrupt(signum, frame):
    """Ctrl-C: Interrupted, where raising it is safe (see safe_to_raise); elsewhere it comes again (SIGALRM)
    AGAIN_AFTER_S later.

    Inside run(), it also comes again every AGAIN_AFTER_S until main has ended, unless it is already on its
    way out (its finally clauses and context managers then run undisturbed). A timer signal, not a thread: a
    handler may run while the main thread holds threading's own locks.
    """
    if signum == signal.SIGINT and _state["running"]:
        signal.setitimer(signal.ITIMER_REAL, AGAIN_AFTER_S, AGAIN_AFTER_S)
    if signum == signal.SIGALRM and on_its_way_out():
        return
    if not safe_to_raise(frame):
        if not _state["running"]:
            signal.setitimer(signal.ITIMER_REAL, AGAIN_AFTER_S)
        return
    raise Interrupted()


def safe_to_raise(frame):
    """Not in a finalizer, and not inside syft 0.2.6, unless it waits on the wire.

    Inside syft an exception can be lost or turned into another: its hooked tensor methods catch
    `BaseException` and retry the call (the run then trained on), its serializer has bare `except:` clauses,
    and a pointer half built is left to a `__del__` that fails at exit. Between syft's calls, every object
    it keeps is whole. A blocking read of a websocket reply is the exception: the run's clients abandon
    that connection on the way out (remote/), and a client may take minutes to answer.
    """
    if in_finalizer(frame):
        return False
    return not in_package(frame, "syft") or in_package(frame, "websocket", innermost_only=True)


def in_package(frame, name, innermost_only=False):
    """True if `frame` (or, unless innermost_only, a frame that called it) runs code of the imported package."""
    module = sys.modules.get(name)
    if module is None or not getattr(module, "__file__", None):
        return False
    folder = os.path.dirname(module.__file__) + os.sep
    while frame is not None:
        if frame.f_code.co_filename.startswith(folder):
            return True
        if innermost_only:
            return False
        frame = frame.f_back
    return False


def in_finalizer(frame):
    """True if `frame`, or a frame that called it, is an object's __del__."""
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def on_its_way_out():
    """True while an interrupt propagates: it, or an exception raised while handling it, is being handled."""
    error = sys.exc_info()[1]
    while error is not None:
        if isinstance(error, (Interrupted, KeyboardInterrupt)):
            return True
        error = error.__context__
    return False
