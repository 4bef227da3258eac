"""Offline batches through a cluster (``tierserve submit``; the command itself is cluster/submit_cli.py).

- files.py: the batch files, our prompts format or the OpenAI Batch format, read and written;
- runner.py: a batch through a running cluster found by name, or an engine of its own, with
  a progress bar (``submit_batch``);
- job_submit.py: ``tierserve submit --address http://HEAD:8265``: the batch sent as a Ray job;
- job_driver.py: that job's driver, run on the cluster (``python -m cluster.batch.job_driver``).

It sits above cluster/bringup/ (joining Ray, the registry, a dispatcher of its own) and below
the commands.
"""
