"""Item text features: the hashing baseline encoder and pretrained language models (TF)."""
