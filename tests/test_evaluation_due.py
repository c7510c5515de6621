"""`smk.evaluation_due`, branch by branch, on real files and real Snakemake records: a working directory with
results written by real Snakemake jobs (one of them killed mid-job: its incomplete marker is Snakemake's own),
task fingerprints, staged data and a mirror with chosen modification times; then a Snakemake dry run whose input
function asks `evaluation_due` about every (model, task) with the real `workflow` object, as rules/common.smk does.
The plan is a real one (configs/default.yaml, a registered checkpoint). No model, harness or deployment runs."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from conftest import BIN, REPO, make_checkpoint, run
from nemotron_eval.core import layout
from nemotron_eval.artifacts import LocalRegistry
from nemotron_eval.pipeline import smk
from nemotron_eval.pipeline.plan import Plan
from nemotron_eval.pipeline.request import Request

TASKS = ("openbookqa", "hellaswag", "winogrande", "arc_challenge", "mmlu", "piqa")  # piqa: read from the hub, not staged
T0 = 1_800_000_000.0  # every result's modification time; the other files are set around it
# (model, task) -> (what is special about it, whether it is due)
CASES = {
    ("demo_latest", "openbookqa"): ("nothing: recorded, fingerprint and staged data older than the result", False),
    ("demo_latest", "piqa"): ("nothing, and a hub task reads no staged data", False),
    ("demo_v1", "openbookqa"): ("no Snakemake record of the result (written by hand)", True),
    ("other_latest", "openbookqa"): ("a rerun killed mid-job: record and incomplete marker", True),
    ("demo_v1", "piqa"): ("the fingerprint file differs from the plan's", True),
    ("other_latest", "piqa"): ("the fingerprint is newer than the result", True),
    ("demo_latest", "hellaswag"): ("staged data newer than the result", True),
    ("demo_latest", "winogrande"): ("staged data missing", True),
    ("demo_latest", "arc_challenge"): ("a mirror file changed since staging: restaging", True),
    ("demo_latest", "mmlu"): ("staged from another list of mirror files than the task's now (what staging reads "
                              "changed: the stage rule's param restages it)", True),
    ("other_v1", "piqa"): ("the result records another task fingerprint than the plan's; its fingerprint file, "
                           "older than the result, agrees with the plan", True),
}
PROBE = textwrap.dedent("""\
    import json
    from pathlib import Path
    from nemotron_eval.pipeline import smk
    from nemotron_eval.pipeline.plan import Plan
    from nemotron_eval.pipeline.request import Request

    SETUP = json.loads(Path("setup.json").read_text())
    PLAN = Plan(Request(**SETUP["request"]), Path(SETUP["configs"]))

    def ask(wildcards):
        due = {f"{m}/{t}": smk.stale_result(PLAN, m, t) or smk.evaluation_due(PLAN, m, t, workflow)  # as rules/common.smk asks
               for m, t in SETUP["pairs"]}
        Path(SETUP["answer"]).write_text(json.dumps(due))
        return []

    rule probe:
        input: ask
        output: "probe.txt"
        shell: "touch {output}"
    """)
MAKE = 'rule make:\n    output: "results/{model}/{task}.json"\n    shell: "echo {{}} > {output}"\n'
KILLED = 'rule killed:\n    output: "results/{model}/{task}.json"\n    shell: "echo {{}} > {output}; sleep 1; kill -9 $PPID"\n'


def snakemake(work: Path, *args: str):
    return run([str(BIN / "snakemake"), "--workflow-profile", "none", "--cores", "1", *args], work)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Plan, dict[str, object]]:
    work = tmp_path_factory.mktemp("due")
    (work / "env.toml").write_text("")
    registry = LocalRegistry(work / "artifacts")
    registry.add("demo", make_checkpoint(work / "ckpt" / "demo"))
    registry.add("other", make_checkpoint(work / "ckpt" / "other", "other weights"))
    mirror = work / "mirror"
    request = {"eval_config": "default", "env_file": str(work / "env.toml"),
               "overrides": ["evaluation.tasks=[{name: openbookqa}, {name: hellaswag}, {name: adlr_winogrande_5_shot}, "
                             "{name: adlr_arc_challenge_llama_25_shot}, {name: adlr_mmlu}, {name: piqa}]", f"data.mirror={mirror}"]}
    mirror.mkdir()
    cwd = Path.cwd()
    os.chdir(work)
    try:
        plan = Plan(Request(**{**request, "overrides": tuple(request["overrides"])}), REPO / "configs")
        assert plan.task_names == list(TASKS) and not plan.task("piqa").offline
        # Snakemake's records: every result made by a job, one made by hand, one rerun killed after writing it
        made = [layout.RESULT.format(model=m, task=t) for m, t in CASES if (m, t) != ("demo_v1", "openbookqa")]
        (work / "Snakefile").write_text(MAKE)
        proc = snakemake(work, *made)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (work / "killed.smk").write_text(KILLED)
        proc = snakemake(work, "-s", "killed.smk", "--force", layout.RESULT.format(model="other_latest", task="openbookqa"))
        assert proc.returncode != 0 and any((work / ".snakemake" / "incomplete").iterdir())
        for d in (".snakemake/locks",):  # the killed run's lock (the probe reads, it does not lock)
            for f in (work / d).iterdir():
                f.unlink()
        # fingerprints as the plan computes them, older than the results; each result records the plan's
        for m, t in CASES:
            fingerprint = Path(layout.TASK_FINGERPRINT.format(model=m, task=t))
            fingerprint.parent.mkdir(parents=True, exist_ok=True)
            value = plan.evaluation(m, t)["fingerprint"]
            fingerprint.write_text(json.dumps({"task": t, "fingerprint": value if (m, t) != ("demo_v1", "piqa") else "0" * 64}))
            recorded = value if (m, t) != ("other_v1", "piqa") else "1" * 64
            Path(layout.RESULT.format(model=m, task=t)).write_text(json.dumps({"task_config_sha256": recorded}))
            os.utime(fingerprint, (T0 - 100, T0 - 100))
            os.utime(layout.RESULT.format(model=m, task=t), (T0, T0))
        os.utime(layout.TASK_FINGERPRINT.format(model="other_latest", task="piqa"), (T0 + 100, T0 + 100))
        # staged data (older than the results, newer than the mirror, staged from what the plan reads) except
        # where a case says otherwise
        for t in ("openbookqa", "hellaswag", "arc_challenge", "mmlu"):
            staged = Path(layout.STAGED.format(task=t))
            staged.mkdir(parents=True)
            for f in plan.mirror_files(t):
                Path(f).parent.mkdir(parents=True, exist_ok=True)
                Path(f).write_text("rows\n")
                os.utime(f, (T0 - 300, T0 - 300))
            reads = smk.staging_reads(plan, t) if t != "mmlu" else "sha256:" + "2" * 64
            (staged / "manifest.json").write_text(json.dumps({"format": 1, "reads": reads}))
            when = T0 + 100 if t == "hellaswag" else T0 - 200
            for p in (staged / "manifest.json", staged):
                os.utime(p, (when, when))
        os.utime(plan.mirror_files("arc_challenge")[0], (T0 - 150, T0 - 150))
    finally:
        os.chdir(cwd)
    setup = {"request": request, "configs": str(REPO / "configs"), "pairs": [list(k) for k in CASES], "answer": ""}
    (work / "probe.smk").write_text(PROBE)
    return work, plan, setup


def ask(work: Path, setup: dict[str, object], *args: str) -> dict[str, bool]:
    answer = work / f"due{len(args)}.json"
    (work / "setup.json").write_text(json.dumps({**setup, "answer": str(answer)}))
    proc = snakemake(work, "-s", "probe.smk", "-n", "--nolock", *args, "probe.txt")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(answer.read_text())


def test_each_reason_to_rerun_makes_the_evaluation_due_and_only_those(work) -> None:
    directory, _, setup = work
    due = ask(directory, setup)
    wrong = {f"{m}/{t} ({why})": due[f"{m}/{t}"] for (m, t), (why, expected) in CASES.items() if due[f"{m}/{t}"] != expected}
    assert not wrong, wrong


def test_anything_forced_makes_every_evaluation_due(work) -> None:
    directory, _, setup = work
    assert all(ask(directory, setup, "--forceall").values())

