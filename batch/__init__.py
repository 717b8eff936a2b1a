"""Distributed batch inference over Parquet corpora: translation and sentiment tagging with
vLLM on Ray Data. The flow of a row: io/read.py -> infer/stage.py (tasks/*, infer/engine.py)
-> io/write.py, wired in pipeline.py."""
