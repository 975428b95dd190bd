"""Command line: run the exporter, or `check` once at a terminal.

    defender-connectivity-exporter [--config.file F] [--web.listen-address :10100] ...
    defender-connectivity-exporter check [--config.file F] [--group G ...] [--format text|json] [--routes]
    defender-connectivity-exporter host [--textfile DIR] [--config.file F]

Exit codes: 0 fine, 1 a check failed (host: a collector failed), 2 bad usage or configuration,
3 (host) the textfile could not be written, 141 (128 + SIGPIPE) the reader of the output went
away (`check | head -1`), as for any Unix tool.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import os
import signal
import sys

from . import __version__, signals
from .config import ConfigError, load_config
from .webconfig import load_web_config
from .logs import LEVELS, setup
from .wording import http_url, plural

DEFAULT_LISTEN = ":10100"
PROG = "defender-connectivity-exporter"
# The subcommands: the first word on the command line; without one, the exporter serves.
COMMANDS = {
    "check": "probe every target once, print the results and the MAPS verdict",
    "host": "run the host-side collectors once, for a node exporter's textfile collector",
}

log = logging.getLogger("exporter")


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    commands: tuple[str, ...] = ()  # the words this parser's program takes as a first argument

    def error(self, message: str):  # exit 2 with one line, as argparse does, but raise instead
        raise UsageError(f"{self.prog}: {message}{self._hint(message)}\nSee '{self.prog} --help'.")

    def _hint(self, message: str) -> str:
        """For an unknown word, what was probably meant."""
        prefix = "unrecognized arguments: "
        if not message.startswith(prefix):
            return ""
        word = message[len(prefix):].split()[0]
        if word.startswith("-"):
            options = [o for action in self._actions for o in action.option_strings]
            close = difflib.get_close_matches(word.split("=", 1)[0], options, n=1, cutoff=0.6)
            return f" (did you mean {close[0]}?)" if close else ""
        if not self.commands:
            return f" ({self.prog} takes no positional arguments)"
        close = difflib.get_close_matches(word, self.commands, n=1, cutoff=0.5)
        known = ", ".join(self.commands)
        return f" ({word!r} is not a command; did you mean {close[0]!r}?)" if close else \
            f" ({word!r} is not a command; commands: {known})"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config.file", dest="config_file", metavar="FILE",
                        help="YAML configuration (default: the built-in catalogue with defaults)")
    parser.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info")
    parser.add_argument("--log.format", dest="log_format", choices=("logfmt", "json"), default="logfmt")


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS)) + 2
    commands = "\n".join(f"  {name:{width}}{text}" for name, text in COMMANDS.items())
    parser = _Parser(
        prog=PROG,
        usage="%(prog)s [OPTIONS]            serve /metrics and the status page\n"
              + "".join(f"       %(prog)s {name} [OPTIONS]\n" for name in COMMANDS),
        description="Prometheus exporter: can Microsoft Defender Antivirus reach its cloud services?",
        epilog=f"commands:\n{commands}\n\n'%(prog)s COMMAND --help' shows the options of a command.\n"
               "Exit codes: 0 fine, 1 a check failed, 2 bad usage or configuration.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.commands = tuple(COMMANDS)
    _common(parser)
    parser.add_argument("--config.check", dest="config_check", action="store_true",
                        help="validate the configuration and exit (0 valid, 2 invalid)")
    parser.add_argument("--web.listen-address", dest="listen_address", default=DEFAULT_LISTEN,
                        metavar="[HOST]:PORT", help=f"address to serve on (default {DEFAULT_LISTEN})")
    parser.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                        help="exporter-toolkit web configuration (TLS, basic auth)")
    parser.add_argument("--event-loop", dest="event_loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                        help="auto: uvloop when installed (about 20%% less CPU per probe), else asyncio's own")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def build_check_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"{PROG} check",
                     description="Probe every target once, print the results and the MAPS verdict.",
                     epilog="Exit codes: 0 every check passed, 1 a probe failed or a MAPS verdict is invalid, "
                            "2 bad usage or configuration.")
    _common(parser)
    parser.add_argument("--group", action="append", default=[], metavar="G", help="only this group (repeatable)")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument("--routes", action="store_true",
                        help="print which proxy every route gives each target (PAC evaluated), without probing")
    return parser


def build_host_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=f"{PROG} host",
                     description="Run the host-side collectors (MpCmdRun, netsh, reg, Get-MpComputerStatus or "
                                 "mdatp) once and write their series for a node exporter's textfile collector.",
                     epilog="Exit codes: 0 written, every collector succeeded; 1 written, a collector failed; "
                            "2 bad usage or configuration; 3 the file could not be written.")
    _common(parser)
    parser.add_argument("--textfile", metavar="DIR",
                        help="write DIR/defender_connectivity.prom atomically (the textfile collector's "
                             "directory); without it the series go to standard output")
    return parser


def parse_listen_address(text: str) -> tuple[str | None, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--web.listen-address: expected [HOST]:PORT, got {text!r}")
    host = host.strip("[]") or None
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            code = _run(sys.argv[1:] if argv is None else argv)
        except SystemExit as exc:  # argparse's --help and --version
            code = exc.code if isinstance(exc.code, int) else 0
        sys.stdout.flush()  # here, not at exit, so a closed pipe is seen below
        return code
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """`check | head -1`: the reader has closed the pipe. Stop quietly with the status of a Unix
    tool that SIGPIPE ended (Python ignores SIGPIPE, so the write raised instead)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):  # nothing left to flush into the closed pipe at exit
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass
    return 128 + signal.SIGPIPE


