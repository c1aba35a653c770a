"""Regenerate the Fashion-MNIST subset shipped in ``src/mutualat/data/embedded/``.

    python scripts/make_embedded_data.py --source /path/to/fashion-mnist

``--source`` holds the four official IDX files (gzipped or not). The subset is 1,000
training and 200 test images per class, picked by ``balanced_indices`` with seed 0 and kept
in the original order; the source positions are stored beside the pixels. The .npz is
written with fixed zip timestamps, so the same source gives the same bytes.
"""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np

from mutualat.data.datasets import EMBEDDED_FILE, load_dataset
from mutualat.data.splits import balanced_indices

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "mutualat" / "data" / "embedded"


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed``, but byte-for-byte reproducible (no current-time stamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", type=Path, required=True,
                        help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=OUT_DIR / EMBEDDED_FILE,
                        help="the .npz to write")
    parser.add_argument("--train", type=int, default=10_000, help="training images (1,000 a class)")
    parser.add_argument("--test", type=int, default=2_000, help="test images (200 a class)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the class-balanced pick")
    args = parser.parse_args()

    full = load_dataset("fashion-mnist", path=args.source)
    arrays = {}
    for split_name, split, n in (("train", full.train, args.train), ("test", full.test, args.test)):
        index = balanced_indices(split.labels, n, args.seed)
        arrays[f"{split_name}_images"] = split.images[index, 0]  # (N, 28, 28): one channel
        arrays[f"{split_name}_labels"] = split.labels[index].astype(np.uint8)
        arrays[f"{split_name}_index"] = index.astype(np.int32)  # position in the official file
        counts = np.bincount(split.labels[index], minlength=full.num_classes)
        print(f"{split_name}: {n} images, per class {counts.min()}..{counts.max()}")
    write_npz(args.out, arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
