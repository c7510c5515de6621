"""The pipeline glue between Snakemake and the rooms: the request (`request`), the one plan of a run (`plan`),
the file layout (`layout`), the Snakefile's helpers (`smk`) and the one adapter for Snakemake's internals
(`snakemake_adapter`), the `nemotron-step` command (`steps`) and the steps' bodies (`workflow`), harness slots
per deployment (`slots`)."""
