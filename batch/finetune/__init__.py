"""Fine-tuning: labelled Parquet in, a folder the job serves out, on Ray Train.

    spec.py    the spec (YAML): typed, validated before anything starts
    data.py    read, check, split, fingerprint; token ids from the task's own prompt code
    train.py   the TorchTrainer loop (DDP), a checkpoint per epoch, resume
    score.py   held-out scores of the base and of the fine-tune (batch/evaluate.py)
    card.py    the served folder and its model card, finetune.json
    run.py     the order of the above, for `python -m batch finetune`
"""
