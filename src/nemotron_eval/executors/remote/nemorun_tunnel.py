"""CarryingSSHTunnel: NeMo-Run's SSHTunnel whose sbatch gets named variables of this process's environment on
its standard input (`carry`). Importing it imports nemo_run (seconds)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from nemo_run.core.tunnel.client import SSHTunnel

from nemotron_eval.executors.remote import carry as carrying


@dataclass(kw_only=True)
class CarryingSSHTunnel(SSHTunnel):
    """Only the names travel with the tunnel (NeMo-Run serialises it into its experiment folder); the values are
    read from the environment when sbatch runs."""

    carry: list[str] = field(default_factory=list)

    def run(self, command: str, hide: bool = True, warn: bool = False, **kwargs: Any) -> Any:
        if self.carry and command.startswith("sbatch "):
            # no pty (it would echo the input into the output NeMo-Run reads the job id from), no local echo,
            # whatever the user's Fabric config says
            kwargs.update(in_stream=io.StringIO(carrying.stdin_text(self.carry)), pty=False, echo_stdin=False)
            command = carrying.wrap(command, self.carry)
        return super().run(command, hide=hide, warn=warn, **kwargs)
