"""The steps of the `beit3-pipeline` flow: thin Prefect tasks over the library entry points.

One module per step (ingest, preprocess, pretrain, finetune, report); `keys` computes their cache keys,
`runner` calls them (selection, forcing, ledger, failure reports), `status`, `compare` and `deploy` serve the
CLI commands of the same names.
"""
