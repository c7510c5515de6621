# The plan: the request (Snakemake config keys, or the file `request` names) composed and compiled once; rules
# write its fields, input and params functions look things up in it. Every config error is reported here, in one
# line, before anything is written or submitted.
import os
import re
import sys
from pathlib import Path

from snakemake.utils import min_version

from nemotron_eval.core import layout
from nemotron_eval.pipeline import smk, snakemake_adapter, steps
from nemotron_eval.pipeline import workflow as wf
from nemotron_eval.artifacts.embedded import EMBEDDED
from nemotron_eval.pipeline.plan import plan_for
from nemotron_eval.pipeline.request import from_config, persist

min_version("9.27")

smk.validate_config(config)
# Steps (`nemotron-step`) run with the interpreter and environment Snakemake itself runs with: the project's own
# environment (pyproject.toml). That is why no rule names a conda environment or a container (snakemake --lint
# asks for one per shell rule): the deployment's image is a setting of the config, not of a rule.
envvars:
    "PATH",


# A step watches the process that started it and ends with it (pipeline.steps.watch_parent); this names that
# process for the steps, so that one started just as Snakemake was killed does not run on, unwatched.
os.environ[steps.SPAWNER_ENV] = steps.spawner_entry()
SEARCH_PATH = os.environ["PATH"]
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), SEARCH_PATH])
REQUEST = smk.or_exit(from_config, config, snakemake_adapter.given_config(workflow))
# a dry run writes nothing, compiled plans included (it reads those a real run kept)
PLAN = smk.or_exit(plan_for, REQUEST, Path(workflow.basedir) / "configs", not snakemake_adapter.dry_run(workflow))
if snakemake_adapter.given_config(workflow) and not snakemake_adapter.dry_run(workflow):
    # Jobs Snakemake starts by re-invoking itself through a shell get the request as a file, not as values;
    # written only once the plan accepted it (a refused request, a secret among them, leaves no file), and
    # never by a dry run, which starts no job.
    snakemake_adapter.hand_jobs_a_request(workflow, f"request={smk.or_exit(persist, REQUEST)}")
smk.or_exit(PLAN.check_cluster)
if snakemake_adapter.is_main_process(workflow):
    smk.hint_after_a_kill()


wildcard_constraints:
    model=r"[^/]+",  # a bad spec gets its one-line error from the plan (parse_wildcard), not "no rule"
    task="|".join(re.escape(t) for t in PLAN.task_names),
    name="|".join(EMBEDDED),


def model_plan(wildcards):
    smk.check_rerun_triggers(workflow)  # the DAG is being built: nothing has run yet
    return smk.or_exit(PLAN.model, wildcards.model)


def embedded_receipt(wildcards):
    """An embedded model's checkpoint (built by prepare_model) for the jobs that read it; ancient: rebuilding it
    with the same identity reruns nothing."""
    model = model_plan(wildcards).embedded
    return [ancient(str(model.receipt))] if model else []


def evaluation_inputs(wildcards):
    """eval.yaml, job.yaml, an embedded model's checkpoint and the deployment's endpoint for an evaluation. Once
    its result exists the configs and the checkpoint count as ancient(): a rewrite that leaves the task's own
    settings alone (export, cluster) reruns nothing; the task's fingerprint file decides. The endpoint (a service)
    is declared only while the evaluation is due: else the deployment started for another task of the model would
    make Snakemake run this one again too. A stale result (it records another task fingerprint than the plan's)
    runs again whatever path Snakemake takes: forced, and with no input ancient (Snakemake skips the checks of a
    job whose ancient input's producer reruns, and then does not rerun it for that input)."""
    smk.check_rerun_triggers(workflow)
    model, task = wildcards.model, wildcards.task
    result = layout.RESULT.format(model=model, task=task)
    inputs = {"eval": layout.EVAL.format(model=model), "job": layout.JOB.format(model=model)}
    embedded = model_plan(wildcards).embedded
    if embedded:
        inputs["model"] = str(embedded.receipt)
    endpoint = {"endpoint": layout.ENDPOINT.format(model=model)}
    done = Path(result).exists()
    stale = done and smk.or_exit(smk.stale_result, PLAN, model, task)
    if stale and snakemake_adapter.is_main_process(workflow):  # a job's own Snakemake runs what it was given
        snakemake_adapter.force(workflow, result)
    due = not done or stale or smk.or_exit(smk.evaluation_due, PLAN, model, task, workflow)
    if due:
        smk.check_cores(workflow)  # the deployment and this task run together
    if not done or stale:
        return {**inputs, **endpoint}
    return {**{k: ancient(v) for k, v in inputs.items()}, **(endpoint if due else {})}


def staged_data(wildcards):
    task = smk.or_exit(PLAN.task, wildcards.task)
    return {"data": layout.STAGED.format(task=task.short)} if task.offline else {}
