"""The pipelines, one module per verb, each read top to bottom as its own table of contents:
build (resolve -> convert -> check -> export -> publish)."""
