#!/usr/bin/env bash
# head.sh: the head job's entry point on the cluster (shipped as <code>/.nemotron-remote/head.sh).
#
# NeMo-Run's sbatch script runs it with srun, from the shipped project folder (<code>). It
#   1. sources setup.sh (the profile's `setup` lines: module loads, conda, creating a venv) if present,
#   2. puts the profile's `venv` first on PATH if one is named (file `venv`, NUL-terminated),
#   3. runs the command from the file `argv` (NUL-separated words; never parsed by a shell).
# Nothing user-given is part of this script: values arrive as files, read as data.
#
# Cancelling: `nemotron_eval.executors.remote.cancel` touches `cancel-requested`, then sends SIGINT to the job's
# steps (scancel --signal=INT). The command gets that one SIGINT directly from Slurm; Snakemake then
# cancels the jobs it submitted. When the command has exited, this script cancels its own job so that
# Slurm records it as CANCELLED. A SIGINT without that file (the walltime warning, sbatch --signal=INT@N)
# only stops the command; the job then ends FAILED or TIMEOUT as it should.
set -o pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export NEMOTRON_CODE=${here%/*}
export NEMOTRON_REMOTE_DIR=$here

if [[ -f $here/setup.sh ]]; then
    # shellcheck source=/dev/null
    if ! source "$here/setup.sh"; then
        echo "head.sh: the profile's setup lines failed ($here/setup.sh)" >&2
        exit 1
    fi
fi

if [[ -s $here/venv ]]; then
    IFS= read -r -d '' venv <"$here/venv" || true
    if [[ ! -x $venv/bin/python ]]; then
        echo "head.sh: the profile's venv $venv has no bin/python on this node" >&2
        exit 1
    fi
    export VIRTUAL_ENV=$venv
    export PATH=$venv/bin:$PATH
fi

mapfile -d '' -t argv <"$here/argv"
if ((${#argv[@]} == 0)); then
    echo "head.sh: empty command ($here/argv)" >&2
    exit 1
fi

cancel_self() {
    echo "head.sh: $1; cancelling job ${SLURM_JOB_ID:-?}"
    scancel "$SLURM_JOB_ID"
    sleep 60 # scancel ends this script; the sleep keeps it from exiting first as FAILED
}

# A cancel that came before the command started (its SIGINT hit nothing or an earlier step).
if [[ -e $here/cancel-requested ]]; then
    cancel_self "cancel requested before the command started"
    exit 1
fi

# The trap only records the signal: bash runs it after the foreground command has finished, and the
# command itself starts with the default SIGINT action (traps are not inherited).
interrupted=0
trap 'interrupted=1' INT
"${argv[@]}"
rc=$?
if ((interrupted)) && [[ -e $here/cancel-requested ]]; then
    cancel_self "command stopped (exit $rc) after a cancel request"
fi
exit "$rc"
