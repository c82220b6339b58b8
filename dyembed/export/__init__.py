"""`dyembed export`: the serving state as a TensorFlow SavedModel and plain ANN tables.

    tables.py      what is served, gathered from the work dir in numpy (no TensorFlow)
    savedmodel.py  the tf.Module with the serving signatures, built on replay/rules.py
    ann.py         user and item vectors with the bias folded in (Parquet, optional FAISS index)
    run.py         the command: checks, temp directory, atomic install at --out

docs/serving.md has the layout, the signatures and how TensorFlow Serving loads them.
"""
