"""The pipelines, one module per verb, each opening with the function that is its table of
contents: build (resolve -> convert -> check -> export -> publish), check (resolve -> check),
convert (resolve -> convert -> write an image), unpack (resolve -> copy out), dockerfile (the
conversion plan as a build context), inject (a new cloud-config into a built ISO). stages.py
holds the stages they share (resolve the base, convert it); no pipeline imports another."""
