"""What several commands share: ``--seeds`` after a command's name, and a value given as an
argument, on stdin (``-``) or in a file (``--file``)."""
from __future__ import annotations

from typing import Any, BinaryIO, Callable

import click

from .output import parse_value

#: A value read from stdin or a file may be this many times the ring's ``max_value_bytes``
#: as text: JSON text is longer than the msgpack it encodes to (the exact limit is checked
#: on the encoded value).
MAX_TEXT_RATIO = 4


def split_seeds(seeds: str) -> list[str]:
    """``host:port,host:port`` as a list, blanks dropped."""
    return [s.strip() for s in seeds.split(",") if s.strip()]


def seeds_here(command: Callable) -> Callable:
    """``--seeds`` on a command too, so it may come after the command's name as well as
    before it (``sdht status --seeds X`` as ``sdht --seeds X status``); the later one wins."""
    def remember(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value:
            ctx.ensure_object(dict)["seeds"] = split_seeds(value)
    return click.option("--seeds", default=None, metavar="HOST:PORT[,...]", expose_value=False,
                        callback=remember,
                        help="Nodes to learn the ring from (also accepted before the "
                             "command).")(command)


def read_bounded(source: BinaryIO, max_value_bytes: int, what: str) -> bytes:
    """Read a value from ``source``, refusing past ``MAX_TEXT_RATIO · max_value_bytes``.

    :raises click.ClickException: when there is more.
    """
    limit = MAX_TEXT_RATIO * max_value_bytes
    data = source.read(limit + 1)
    if len(data) > limit:
        raise click.ClickException(f"the value from {what} is over {limit:,} bytes; the ring "
                                   f"stores values of at most {max_value_bytes:,} bytes")
    return data


def value_of(value: str | None, path: str | None, raw: bool, max_value_bytes: int) -> Any:
    """The value ``sdht set`` stores: VALUE, or stdin's content when VALUE is ``-``, or the
    file's at ``path``, exactly (a trailing newline included). Text is JSON when it parses
    (unless ``raw``), else a string; content that is not UTF-8 is bytes.

    :raises click.UsageError: unless exactly one of VALUE and ``path`` is given.
    """
    if value is None and path is None:
        raise click.UsageError("Missing argument 'VALUE' ('-' reads stdin; or --file PATH)")
    if value is not None and path is not None:
        raise click.UsageError("give VALUE or --file PATH, not both")
    if value is not None and value != "-":
        return parse_value(value, raw)
    if path is not None:
        with open(path, "rb") as f:
            data = read_bounded(f, max_value_bytes, path)
    else:
        data = read_bounded(click.get_binary_stream("stdin"), max_value_bytes, "stdin")
    try:
        return parse_value(data.decode("utf-8"), raw)
    except UnicodeDecodeError:
        return data
