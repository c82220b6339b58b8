"""Runs in a fresh interpreter WITHOUT dyembed (the tests' subprocess): loads an exported
SavedModel with plain TensorFlow, calls its signatures on the requests of a JSON file and writes
the outputs to another. Any attempt to import dyembed fails (a meta-path blocker), and the
script checks at the end that no dyembed module was loaded.

    python serving_client.py SAVED_MODEL_DIR REQUESTS.json OUTPUTS.json
"""

import importlib.abc
import json
import sys


class _NoDyembed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("dyembed", "dyembed_cli"):
            raise ImportError(f"{name} must not be imported by a SavedModel client")
        return None


sys.meta_path.insert(0, _NoDyembed())

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

DTYPES = {"user_ids": tf.string, "item_ids": tf.string, "timestamps": tf.int64, "weights": tf.float32,
          "k": tf.int32, "exclude_seen": tf.bool, "features": tf.float32}


def main(model_dir: str, requests_path: str, outputs_path: str) -> None:
    model = tf.saved_model.load(model_dir)
    with open(requests_path, encoding="utf-8") as fh:
        requests = json.load(fh)
    results = []
    for req in requests:
        fn = model.signatures[req["signature"]]
        out = fn(**{name: tf.constant(value, DTYPES[name]) for name, value in req["inputs"].items()})
        results.append({name: (np.char.decode(t.numpy().astype(bytes), "utf-8").tolist() if t.dtype == tf.string
                               else t.numpy().tolist()) for name, t in out.items()})
    assert not [m for m in sys.modules if m.split(".")[0] in ("dyembed", "dyembed_cli")], "dyembed was imported"
    with open(outputs_path, "w", encoding="utf-8") as fh:
        json.dump({"results": results, "signatures": sorted(model.signatures.keys())}, fh)


if __name__ == "__main__":
    main(*sys.argv[1:4])
