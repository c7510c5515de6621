"""The front door: the `nemotron` command (`cli`), `nemotron eval` building a request and driving Snakemake
(`launch`), the run registry behind `runs/status/logs/kill/fetch` (`runs`), and a running task's progress
(`progress`)."""
