"""batchd's event loop: the instance lock, signals, inotify hints and timers, fed to `Batchd`.

One thread: a selector over the signal wakeup pipe (signal.set_wakeup_fd; the handlers
only record the signal) and the Watcher's pipe (inotify hints for `ready/` and
`control/inbox/`), with timers from batchd's heap. Idle, it sleeps until the nearest
timer. Each turn hands what arrived to the `Batchd` handlers, then publishes.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import sys

from supervisor.batchd.publish import previous_restarts
from supervisor.batchd.supervise import (
    EXIT_FAILURE,
    EXIT_OK,
    RESCAN_INTERVAL,
    Batchd,
    take_early_signals,
)
from supervisor.batchd.workers import CHILD_SIGNALS, preload_workers
from supervisor.runtime import Watcher
from supervisor.state.atomic import clean_tmp, ensure_dir
from supervisor.state.instance import acquire

__all__ = ["run"]


def run(d: Batchd) -> int:
    """Take the instance lock, recover in order, supervise until stopped; the exit code."""
    layout = d.layout
    try:
        ensure_dir(layout.root)
        inst = acquire(layout, config=d.cfg.source)
    except OSError as exc:
        print(f"batchd: cannot use state dir {layout.root}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(inst, int):
        print(f"batchd: another batchd (pid {inst}) holds the state dir {layout.root}",
              file=sys.stderr)
        return EXIT_FAILURE
    try:
        try:
            for folder in layout.all_dirs():
                ensure_dir(folder)
            for folder in (layout.root, layout.control_inbox):
                clean_tmp(folder, 60.0)
            d.gc_replies()
            d.publisher.restarts_before = previous_restarts(layout, d.log)
        except OSError as exc:
            print(f"batchd: cannot prepare state dir {layout.root}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        return _run_locked(d)
    finally:
        d.workers.kill_all()
        inst.release()


def _run_locked(d: Batchd) -> int:
    d.log.info("batchd starting", state_dir=str(d.layout.root), config=d.cfg.source,
               systemd=d.notifier.enabled)
    preload_workers(d.log)
    sig_r, sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def on_signal(signum: int, frame: object) -> None:
        d.signals.append(signum)

    old_handlers = {s: signal.signal(s, on_signal) for s in CHILD_SIGNALS}
    old_fd = signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)
    d.signals.extend(take_early_signals())      # arrived while we were starting
    watcher = Watcher([d.layout.ready_dir, d.layout.control_inbox],
                      rescan_interval=RESCAN_INTERVAL).start()
    sel = selectors.DefaultSelector()
    sel.register(sig_r, selectors.EVENT_READ, "signal")
    sel.register(watcher.fileno(), selectors.EVENT_READ, "watch")
    try:
        if d.notifier.watchdog_interval:
            d.timers.set("watchdog", d.clock.monotonic())
        d.timers.set("rescan", d.clock.monotonic() + RESCAN_INTERVAL)
        d.begin()
        d.publish()
        _loop(d, sel, sig_r, watcher)
        d.timers.cancel("publish")               # the last word: not left to a retry
        d.publish()
    finally:
        sel.close()
        watcher.close()
        signal.set_wakeup_fd(old_fd)
        for s, h in old_handlers.items():
            signal.signal(s, h)
        os.close(sig_r)
        os.close(sig_w)
    code = d.exit_code if d.exit_code is not None else EXIT_OK
    d.log.info("batchd stopped", exit_code=code)
    d.notifier.close()
    return code


def _loop(d: Batchd, sel: selectors.BaseSelector, sig_r: int, watcher: Watcher) -> None:
    while not d.done:
        due = d.timers.next_due()
        timeout = None if due is None else max(0.0, due - d.clock.monotonic())
        for key, _ in sel.select(timeout):
            if key.data == "signal":
                _drain(sig_r)
            elif watcher.wait(0):
                d.scan()
        while d.signals:
            d.handle_signal(d.signals.pop(0))
        for tkey in d.timers.pop_due(d.clock.monotonic()):
            d.timer_fired(tkey)
        d.publish()
        d.arm_reply_gc()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        return
    except OSError as exc:
        if exc.errno != errno.EAGAIN:
            raise
