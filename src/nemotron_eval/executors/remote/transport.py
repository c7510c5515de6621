"""Running a command on the cluster side and copying files back, for either tunnel.

tunnel = "local": the argv runs here as a subprocess, no shell at all. tunnel = "ssh": OpenSSH's `ssh`
runs it; the remote side only accepts a command *string*, so the argv is joined with `shlex.join` (each
word quoted for the remote POSIX shell). OpenSSH, not Paramiko, is used for these calls because it is
what NeMo-Run's rsync uses as well: one set of host keys (~/.ssh/known_hosts), one config, one answer.
`BatchMode=yes` makes every failure (unknown host key, a key that needs a passphrase) an error line
instead of a prompt. `check` runs before NeMo-Run's own Paramiko session opens, which would accept any
host key (Fabric's AutoAddPolicy): the key is verified here first.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from nemotron_eval.core.errors import UserError
from nemotron_eval.executors.remote.profile import RemoteProfile

CONNECT_TIMEOUT_S = 10  # ssh's own limit for TCP connect and the banner exchange
CHECK_TIMEOUT_S = 12  # hard cap on the whole check: a host that does not answer fails within 15 s
SLURM_TOOLS = ("sbatch", "squeue", "sacct", "scancel")
REMOTE_TOOLS = (*SLURM_TOOLS, "rsync")  # over SSH, NeMo-Run and `fetch` rsync to and from the host


class Transport:
    """Commands and copies for one profile's cluster side."""

    def __init__(self, profile: RemoteProfile) -> None:
        self.profile = profile

    # ---------------------------------------------------------------- commands
    def ssh_options(self) -> list[str]:
        """`ssh` options shared by every call (and by rsync's `-e`)."""
        p = self.profile
        opts = [
            "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4",
            "-p", str(p.port), "-l", p.user,
        ]  # fmt: skip
        if p.identity:
            opts += ["-i", p.identity, "-o", "IdentitiesOnly=yes"]
        return opts

    def command(self, argv: Sequence[str]) -> list[str]:
        """The local argv that runs `argv` on the cluster side."""
        if not self.profile.is_ssh:
            return list(argv)
        return ["ssh", *self.ssh_options(), "--", self.profile.host, shlex.join(argv)]

    def run(self, argv: Sequence[str], timeout: float = 60, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run `argv` on the cluster side; output captured as text. `check` raises UserError on failure."""
        try:
            proc = subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise UserError(f"{self.where()}: `{shlex.join(argv)}` did not finish within {timeout:.0f} s") from None
        except FileNotFoundError as e:
            raise UserError(f"{self.where()}: {e.filename} is not installed here") from None
        if check and proc.returncode != 0:
            raise UserError(f"{self.where()}: `{shlex.join(argv)}` failed: {last_line(proc.stderr or proc.stdout)}")
        return proc

    def run_bytes(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        """`run` without decoding (log files are read by byte offset)."""
        try:
            return subprocess.run(self.command(argv), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise UserError(f"{self.where()}: `{shlex.join(argv)}` did not finish within {timeout:.0f} s") from None

    def where(self) -> str:
        return f"profile {self.profile.name!r} ({self.profile.destination})"

    # ---------------------------------------------------------------- checks
    def check(self) -> None:
        """The cluster answers and has Slurm and rsync, else one UserError line (within 15 s for SSH)."""
        p = self.profile
        probe = ["sh", "-c", 'for t in "$@"; do command -v "$t" >/dev/null || echo "missing: $t"; done', "sh", *REMOTE_TOOLS]
        if not p.is_ssh:
            missing = [t for t in SLURM_TOOLS if shutil.which(t) is None]
            if missing:
                hint = 'run this on a Slurm login node or use tunnel = "ssh"'
                raise UserError(f"{self.where()}: {', '.join(missing)} not found on PATH; {hint}")
            return
        if shutil.which("ssh") is None or shutil.which("rsync") is None:
            raise UserError(f'{self.where()}: tunnel = "ssh" needs the OpenSSH client and rsync installed here')
        try:
            proc = subprocess.run(
                self.command(probe), capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL
            )
        except subprocess.TimeoutExpired:
            raise UserError(
                f"{self.where()}: the host did not answer within {CHECK_TIMEOUT_S} s; check host and port (and VPN)"
            ) from None
        if proc.returncode == 255:  # ssh's own failure
            raise UserError(f"{self.where()}: cannot connect: {ssh_problem(proc.stderr, p)}")
        missing = [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if line.startswith("missing:")]
        if proc.returncode != 0 or missing:
            what = ", ".join(missing) if missing else last_line(proc.stderr)
            raise UserError(f"{self.where()}: not found on the host's PATH for non-interactive SSH commands: {what}")

    # ---------------------------------------------------------------- copies
    def fetch(self, remote: str, local: Path, timeout: float = 3600) -> None:
        """Copy the remote file or folder `remote` to `local` (which must not exist yet)."""
        if not self.profile.is_ssh:
            src = Path(remote)
            if src.is_dir():
                shutil.copytree(src, local, symlinks=True)
            elif src.is_file():
                shutil.copy2(src, local)
            else:
                raise UserError(f"{self.where()}: {remote} does not exist")
            return
        # -s (--protect-args): the remote path reaches the remote rsync without a shell splitting it.
        kind = self.run(
            ["sh", "-c", 'if [ -d "$1" ]; then echo dir; elif [ -e "$1" ]; then echo file; fi', "sh", remote], check=True
        ).stdout.strip()
        if not kind:
            raise UserError(f"{self.where()}: {remote} does not exist")
        source = f"{self.profile.host}:{remote}" + ("/" if kind == "dir" else "")
        target = str(local) + ("/" if kind == "dir" else "")
        argv = ["rsync", "-a", "-s", "-e", shlex.join(["ssh", *self.ssh_options()]), source, target]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise UserError(f"{self.where()}: copying {remote} took over {timeout:.0f} s") from None
        if proc.returncode != 0:
            raise UserError(f"{self.where()}: rsync of {remote} failed: {last_line(proc.stderr)}")


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def ssh_problem(stderr: str, p: RemoteProfile) -> str:
    """ssh's error line, plus what to do about the common ones."""
    line = last_line(stderr)
    low = stderr.lower()
    if "host key verification failed" in low or "no ed25519 host key is known" in low or "host key for" in low:
        hint = f"connect once with `ssh -p {p.port} {p.user}@{p.host}` to check and accept it"
        return f"{line} (the host's key is not in ~/.ssh/known_hosts; {hint})"
    if "permission denied" in low:
        key = f"identity {p.identity}" if p.identity else "ssh-agent or your default keys"
        return f"{line} (the server refused {key}; a key with a passphrase needs ssh-agent)"
    if "timed out" in low:
        return f"{line} (the host did not answer; check host and port)"
    return line
