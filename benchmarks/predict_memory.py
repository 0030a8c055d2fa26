"""Peak memory of `predict.preprocess` on images at the 40-megapixel limit, one fresh process per file.

The reference is the decoded image itself (width x height x bytes per pixel), which Pillow must hold
anyway: the ratio says what preprocessing adds on top. Small files that decode to large images are the
memory bombs of issue 11 (a 186 KB float TIFF of 40000x1000 took ~7 GB).

    python benchmarks/predict_memory.py              # writes benchmarks/results/predict_memory.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import save_result
from PIL import Image

HERE = Path(__file__).resolve().parent
# VmHWM, the peak resident size of this process image (ru_maxrss would carry over the parent's at fork).
MEASURE = """
import sys
from fashion_cnn.predict import preprocess
def peak(): return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
base = peak()
preprocess(sys.argv[1])
print(peak() - base)
"""


def images() -> dict[str, tuple[Image.Image, dict, int]]:
    """name -> (image, save options, bytes per decoded pixel): an object on a plain background."""
    w, h = 8000, 5000
    rgb = np.full((h, w, 3), 230, np.uint8)
    rgb[1000:4000, 2000:6000] = 40
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[1000:4000, 2000:6000, :3] = 90
    floats = np.zeros((h, w), np.float32)
    floats[1000:4000, 2000:6000] = 0.7
    wide = np.zeros((1000, 40_000), np.float32)
    wide[100:900, 20_000:22_000] = 0.8
    deflate = {"compression": "tiff_adobe_deflate"}
    return {"jpeg-rgb": (Image.fromarray(rgb), {"quality": 90}, 3),
            "png-rgba": (Image.fromarray(rgba), {}, 4),
            "png-palette": (Image.fromarray(rgb).quantize(8), {}, 1),
            "png-16-bit": (Image.fromarray((floats * 60000).astype(np.uint16)), {}, 2),
            "tiff-float": (Image.fromarray(floats), deflate, 4),
            "tiff-float-40000x1000": (Image.fromarray(wide), deflate, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "predict_memory.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (image, options, depth) in images().items():
            suffix = {"jpeg": ".jpg", "png": ".png", "tiff": ".tif"}[name.split("-")[0]]
            path = Path(tmp) / f"{name}{suffix}"
            image.save(path, **options)
            done = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True)
            if done.returncode != 0:
                results.append({"image": name, "error": done.stderr.strip().splitlines()[-1]})
                print(f"{name:<24} {results[-1]['error']}")
                continue
            decoded = image.width * image.height * depth / 2**20
            peak = int(done.stdout) / 1024  # KiB
            results.append({"image": name, "size": list(image.size), "file_kb": round(path.stat().st_size / 1024),
                            "decoded_mib": round(decoded), "peak_growth_mib": round(peak),
                            "peak_over_decoded": round(peak / decoded, 2)})
            print(f"{name:<24} {results[-1]['file_kb']:>6} KB file, decoded {decoded:5.0f} MiB, "
                  f"peak growth {peak:5.0f} MiB ({peak / decoded:.2f}x)")
    save_result(args.out, {"benchmark": "predict_memory", "results": results})


if __name__ == "__main__":
    main()
