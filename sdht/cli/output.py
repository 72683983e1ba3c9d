"""What the command line prints: progress lines, values, reports and the status table."""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import click

from ..status import jsonable


class Progress:
    """A one-line progress display on stderr: count, rate and, when a total is known, ETA.

    On a terminal the line redraws in place (10 times a second at most); otherwise a line is
    printed every few seconds, so logs stay short.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "records") -> None:
        self.label, self.total, self.unit = label, total, unit
        self.began = self.last = time.monotonic()
        self.done = 0
        self.tty = sys.stderr.isatty()

    def update(self, done: int) -> None:
        """Show that ``done`` items are finished."""
        self.done = done
        if self.total is not None and done > self.total:
            self.total = done  # the estimate was low
        now = time.monotonic()
        if now - self.last >= (0.1 if self.tty else 2.0):
            self.last = now
            self._show(final=False)

    def finish(self) -> None:
        """Print the final line."""
        self._show(final=True)

    def _show(self, final: bool) -> None:
        elapsed = max(time.monotonic() - self.began, 1e-6)
        rate = self.done / elapsed
        text = f"{self.label}: {self.done:,}"
        if self.total and not final:
            text += f" / ~{self.total:,} {self.unit} {min(100, 100 * self.done // self.total)}%"
        else:
            text += f" {self.unit}"
        text += f"  {rate:,.0f}/s"
        if final:
            text += f"  in {elapsed:.1f}s"
        elif self.total and rate > 0:
            text += f"  ETA {max(0.0, (self.total - self.done) / rate):.0f}s"
        if self.tty:
            click.echo("\r\x1b[K" + text, err=True, nl=final)
        else:
            click.echo(text, err=True)


def parse_value(text: str, raw: bool) -> Any:
    """Return ``text`` parsed as JSON when it parses (and ``raw`` is false), else the text."""
    if raw:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text
    except RecursionError:
        raise click.BadParameter("the JSON value nests too deeply") from None


def show_value(value: Any) -> str:
    """Render a value for a terminal: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(jsonable(value))


def progress_callback(progress: Progress) -> Callable[..., None]:
    """Return a callback for the library's ``progress=``: ``(done)`` or ``(done, total)``."""
    def callback(*args: Any, **kwargs: Any) -> None:
        counts = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
        if len(counts) > 1:  # (done, total), as repair reports ranges
            progress.total = counts[1]
        if counts:
            progress.update(counts[0])
    return callback


def report_line(report: Any, skip: tuple[str, ...] = ()) -> str:
    """Render a report (a dataclass of counts) as ``name value, ...``, without ``skip``."""
    fields = getattr(report, "__dict__", None) or {}
    return ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in fields.items() if k not in ("node", "action", *skip))


def stored_line(key: str, acked: list[str], replicas: list[str], work: float) -> str:
    """What ``sdht set`` prints: the replicas that acknowledged the write (not the ones it was
    meant for), and those that had not when the write quorum was reached."""
    line = f"stored {key!r} on {', '.join(acked)} (work {work:g})"
    missing = [n for n in replicas if n not in acked]
    if missing:
        line += f"; not acknowledged by {', '.join(missing)} when the quorum was reached"
    return line


COLUMNS = ("NODE", "STATE", "SHARE", "RECORDS", "BYTES", "EPOCH", "REV", "MEAN ms", "ERR %",
           "HEARTBEAT", "RING")


def status_row(n: dict[str, Any]) -> tuple[str, ...]:
    """One row of the status table for one node of :func:`sdht.status.cluster_status`."""
    if not n["up"]:
        return (n["id"], "down", f"{100 * n['share']:.1f}%") + ("-",) * 7 + ("?",)
    beat = time.strftime("%H:%M:%S", time.localtime(n["heartbeat"])) if n["heartbeat"] else "-"
    return (n["id"], n["state"], f"{100 * n['share']:.1f}%", f"{n['records']:,}",
            f"{n['bytes']:,}", str(n["epoch"]), f"{n['revision']:,}",
            f"{n['mean_response_ms'] or 0:.2f}", f"{100 * (n['error_rate'] or 0):.2f}", beat,
            "ok" if n["agrees"] else "STALE")


def status_lines(state: dict[str, Any]) -> list[str]:
    """Render :func:`sdht.status.cluster_status` as an aligned table and a summary line."""
    rows = [COLUMNS] + [status_row(n) for n in state["nodes"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    up = sum(1 for n in state["nodes"] if n["up"])
    lines.append(f"{up} of {len(state['nodes'])} nodes up; ring epoch {state['epoch']}; "
                 + ("all nodes agree on the ring" if state["agree"] else
                    "some nodes hold an older ring"))
    return lines
