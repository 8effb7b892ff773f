"""Explanations as a service: the queue's worker (`worker`), what each job kind runs (`runners`),
registry models loaded once per file (`models`) and the HTTP API (`api`).

The queue itself is a workspace table (`explain.workspace.jobs`); the page, the CLI and the API
all submit there and read results back as saved runs.
"""
