"""Pack what bench/gpu_check.py needs on an offline GPU machine into one directory (at most 64 MiB).

    .venv/bin/python bench/gpu_bundle.py --out /tmp/gpu-bundle [--python-version 3.12]
    # there:  OUT=/some/dir sh /tmp/gpu-bundle/run.sh            (add --smoke to try it on a CPU)

The machine is assumed to have Python, pip, torch, transformers (>= 5.17) and their dependencies
(numpy, pyyaml, regex, tqdm, filelock, huggingface-hub, tokenizers, safetensors, ...) and triton,
and nothing of ours. The bundle brings:
- project/: this project's Python files laid out as the installed package (``harness``, with
  tasks/, trainer/ and reports/ inside it, as pyproject's package-dir maps them);
- wheels/: the distributions the check imports that such a machine lacks (:data:`BUNDLED`,
  versions from constraints/ci.txt): binary ones for the target Python and manylinux x86_64,
  sdist-only ones (rouge-score, deepspeed built with DS_BUILD_OPS=0, so pure Python) built here;
- tokenizer/: SmolLM2's tokenizer files (no weights: the check's models are random shapes);
- haystack.txt: the start of the KJV haystack, enough for 128K-token prompts;
- shards/: packed training sequences at 32K (cut_4k over the embedded corpus);
- gpu_check.py and run.sh, which installs the wheels into ./site (``pip --no-index --no-deps``)
  and runs the check with the bundle's files.
``tests/test_gpu_check.py`` runs the bundle's run.sh --smoke in an interpreter that sees only the
standard library, :data:`ON_MACHINE` and :data:`BUNDLED` (and the bundle), so these lists cannot
silently go stale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 1024 ** 2
HAYSTACK_CHARS = 1_500_000      # about 350K SmolLM2 tokens of KJV: a 128K prompt with room to spare
SHARD_LENGTH, SHARD_TOKENS = 32768, 8 * 32768

# What the GPU machine is assumed to have: these distributions and everything they require
# (their Requires-Dist, without extras), as resolved in the environment this runs in.
MACHINE_ROOTS = ("torch", "transformers", "triton", "pip", "setuptools")


def on_machine(roots=MACHINE_ROOTS) -> set[str]:
    """The machine's distributions (normalized names): ``roots`` and their dependencies."""
    import importlib.metadata

    from packaging.requirements import Requirement

    seen, todo = set(), [_norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return seen
# What the check imports beyond that (the smoke test keeps this honest), and how each is fetched.
BUNDLED = {
    "rouge_score": "sdist",     # the needle's rouge1_f scorer
    "nltk": "wheel", "joblib": "wheel", "absl_py": "wheel", "six": "wheel",
    "pyarrow": "binary",        # packed shards
    "psutil": "binary",
    "deepspeed": "sdist",       # the ZeRO-3 phase; DS_BUILD_OPS=0: pure Python
    "hjson": "wheel", "ninja": "binary", "py_cpuinfo": "wheel", "pydantic": "wheel", "pydantic_core": "binary",
    "annotated_types": "wheel", "typing_inspection": "wheel", "msgpack": "binary", "einops": "wheel",
    "tensorboard": "wheel", "protobuf": "binary",   # the trainer's TensorBoard summaries
}
# Versions other than constraints/ci.txt's: pyarrow 26.0.1's cp312 wheel is 52.5 MiB and alone
# would take the bundle past 64 MiB; 21.0.0 (40.8 MiB) reads the shards the same way.
VERSIONS = {"pyarrow": "21.0.0"}


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints" / "ci.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[_norm(name)] = version.strip()
    return pins


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(".", "_")


def _pip(*args: str, env: dict | None = None) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True,
                   env={**os.environ, **(env or {})})


# pyproject's package-dir: source directory -> where it sits in the installed package.
PACKAGE_DIRS = {"harness": "harness", "tasks": "harness/tasks", "trainer": "harness/trainer",
                "reports": "harness/reports"}


def copy_project(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for src, where in PACKAGE_DIRS.items():
        shutil.copytree(ROOT / src, dest / where, ignore=ignore, dirs_exist_ok=True)


def build_wheels(dest: Path, python_version: str, bundled: dict[str, str] | None = None) -> None:
    """``bundled`` (default :data:`BUNDLED`): name -> sdist (built here, pure Python) | wheel | binary."""
    pins = _pins()
    dest.mkdir(parents=True)
    for name, kind in sorted((bundled or BUNDLED).items()):
        spec = f"{name.replace('_', '-')}=={VERSIONS.get(name) or pins[name]}"
        if kind == "sdist":  # pure Python once built (DeepSpeed without its ops)
            _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), spec, env={"DS_BUILD_OPS": "0"})
        else:
            _pip("download", "--no-deps", "--only-binary=:all:", "--implementation", "cp", "--python-version",
                 python_version, "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64",
                 "--platform", "manylinux_2_17_x86_64", "-d", str(dest), spec)


def build(out: Path, python_version: str, wheels: bool = True) -> dict:
    from harness import models
    from harness.data import build as data_build
    from harness.tasks import haystack

    if out.exists():
        raise SystemExit(f"gpu_bundle: {out} exists; give a new directory")
    out.mkdir(parents=True)
    tok_src = models.resolve("smollm2-135m")
    (out / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tok_src / name).is_file():
            shutil.copy2(tok_src / name, out / "tokenizer" / name)
    (out / "haystack.txt").write_text(haystack.load("kjv").text[:HAYSTACK_CHARS])
    data_build.build(source="embedded", strategy="cut_4k", tokens=SHARD_TOKENS, seq_len=SHARD_LENGTH,
                     tokenizer=str(out / "tokenizer"), seed=0, out=out / "shards")
    copy_project(out / "project")
    shutil.copy2(ROOT / "bench" / "gpu_check.py", out / "gpu_check.py")
    (out / "run.sh").write_text(RUN_SH)
    if wheels:
        build_wheels(out / "wheels", python_version)
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    total = sum(files.values())
    manifest = {"python_version": python_version, "bytes": total, "mib": round(total / 1024 ** 2, 2),
                "files": files, "commit": _commit()}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    if total > LIMIT:
        biggest = sorted(files.items(), key=lambda kv: -kv[1])[:5]
        raise SystemExit(f"gpu_bundle: {total / 1024 ** 2:.1f} MiB is over the 64 MiB limit; largest: {biggest}")
    return manifest


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


RUN_SH = """#!/bin/sh
# The GPU check from this bundle: its wheels into ./site (no network, no dependency resolution:
# the machine's torch and transformers stay), then gpu_check.py with the bundle's files.
# PYTHON: the interpreter (default python).
set -e
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-python}"
if [ -d "$here/wheels" ] && [ ! -d "$here/site" ]; then
    $py -m pip install -q --disable-pip-version-check --no-index --no-deps --target "$here/site" "$here"/wheels/*.whl
fi
export PYTHONPATH="$here/project:$here/site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
exec $py "$here/gpu_check.py" --tokenizer "$here/tokenizer" --haystack "$here/haystack.txt" \\
    --data "$here/shards" --out "${OUT:-$here/results}" "$@"
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--python-version", default="3.12", help="the GPU machine's Python (binary wheels are for it)")
    ap.add_argument("--no-wheels", action="store_true", help="files only (no downloads or wheel builds)")
    args = ap.parse_args()
    manifest = build(args.out, args.python_version, wheels=not args.no_wheels)
    print(f"{args.out}: {len(manifest['files'])} files, {manifest['mib']} MiB (limit 64)")


if __name__ == "__main__":
    main()
