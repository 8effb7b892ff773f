"""Dataset-wide explanations: a whole dataset in shards, global summaries streamed as shards finish.

`reading` (a dataset into shards, through `explain.inputs.reading`), `summary` (the
incremental global summaries), `shard` (`explain_shard`, the one thing every engine runs on a shard), `run` (`explain_dataset`, the local engine and
`DatasetRun`), `ray_engine` (shards in Ray actors; imported only when asked for).
"""
