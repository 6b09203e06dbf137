#!/usr/bin/env python3
"""Man pages generated from the CLI's own argparse parsers: roguewatch(1) and roguewatchd(8).

    python3 packaging/manpage.py roguewatch  > roguewatch.1
    python3 packaging/manpage.py roguewatchd > roguewatchd.8

roguewatch(1) walks ``roguewatch.cli.main.build_parser()``: every sub-command (and the sub-commands
of ``rules``), its usage, positional arguments and options with their help text. roguewatchd
builds its parser inside ``main()``; it is caught by letting ``main()`` run up to
``parse_args`` and stopping it there, so the page shows the parser the daemon really uses.
Options hidden with ``argparse.SUPPRESS`` stay hidden. Run with the interpreter roguewatch is
installed in (the build uses the package's virtual environment). ``SOURCE_DATE_EPOCH`` sets the
date in the header, for reproducible builds.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys

# --------------------------------------------------------------------------------------------
# the parsers


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def roguewatch_parser() -> argparse.ArgumentParser:
    from roguewatch.cli import main as cli

    return cli.build_parser()


def roguewatchd_parser() -> argparse.ArgumentParser:
    """The parser roguewatch.service.main() builds, caught at its parse_args()."""
    from roguewatch.runtime import service

    original = argparse.ArgumentParser.parse_args

    def catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Caught(self)

    argparse.ArgumentParser.parse_args = catch  # type: ignore[assignment]
    try:
        service.main([])
    except _Caught as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise RuntimeError("roguewatch.runtime.service.main() did not parse arguments")


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each sub-command, in the order --help lists them."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:  # an alias
                    continue
                seen.add(id(sub))
                out.append((name, helps.get(name, ""), sub))
    return out


def visible(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if a.help is not argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
    ]


def usage(parser: argparse.ArgumentParser) -> str:
    text = parser.format_usage().strip()
    text = re.sub(r"^usage:\s*", "", text)
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# roff


def esc(text: str) -> str:
    """Escape text for roff: backslashes, hyphens (as minus signs), leading dots/quotes."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        ("\\&" + line if line.startswith((".", "'")) else line) for line in text.split("\n")
    )


def option_label(action: argparse.Action) -> str:
    if action.option_strings:
        names = ", ".join(f"\\fB{esc(s)}\\fR" for s in action.option_strings)
        if action.nargs == 0:
            return names
        metavar = action.metavar or (
            "{" + ",".join(action.choices) + "}" if action.choices else action.dest.upper()
        )
        return f"{names} \\fI{esc(str(metavar))}\\fR"
    metavar = action.metavar or action.dest
    return f"\\fI{esc(str(metavar))}\\fR"


def option_help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    text = action.help or ""
    if "%(" in text:
        params = {**vars(action), "prog": parser.prog}
        params = {k: v for k, v in params.items() if v is not argparse.SUPPRESS}
        try:
            text = text % params
        except (KeyError, TypeError, ValueError):
            pass
    if action.choices and action.option_strings and "{" not in option_label(action):
        text += (" " if text else "") + "(one of: " + ", ".join(map(str, action.choices)) + ")"
    if (
        action.default not in (None, False, argparse.SUPPRESS)
        and action.nargs != 0
        and "default" not in text
    ):
        text += f" (default: {action.default})"
    return esc(text)


