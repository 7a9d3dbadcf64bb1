"""OCI images and artifacts: incremental image build + push, and push throughput beside skopeo.

1. The example bundle (bundles/registry-v3.yaml's inputs from `modelkiln.demo`, PyTorch backend)
   with an `image:` section on a synthetic base and `publish.oci`: a full build + push of the
   model artifact and the serving image, then a thresholds-only change (new version, one
   threshold value) rebuilt and pushed. Wall time of build + push and bytes sent by each.
   Goal: the thresholds-only push sends < 1 % of the full push's bytes.
2. Push throughput of 1 GiB of weights (one uncompressed layer of an OCI layout) to a fresh
   docker-registry: modelkiln's client vs `skopeo copy oci:LAYOUT:TAG docker://...` of the same
   layout, each into its own fresh registry, alternating, best of 2. Goal: >= 0.8x skopeo.
   skopeo's default gzips an uncompressed layer on its way to a registry (other bytes, another
   digest); `--preserve-digests` sends the layer as it is, like we do, and is the ratio's base.

Run: `.venv/bin/python bench/bench_oci.py` (needs docker-registry and skopeo from Debian).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, header, table, workdir, write_random

sys.path.insert(0, str(REPO / "tests"))
from modelkiln.artifacts.oci import media
from modelkiln.artifacts.oci.layers import Entry, write_layer
from modelkiln.artifacts.oci.layout import OciLayout
from modelkiln.publish.oci import push
from ociregistry import DockerRegistry, find_registry, synthetic_base

GiB = 1 << 30
DOIT = Path(sys.executable).parent / "doit"


def registry(root: Path) -> DockerRegistry:
    binary = find_registry()
    if binary is None:
        raise SystemExit("docker-registry is not installed (apt-get install docker-registry)")
    r = DockerRegistry(binary, root)
    r.start()
    return r


def example_project(root: Path, host: str, base: str) -> Path:
    from modelkiln import demo

    (root / "bundles").mkdir(parents=True)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    demo.make_example_inputs(root / "bundles")
    spec = (REPO / "bundles" / "registry-v3.yaml").read_text()
    spec = re.sub(r"(?m)^image:.*\n(?:[ #].*\n)*", "", spec)  # the example's own image section
    spec = "\n".join(line for line in spec.splitlines() if not line.startswith(("  s3:", "  oci:")))
    spec += (f"\nimage:\n  repository: {host}/models/registry\n  base: {base}\n"
             "  backend: pytorch\n  libraries: base\n  test: off\n  push: true\n")
    spec = spec.replace("publish:\n", f"publish:\n  oci: {host}/models/registry-model:"
                        "{version}-{backend}\n")
    (root / "bundles" / "registry-v3.yaml").write_text(spec)
    return root


def build_and_push(project: Path, version: str, host: str) -> tuple[float, int, float, str]:
    """(build s, bytes pushed, push s, blobs sent/skipped) of image:registry-v3-pytorch and its
    two pushes (artifact, image)."""
    t0 = time.perf_counter()
    subprocess.run([str(DOIT), "build:registry-v3", "skip=onnx"], cwd=project, check=True,
                   capture_output=True)
    t1 = time.perf_counter()
    layout = project / "dist" / "registry-v3" / version / "oci" / "pytorch"
    art = push(layout, "model", f"{host}/models/registry-model:{version}-pytorch")
    img = push(layout, "image", f"{host}/models/registry:{version}-pytorch")
    blobs = f"{art.blobs_uploaded + img.blobs_uploaded}/{art.blobs_skipped + img.blobs_skipped}"
    return t1 - t0, art.bytes_uploaded + img.bytes_uploaded, time.perf_counter() - t1, blobs


def incremental(work: Path) -> list[list[object]]:
    reg = registry(work / "reg-example")
    try:
        base = synthetic_base(reg.host)
        project = example_project(work / "example", reg.host, base)
        full_build, full_bytes, full_push, full_blobs = build_and_push(project, "3.0.0",
                                                                        reg.host)
        spec = project / "bundles" / "registry-v3.yaml"
        text = spec.read_text().replace('version: "3.0.0"', 'version: "3.0.1"')
        spec.write_text(text.replace("  min_support: 5\n",
                                     "  min_support: 5\n  values: {complication: 0.42}\n"))
        inc_build, inc_bytes, inc_push, inc_blobs = build_and_push(project, "3.0.1", reg.host)
    finally:
        reg.stop()
    return [["full build + push", f"{full_build:.2f}", f"{full_push:.3f}", full_bytes, "100 %",
             full_blobs],
            ["thresholds-only change", f"{inc_build:.2f}", f"{inc_push:.3f}", inc_bytes,
             f"{100 * inc_bytes / full_bytes:.2f} %", inc_blobs]]


def big_layout(work: Path, size: int) -> Path:
    weights = work / "model.safetensors"
    write_random(weights, size)
    lay = OciLayout(work / "layout")
    lay.init()
    tmp = lay.root / "blobs" / "sha256" / ".part"
    layer = write_layer(tmp, [Entry("opt/model/model.safetensors", weights)], gzip=False)
    lay.adopt(tmp, layer.digest)
    config = lay.put_bytes(media.canonical({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]}}), media.IMAGE_CONFIG)
    man = lay.put_bytes(media.manifest_bytes(config, [layer.descriptor()]), media.MANIFEST)
    lay.write_index([media.Descriptor(man.media_type, man.digest, man.size,
                                      ((media.REF_NAME, "big"),))])
    weights.unlink()
    subprocess.run(["cat", str(lay.blob_path(layer.digest))], stdout=subprocess.DEVNULL,
                   check=True)  # warm the page cache for both contenders
    return lay.root


def throughput(work: Path, size: int) -> list[list[object]]:
    layout = big_layout(work, size)
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise SystemExit("skopeo is not installed (apt-get install skopeo)")
    peers = {"skopeo copy": [], "skopeo copy --preserve-digests": []}
    times: dict[str, list[float]] = {"modelkiln push": [], **peers}
    for i in range(2):
        for who in times:
            reg = registry(work / f"reg-{len(who)}-{i}")
            try:
                t0 = time.perf_counter()
                if who.startswith("skopeo"):
                    subprocess.run([skopeo, *who.split()[1:], "--dest-tls-verify=false",
                                    f"oci:{layout}:big", f"docker://{reg.host}/bench/w:1"],
                                   check=True, capture_output=True)
                else:
                    push(layout, "big", f"{reg.host}/bench/w:1")
                times[who].append(time.perf_counter() - t0)
            finally:
                reg.stop()
                shutil.rmtree(reg.root, ignore_errors=True)
    best = {who: min(t) for who, t in times.items()}
    ref = best["skopeo copy --preserve-digests"]  # the same bytes as ours (no recompression)
    return [[who, f"{best[who]:.2f}", f"{size / best[who] / (1 << 20):.0f}",
             f"{ref / best[who]:.2f}x"] for who in times]


def main() -> None:
    parts = sys.argv[1:] or ["incremental", "throughput"]
    header("bench_oci: image build + push, thresholds-only vs full; 1 GiB push vs skopeo")
    work = workdir("bench-oci-", need_bytes=4 * GiB)
    try:
        if "incremental" in parts:
            print("\nexample bundle (registry-v3, pytorch) as artifact + serving image:")
            table(["case", "build s", "push s", "bytes pushed", "of full", "blobs sent/skipped"],
                  incremental(work))
        if "throughput" in parts:
            print("\npush of one 1 GiB uncompressed layer to a fresh docker-registry (best of 2):")
            table(["client", "wall s", "MiB/s", "vs skopeo"], throughput(work, GiB))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
