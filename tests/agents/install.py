"""Install the real agent CLIs at the versions the adaptors were verified against (test-agents).

    python tests/agents/install.py --cache DIR [--reuse DIR]... --env-file FILE

For each CLI the first folder (the --reuse ones, then --cache) whose copy answers `--version`
with the pinned version is used; what no folder has is installed into --cache from the
package registries: `npm install --prefix DIR/npm --save-exact` for @anthropic-ai/claude-code,
@google/gemini-cli, @openai/codex and opencode-ai, and `aider-chat==V` into its own venv
`DIR/aider-venv`. The pinned versions are the adaptors' own (`VERIFIED` in each module).
The paths found go to --env-file (JSON: {cli: path to its binary}) for tests/agents.
Exit 0 when every CLI is there, 1 otherwise (what failed is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from adaptors import aider, claude, codex, gemini, opencode

#: cli -> (npm package or None for pip, the pinned version, what `--version` prints).
PINNED: dict[str, tuple[str | None, str, str]] = {
    "claude": ("@anthropic-ai/claude-code", claude.VERIFIED, f"{claude.VERIFIED} (Claude Code)"),
    "gemini": ("@google/gemini-cli", gemini.VERIFIED, gemini.VERIFIED),
    "codex": ("@openai/codex", codex.VERIFIED, f"codex-cli {codex.VERIFIED}"),
    "opencode": ("opencode-ai", opencode.VERIFIED, opencode.VERIFIED),
    "aider": (None, aider.VERIFIED, f"aider {aider.VERIFIED}"),
}


def binary(folder: Path, cli: str) -> Path:
    """Where a cache folder keeps a CLI's binary."""
    if cli == "aider":
        return folder / "aider-venv" / "bin" / "aider"
    return folder / "npm" / "node_modules" / ".bin" / cli


def version_ok(path: Path, cli: str) -> bool:
    """Whether `path --version` says the pinned version (run with a throwaway HOME)."""
    if not os.access(path, os.X_OK):
        return False
    with tempfile.TemporaryDirectory(prefix="agents-version-") as home:
        try:
            done = subprocess.run([str(path), "--version"], capture_output=True, text=True,
                                  timeout=120, check=False,
                                  env={**os.environ, "HOME": home, "DISABLE_AUTOUPDATER": "1"})
        except (OSError, subprocess.SubprocessError):
            return False
    return PINNED[cli][2] in done.stdout.splitlines()


def install(cache: Path, missing: list[str]) -> None:
    """Install the missing CLIs into `cache` (npm ones in one npm call)."""
    npm = [f"{PINNED[c][0]}@{PINNED[c][1]}" for c in missing if PINNED[c][0] is not None]
    if npm:
        (cache / "npm").mkdir(parents=True, exist_ok=True)
        print(f"installing {' '.join(npm)} into {cache / 'npm'}", flush=True)
        subprocess.run(["npm", "install", "--prefix", str(cache / "npm"), "--save-exact",
                        "--no-fund", "--no-audit", *npm], check=True)
    if "aider" in missing:
        venv = cache / "aider-venv"
        print(f"installing aider-chat=={aider.VERIFIED} into {venv}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                        f"aider-chat=={aider.VERIFIED}"], check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, type=Path)
    parser.add_argument("--reuse", action="append", default=[], type=Path)
    parser.add_argument("--env-file", required=True, type=Path)
    args = parser.parse_args()
    folders = [*args.reuse, args.cache]
    found: dict[str, str] = {}
    for cli in PINNED:
        for folder in folders:
            if version_ok(binary(folder, cli), cli):
                found[cli] = str(binary(folder, cli))
                break
    missing = [cli for cli in PINNED if cli not in found]
    if missing:
        try:
            install(args.cache, missing)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"install failed: {exc}", file=sys.stderr)
            return 1
        for cli in missing:
            if version_ok(binary(args.cache, cli), cli):
                found[cli] = str(binary(args.cache, cli))
    still = [cli for cli in PINNED if cli not in found]
    if still:
        print(f"not installed at the pinned version: {', '.join(still)}", file=sys.stderr)
        return 1
    args.env_file.parent.mkdir(parents=True, exist_ok=True)
    args.env_file.write_text(json.dumps(found, indent=2) + "\n")
    for cli, path in found.items():
        print(f"{cli:9} {PINNED[cli][1]:9} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
