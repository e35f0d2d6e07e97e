"""`sctl init DIR`: a new, complete site in a folder, ready for ``supervisord -c``.

It writes ``site.toml`` (from the templates shipped inside the package, ``cli/templates``, so it
works from a wheel), checks it exactly as ``sctl check`` does, renders ``actors.conf``, makes
the log and runtime folders, and writes a systemd unit for supervisord (``sctl.service``, not
installed) and a short ``README`` of the next steps. The default site runs one simulator per
device type beside the actor that talks to it (the same programs as the checkout's
``deploy/site.toml``); ``--empty`` writes the router and the supervision only. The MQTT pair
needs Mosquitto: without a ``mosquitto`` on this host its tables are written commented out,
with a note. An existing site is never overwritten (exit 2), and a site that would not pass
``sctl check`` is not written at all.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import string
import tomllib
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Final

import click

from broker.config import check_site
from cli.commands.site import refuse
from cli.common import EXIT_USAGE, dumps, fail, json_option

SITE: Final = "site.toml"
CONF: Final = "actors.conf"
UNIT: Final = "sctl.service"
MOSQUITTO_CONF: Final = "mosquitto.conf"
MOSQUITTO_PATHS: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
MQTT_BEGIN: Final = "#@mqtt-begin\n"
MQTT_END: Final = "#@mqtt-end\n"
MQTT_MISSING: Final = ("# (commented out by `sctl init`: no mosquitto on this host. Install it "
                       "(Debian: apt-get install\n# mosquitto), uncomment, then sctl check and "
                       "sctl deploy render.)\n")


def template(name: str) -> str:
    return (resources.files("cli") / "templates" / name).read_text(encoding="utf-8")


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


def site_text(empty: bool, mosquitto: str | None) -> str:
    """The site file: the template with Mosquitto's path, or its MQTT part commented out."""
    if empty:
        return template("site-empty.toml")
    text = template("site.toml")
    if mosquitto is not None:
        return text.replace("@MOSQUITTO@", mosquitto).replace(MQTT_BEGIN, "").replace(MQTT_END,
                                                                                    "")

    def comment_out(m: re.Match[str]) -> str:
        lines = m.group(1).replace("@MOSQUITTO@", "/usr/sbin/mosquitto").splitlines(True)
        return MQTT_MISSING + "".join(line if line.startswith("#") else
                                      ("# " + line if line.strip() else line) for line in lines)

    return re.sub(re.escape(MQTT_BEGIN) + "(.*?)" + re.escape(MQTT_END), comment_out, text,
                  flags=re.S)


@click.command()
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=True, path_type=Path))
@click.option("--empty", is_flag=True, help="no actors: the router and the supervision only")
@json_option
def init(directory: Path, empty: bool, as_json: bool) -> None:
    """Write a new site in DIR: site.toml (the default simulators, or --empty), actors.conf,
    the log and runtime folders, a systemd unit for supervisord and a README. Never
    overwrites: an existing site in DIR is exit 2."""
    from cli.ops.supervisord import make_runtime_folders, render, sctl_folder
    from cli.ops.validate import folder_problem, validate_site

    folder = directory.absolute()
    if folder.exists() and not folder.is_dir():
        fail(f"DIR {directory}: is a file, not a folder", EXIT_USAGE)
    unusable = folder_problem(folder)
    if unusable:
        fail(f"DIR {directory}: {unusable}", EXIT_USAGE)
    mosquitto = None if empty else find_mosquitto()
    files = [SITE, CONF, UNIT, "README"] + ([] if empty or not mosquitto else [MOSQUITTO_CONF])
    present = [f for f in files if (folder / f).exists()]
    if present:
        fail(f"DIR {directory}: already holds a site ({', '.join(present)}); sctl init never "
             "overwrites one: choose a new folder, or edit that site and `sctl deploy render`",
             EXIT_USAGE)
    text = site_text(empty, mosquitto)
    site, problems = check_site(tomllib.loads(text), folder / SITE)
    problems += validate_site(site) if not problems else []
    if problems:
        refuse(problems, f"nothing was written in {directory}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SITE).write_text(text, encoding="utf-8")
        if MOSQUITTO_CONF in files:
            (folder / MOSQUITTO_CONF).write_text(template(MOSQUITTO_CONF), encoding="utf-8")
        (folder / CONF).write_text(render(site, folder / CONF), encoding="utf-8")
        _write_notes(folder, files, empty, sctl_folder())
    except OSError as exc:
        fail(f"DIR {directory}: cannot write the site: {exc.strerror or exc}", EXIT_USAGE)
    problems = make_runtime_folders(site)
    if problems:
        refuse(problems, "supervisord cannot start without them")
    if as_json:
        click.echo(dumps({"site": str(folder / SITE), "files": files,
                          "actors": sorted(site.actors), "mosquitto": mosquitto}))
        return
    click.echo(f"wrote a site in {folder}: {', '.join(files)}, var/")
    if not empty and mosquitto is None:
        click.echo("note: no mosquitto on this host: the MQTT broker and readers are commented "
                   f"out in {SITE}", err=True)
    click.echo(f"next: cd {folder} && {sctl_folder()}/supervisord -c {CONF}   (see README)")


def _write_notes(folder: Path, files: list[str], empty: bool, bin_dir: Path) -> None:
    unit = "sctl-" + (re.sub(r"[^A-Za-z0-9_.-]", "-", folder.name) or "site") + ".service"
    what = {SITE: "the site: the router, the supervision, one [actors.NAME] table per device",
            CONF: "the supervisord file rendered from site.toml (`sctl deploy render`)",
            MOSQUITTO_CONF: "the private MQTT broker of the simulated readers",
            UNIT: "a systemd unit that runs supervisord at boot (written, not installed)",
            "README": "this file"}
    listing = "".join(f"  {f:<15} {what[f]}\n" for f in files)
    listing += f"  {'var/':<15} runtime files: var/log/NAME.log, the journal, the socket\n"
    demo = "" if empty else (f"  {bin_dir}/sctl send reader1 accept\n"
                             f"  {bin_dir}/sctl sub 'evt.' --count 5\n")
    values = {"date": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %z"),
              "dir": str(folder), "bin": str(bin_dir), "unit": unit, "files": listing,
              "demo": demo}
    (folder / "README").write_text(string.Template(template("README")).substitute(values),
                                   encoding="utf-8")
    user = "" if os.geteuid() == 0 else getpass.getuser()
    values["user_line"] = f"User={user}" if user else \
        "# User=  (supervisord runs as root; [supervisor] user = ... drops the programs' rights)"
    (folder / UNIT).write_text(string.Template(template(UNIT)).substitute(values),
                               encoding="utf-8")
