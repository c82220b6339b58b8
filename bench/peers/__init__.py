"""Peers trained and scored on dyembed's own split, masking and rank/metric code (issue 11).

harness.py      work dir → split stages (validation / test), masking, ranks via dyembed's rank_rows,
                bootstrap results, the tune-on-validation / test-once driver
ease.py         EASE (Steck 2019), closed form in numpy
implicit_peers  ALS and BPR from the `implicit` package (extra `peers`)
sasrec.py       SASRec with full-softmax cross-entropy at every position, TensorFlow
run.py          the command line: tune every peer on validation, report the test once, write JSON
"""