def options_block(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in visible(parser):
        lines += [".TP", option_label(action), option_help(action, parser) or "\\&"]
    return lines


def header(name: str, section: str, title: str) -> list[str]:
    from roguewatch import __version__

    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = (
        datetime.datetime.fromtimestamp(int(epoch), datetime.UTC)
        if epoch
        else datetime.datetime.now(datetime.UTC)
    )
    return [
        f'.\\" Generated by packaging/manpage.py from the argparse parser of {name}; do not edit.',
        f'.TH {name.upper()} {section} "{when:%Y-%m-%d}" "roguewatch {__version__}" "{title}"',
    ]


FILES = [
    (
        "/etc/roguewatch/roguewatchd.yaml",
        "the service's configuration (optional; every key "
        "has a built-in default). A documented example is "
        "/usr/share/doc/roguewatch/roguewatchd.yaml.example.",
    ),
    (
        "/etc/roguewatch/rules.d/",
        "local rules and overrides, loaded after the packaged rule packs.",
    ),
    ("/etc/roguewatch/policies.d/", "policies with adoption selectors, one per file."),
    (
        "/var/log/roguewatch/alerts.jsonl",
        "the alert file, one JSON object a line, rotated by "
        "size by the service (alerts.jsonl.1 ...) and weekly by logrotate.",
    ),
    ("/var/lib/roguewatch/", "the service's state."),
    ("/var/cache/roguewatch/", "the compiled probe image."),
    ("/run/roguewatch/", "the event, alert and control sockets, and the live status."),
]


def files_block() -> list[str]:
    lines = [".SH FILES"]
    for path, what in FILES:
        lines += [".TP", f"\\fI{esc(path)}\\fR", esc(what)]
    return lines


def page_roguewatch() -> str:
    ap = roguewatch_parser()
    lines = header("roguewatch", "1", "roguewatch manual")
    lines += [".SH NAME", "roguewatch \\- " + esc(_lower_first(ap.description or ""))]
    lines += [".SH SYNOPSIS", f"\\fBroguewatch\\fR {esc(_after_prog(usage(ap), ap.prog))}"]
    for name, _, sub in subcommands(ap):
        lines += [".br", f"\\fBroguewatch {esc(name)}\\fR {esc(_after_prog(usage(sub), sub.prog))}"]
    lines += [".SH DESCRIPTION", esc(ap.description or "")]
    lines += [
        ".PP",
        "Most commands need root: they load BPF probes, create cgroups or read the service's "
        "root\\-only sockets. Commands that watch a session use a running \\fBroguewatchd\\fR(8) "
        "when its control socket answers, and start a collector of their own otherwise.",
        ".SH OPTIONS",
        *options_block(ap),
        ".SH COMMANDS",
    ]
    for name, helptext, sub in subcommands(ap):
        lines += _command(f"roguewatch {name}", helptext, sub)
    epilog = (ap.epilog or "").strip()
    if epilog:
        body = epilog.split("\n", 1)[1] if epilog.lower().startswith("examples:") else epilog
        lines += [".SH EXAMPLES", ".nf", ".RS 4", esc(_dedent(body)), ".RE", ".fi"]
    lines += [
        ".SH EXIT STATUS",
        "0 on success; 2 on a usage error or an error a person can act on (with a message); "
        "\\fBdoctor\\fR exits 1 when a required check fails; \\fBstatus\\fR exits 1 when the "
        "service is degraded and 3 when it is not running; \\fBrun\\fR and \\fBrecord\\fR exit "
        "with the agent's status.",
        *files_block(),
        ".SH SEE ALSO",
        "\\fBroguewatchd\\fR(8), \\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


def _command(title: str, helptext: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [".SS " + esc(title), f"\\fB{esc(title)}\\fR {esc(_after_prog(usage(parser), title))}"]
    about = parser.description or helptext
    if about:
        lines += [".PP", esc(_upper_first(about))]
    opts = [a for a in visible(parser) if not (a.option_strings and a.option_strings[0] == "-h")]
    if opts:
        lines += [".RS 4"]
        for action in opts:
            lines += [".TP", option_label(action), option_help(action, parser) or "\\&"]
        lines += [".RE"]
    for name, subhelp, sub in subcommands(parser):
        lines += _command(f"{title} {name}", subhelp, sub)
    return lines


def page_roguewatchd() -> str:
    ap = roguewatchd_parser()
    lines = header("roguewatchd", "8", "roguewatch manual")
    lines += [
        ".SH NAME",
        "roguewatchd \\- " + esc(ap.description or "the roguewatch service"),
        ".SH SYNOPSIS",
        f"\\fBroguewatchd\\fR {esc(_after_prog(usage(ap), ap.prog))}",
        ".SH DESCRIPTION",
        "\\fBroguewatchd\\fR loads roguewatch's BPF probes, follows the processes of agent "
        "sessions, evaluates the detection rules over their events and carries out the rules' "
        "actions. It supervises its components (collector, evaluator), restarting one that "
        "dies with back\\-off and a \\fBmonitor\\fR alert. It must run as root.",
        ".PP",
        "Under systemd (\\fBroguewatchd.service\\fR) it reports readiness with sd_notify, pings "
        "the watchdog and logs to the journal; elsewhere it runs in the foreground and logs to "
        "standard error. SIGHUP reloads rules and policies (\\fBsystemctl reload "
        "roguewatchd\\fR); SIGTERM and SIGINT stop it.",
        ".PP",
        "The package never starts or enables the service by itself; on a systemd host run "
        "\\fBsystemctl enable \\-\\-now roguewatchd\\fR.",
        ".SH OPTIONS",
        *options_block(ap),
        *files_block(),
        ".SH SEE ALSO",
        "\\fBroguewatch\\fR(1), \\fBsystemd.service\\fR(5), \\fBjournalctl\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


def _after_prog(text: str, prog: str) -> str:
    return text[len(prog) :].strip() if text.startswith(prog) else text


def _lower_first(text: str) -> str:
    text = text.strip().rstrip(".")
    return text[:1].lower() + text[1:]


def _upper_first(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:]


def _dedent(text: str) -> str:
    import textwrap

    return textwrap.dedent(text).strip("\n")


def main(argv: list[str]) -> int:
    pages = {"roguewatch": page_roguewatch, "roguewatchd": page_roguewatchd}
    if len(argv) != 1 or argv[0] not in pages:
        print("usage: manpage.py roguewatch|roguewatchd", file=sys.stderr)
        return 2
    sys.stdout.write(pages[argv[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