def _run(argv: list[str]) -> int:
    try:
        if argv and argv[0] == "check":
            args = build_check_parser().parse_args(argv[1:])
            setup(args.log_level, args.log_format)
            from .check import run_check

            return run_check(args)
        if argv and argv[0] == "host":
            args = build_host_parser().parse_args(argv[1:])
            setup(args.log_level, args.log_format)
            from .hostside.textfile import run as run_host

            return run_host(args.config_file, args.textfile)
        args = build_parser().parse_args(argv)
        setup(args.log_level, args.log_format)
        config = load_config(args.config_file)
        web_config = load_web_config(args.web_config_file) if args.web_config_file else None
        if args.config_check:
            print(f"{config.source}: valid ({plural(len(config.jobs()), 'probe job')} in "
                  f"{plural(len(config.groups), 'group')})")
            if web_config is not None:
                print(f"{web_config.source}: valid ({web_config.summary()})")
            return 0
        host, port = parse_listen_address(args.listen_address)
        with asyncio.Runner(loop_factory=_loop_factory(args.event_loop)) as runner:
            return runner.run(_serve(config, web_config, args, host, port))
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _loop_factory(choice: str):
    """uvloop's event loop when asked for or (auto) installed; None: asyncio's own."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise UsageError("--event-loop uvloop: uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop


async def _serve(config, web_config, args, host: str | None, port: int) -> int:
    from .runtime import Exporter
    from .web import serve

    exporter = Exporter(config, config_path=args.config_file, web_config=web_config,
                        web_config_path=args.web_config_file)
    exporter.web_ssl_context = web_config.ssl_context() if web_config else None

    def listening() -> None:
        scheme = "https" if web_config and web_config.tls else "http"
        # No host: every address, IPv4 and IPv6, written as Prometheus writes it.
        log.info("listening on %s with %s from %s (event loop: %s)", http_url(scheme, host or "::", port),
                 plural(len(config.jobs()), "probe job"), config.source,
                 type(asyncio.get_running_loop()).__module__.split(".")[0])

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task] = set()  # keep a reference: the loop holds tasks only weakly

    def on_sighup() -> None:
        task = loop.create_task(exporter.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    signals.install(loop, stop.set, on_sighup)  # Windows: Ctrl+C / Ctrl+Break, reload by /-/reload
    try:
        await serve(exporter, host, port, stop, web_config=web_config, started=listening)
    except OSError as exc:
        print(f"error: cannot listen on {args.listen_address}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    return 0
