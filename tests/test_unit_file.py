"""etc/batchd.service, the systemd unit the README installs: what systemd is told."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "etc" / "batchd.service"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str        # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_the_unit_is_notify_restarts_on_failure_and_never_gives_up() -> None:
    """Type=notify with the watchdog; Restart=on-failure; and no start limit: a batchd that
    cannot start (a full disk, an unmounted share) exits 1 and must be restarted however
    often, not left failed after systemd's default 5 starts in 10 s."""
    unit = _unit()
    assert ("notify", "on-failure", "0") == (unit["Service"]["Type"],
                                             unit["Service"]["Restart"],
                                             unit["Unit"]["StartLimitIntervalSec"])
    assert int(unit["Service"]["WatchdogSec"]) > 0


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed")
def test_systemd_finds_no_unknown_setting_in_the_unit() -> None:
    """systemd-analyze verify reports no unknown key or bad section in the unit (the
    binary's path and man pages are the installed system's concern, not the unit's)."""
    out = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True,
                         text=True, timeout=60, check=False)
    words = out.stdout + out.stderr
    assert [] == [line for line in words.splitlines()
                  if "Unknown" in line or "Invalid" in line or "Failed to parse" in line]
