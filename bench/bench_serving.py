"""The serving image of the example bundle (registry-v3, ONNX) in a real engine, beside peers.

Issue 18's figures, in one run, on a temporary copy of the project (bundles/registry-v3.yaml and
its image lock, the generated inputs, the Debian base layout; inputs are made with
`modelkiln.demo` and the base with `kiln base` where the repository has none), built for real
with `doit build:registry-v3`, with this script's own dockerd (own socket and directories, no
bridge, no iptables, no IP forwarding; stopped at the end) and a loopback docker-registry.
Containers run with `--network none`; nothing is pulled (`--pull never`, the base is loaded from
its layout).

1. Cold start to the first answer: one row through `predict` in a fresh container. First-answer
   time from `modelkiln.stages.engine.run` (container start to the first answer line), and the
   wall time of `docker run --rm -i --network none --pull never IMAGE predict` (CLI start to
   exit). Peers: the same in the conventional image (3), and `python -m modelkiln.runtime
   predict DIR` as a fresh host process. Median of --runs. Goal <= 2 s.
2. Throughput, steady state: --rows rows (the calibration texts, repeated) through `predict`;
   rows/s = (rows - 1) / (time of the last answer line - time of the first), so start-up is left
   out. In-process peer: `runtime.predict.load(dir).answer(text)` over the unpacked bundle, in
   this process, the same texts. Also the host CLI and the conventional image. Median of --runs,
   contenders interleaved. Goal >= 0.9x in-process.
3. Image size: modelkiln's image (sum of its layers as pushed, and `docker image inspect` Size
   once loaded) vs a `docker build` of a conventional Dockerfile FROM the same base: a builder
   stage bootstraps pip from its wheel and `pip install`s numpy, onnxruntime and tokenizers at the
   lock's versions from local wheels (`pip download` on the host; the engine has no network), the
   final stage copies /usr/local, the runtime and the bundle. The conventional image is pushed
   with `docker push` to the same registry (its layers gzipped by the engine). Goal: modelkiln <=
   conventional.
4. Rebuild + push after a thresholds edit: the full image pushed to the loopback registry, then a
   `values:` entry added under `thresholds`, `doit build:registry-v3` again, and the image pushed
   to the same tag with `force=True`. Goal: bytes uploaded < 1 % of the image's bytes.

Run (as root; needs docker.io's dockerd and the docker CLI, docker-registry, and mmdebstrap only
when bases/ is missing):

    .venv/bin/python bench/bench_serving.py [--runs 5] [--rows 2000] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import PYTHON, REPO, header, table, workdir

sys.path.insert(0, str(REPO / "tests"))
from ociregistry import DockerRegistry, find_registry

# modelkiln is imported from a copy of src/ taken when the run starts (see main), not at import

NAME, BACKEND, VERSION = "registry-v3", "onnx", "3.0.0"
BASE = "debian-bookworm-python3"
BIN = Path(PYTHON).parent
DOCKER = shutil.which("docker") or "docker"
MB = 1_000_000


# ---------------------------------------------------------------- setup: project, engine, registry

def make_project(root: Path) -> Path:
    """bundles/ (registry-v3's spec and lock, its inputs), bases/, dodo.py, a pyproject marker."""
    from modelkiln import demo

    bundles = root / "bundles"
    bundles.mkdir(parents=True)
    for f in (f"{NAME}.yaml", f"{NAME}.image.lock"):
        shutil.copy(REPO / "bundles" / f, bundles / f)
    shutil.copy(REPO / "dodo.py", root / "dodo.py")
    (root / "pyproject.toml").write_text('[project]\nname = "kiln-bench"\nversion = "0"\n')
    inputs = REPO / "bundles" / NAME
    if (inputs / "calibration.jsonl").is_file() and (inputs / "checkpoint").is_dir():
        shutil.copytree(inputs, bundles / NAME)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-inputs-") as tmp:
            demo.make_example_inputs(Path(tmp))
            shutil.copytree(Path(tmp) / NAME, bundles / NAME)
    base = REPO / "bases" / BASE
    if (base / "index.json").is_file():
        shutil.copytree(base, root / "bases" / BASE)
    else:
        print("setup: no bases/ in the repository: kiln base (mmdebstrap, a few minutes)")
        subprocess.run([str(BIN / "kiln"), "base", str(root / "bases" / BASE)], check=True)
    return root


class Engine:
    """A dockerd of our own: socket, data-root and exec-root in a temp dir; no bridge/iptables."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bse-", dir="/tmp"))  # short: a socket path
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = f"unix://{self.dir}/engine.sock"
        self.env = {**os.environ, "DOCKER_HOST": self.host,
                    "DOCKER_CONFIG": str(self.dir / "cli")}

    def start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise SystemExit("bench: needs dockerd (apt-get install docker.io) and root")
        d = self.dir
        log = open(d / "dockerd.log", "wb")  # noqa: SIM115 - lives as long as the engine
        self.proc = subprocess.Popen(
            [dockerd, "--host", self.host, "--data-root", str(d / "root"), "--exec-root",
             str(d / "exec"), "--pidfile", str(d / "pid"), "--iptables=false",
             "--ip6tables=false", "--ip-forward=false", "--bridge=none"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(120):
            if subprocess.run([DOCKER, "version"], env=self.env, capture_output=True).returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"bench: dockerd did not start; see {d / 'dockerd.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def docker(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, *args], env=self.env, text=True, capture_output=True,
                              check=True, **kw)

    def size(self, ref: str) -> int:
        return int(self.docker("image", "inspect", "--format", "{{.Size}}", ref).stdout)


def doit_build(project: Path, env: dict[str, str]) -> tuple[float, list[str]]:
    """`doit build:registry-v3`; (wall s, the tasks that ran)."""
    t0 = time.perf_counter()
    done = subprocess.run([str(BIN / "doit"), f"build:{NAME}"], cwd=project, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        print(done.stdout[-4000:], done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"bench: doit build:{NAME} failed (rc {done.returncode})")
    ran = [line.split()[1] for line in done.stdout.splitlines() if line.startswith(".  ")]
    return wall, ran


# ---------------------------------------------------------------- measuring

def stream(cmd: list[str], lines: list[str], env: dict[str, str] | None = None
           ) -> tuple[float, float, float, list[str]]:
    """Run `cmd`, write `lines` to its stdin from a thread, read its answer lines as they come.
    Returns (first answer s, last answer s, exit s) from the start of the process, and the
    answers."""
    data = ("\n".join(lines) + "\n").encode()
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                env=env)

        def feed() -> None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(data)
                proc.stdin.close()
            except OSError:
                pass

        threading.Thread(target=feed, daemon=True).start()
        first = last = 0.0
        out = []
        assert proc.stdout is not None
        for raw in proc.stdout:
            last = time.perf_counter() - t0
            first = first or last
            out.append(raw.decode())
        rc = proc.wait()
        total = time.perf_counter() - t0
        if rc:
            err.seek(0)
            raise SystemExit(f"bench: {' '.join(cmd)} exited {rc}: {err.read()[-600:]!r}")
    return first, last, total, out


def steady(first: float, last: float, _total: float, out: list[str]) -> float:
    """Rows per second between the first answer line and the last (start-up left out)."""
    return (len(out) - 1) / (last - first) if last > first else float("nan")


def med(values: list[float]) -> float:
    return statistics.median(values)


def texts(bundle: Path, rows: int) -> list[str]:
    cal = [json.loads(x)["text"] for x in (bundle / "calibration.jsonl").read_text().splitlines()
           if x.strip()]
    return [cal[i % len(cal)] for i in range(rows)]


def ncpu_in(engine: Engine, image: str) -> str:
    """What the container sees: CPUs, affinity, cgroup quota and onnxruntime's thread default."""
    probe = ("import os, onnxruntime as ort; q = '/sys/fs/cgroup/cpu.max'; "
             "print(os.cpu_count(), len(os.sched_getaffinity(0)), "
             "open(q).read().strip() if os.path.exists(q) else 'cgroup v1', "
             "ort.SessionOptions().intra_op_num_threads)")
    try:
        return engine.docker("run", "--rm", "--network", "none", "--pull", "never",
                             "--entrypoint", "python3", image, "-c", probe).stdout.strip()
    except subprocess.CalledProcessError as exc:
        return f"probe failed: {exc.stderr.strip()[-200:]}"


# ---------------------------------------------------------------- the conventional image

def runtime_layer(layout: Path) -> Path:
    """The blob of our image's layer holding /opt/modelkiln/entrypoint.sh (runtime + entrypoint)."""
    from modelkiln.artifacts.oci.layout import OciLayout
    from modelkiln.artifacts.oci.media import IMAGE_TAG

    lay = OciLayout(layout)
    doc = json.loads(lay.read_blob(lay.find(IMAGE_TAG)))
    for d in doc["layers"]:
        if d["size"] < 8 * MB and d["mediaType"].endswith("gzip"):
            path = lay.blob_path(d["digest"])
            with tarfile.open(path) as tar:
                if any(n.endswith("opt/modelkiln/entrypoint.sh") for n in tar.getnames()):
                    return path
    raise SystemExit("bench: the image has no layer with /opt/modelkiln/entrypoint.sh")


def image_config(layout: Path) -> dict[str, Any]:
    from modelkiln.artifacts.oci.layout import OciLayout
    from modelkiln.artifacts.oci.media import IMAGE_TAG

    lay = OciLayout(layout)
    doc = json.loads(lay.read_blob(lay.find(IMAGE_TAG)))
    return json.loads((lay.blob_path(doc["config"]["digest"])).read_bytes())


def conventional_context(ctx: Path, project: Path, layout: Path, bundle_dir: Path) -> str:
    """Build context + Dockerfile of the peer; returns the `requested:` line of the lock."""
    lock = (project / "bundles" / f"{NAME}.image.lock").read_text()
    asked = next(x for x in lock.splitlines() if x.startswith("# requested:")).split(":", 1)[1]
    wheels = ctx / "wheels"
    plat = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            "--abi", "cp311", "--platform", "manylinux_2_28_x86_64", "--platform",
            "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64"]
    pip_version = subprocess.run([PYTHON, "-m", "pip", "--version"], capture_output=True,
                                 text=True, check=True).stdout.split()[1]
    for what in (["-r", str(project / "bundles" / f"{NAME}.image.lock"), "--require-hashes",
                  *plat], ["--only-binary=:all:", f"pip=={pip_version}"]):
        done = subprocess.run([PYTHON, "-m", "pip", "download", "--quiet", "--no-deps", "-d",
                               str(wheels), *what], capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"bench: pip download failed: {done.stderr[-1000:]}")
    pip_whl = next(wheels.glob("pip-*.whl")).name
    shutil.copy(runtime_layer(layout), ctx / "runtime.tar.gz")
    shutil.copytree(bundle_dir, ctx / "bundle")
    cfg = image_config(layout)["config"]
    env = [e for e in cfg.get("Env", []) if not e.startswith(("PATH=", "PYTHONPATH="))]
    env.append("PYTHONPATH=/opt/modelkiln/lib")
    (ctx / "Dockerfile").write_text(
        "# the conventional way: pip install the serving libraries, copy the bundle in\n"
        "FROM bench/base:bookworm AS build\n"
        "COPY wheels/ /wheels/\n"
        f"RUN python3 /wheels/{pip_whl}/pip install --no-cache-dir --no-index --find-links /wheels"
        f" --break-system-packages --root-user-action=ignore{asked}\n"
        "FROM bench/base:bookworm\n"
        "COPY --from=build /usr/local /usr/local\n"
        "ADD runtime.tar.gz /\n"
        "COPY bundle/ /opt/model/\n"
        + "".join(f"ENV {json.dumps(e.split('=', 1)[0])}={json.dumps(e.split('=', 1)[1])}\n"
                  for e in env)
        + "WORKDIR /opt/model\n"
        f"ENTRYPOINT {json.dumps(cfg.get('Entrypoint') or ['/opt/modelkiln/entrypoint.sh'])}\n")
    return asked.strip()


def registry_image_bytes(host: str, repo: str, tag: str) -> int:
    """Sum of the config and layer sizes of HOST/REPO:TAG's manifest as the registry holds it."""
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{tag}", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = json.loads(r.read())
    return int(doc["config"]["size"]) + sum(int(d["size"]) for d in doc["layers"])


def layout_image_bytes(layout: Path) -> tuple[int, int]:
    """(config + layers bytes, layer count) of the layout's image manifest."""
    from modelkiln.artifacts.oci.layout import OciLayout
    from modelkiln.artifacts.oci.media import IMAGE_TAG

    lay = OciLayout(layout)
    doc = json.loads(lay.read_blob(lay.find(IMAGE_TAG)))
    return (int(doc["config"]["size"]) + sum(int(d["size"]) for d in doc["layers"]),
            len(doc["layers"]))


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (median reported)")
    ap.add_argument("--rows", type=int, default=2000, help="rows for the throughput figure")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    if find_registry() is None:
        raise SystemExit("bench: needs docker-registry (apt-get install docker-registry)")
    header("bench_serving: the serving image of registry-v3 (ONNX) in dockerd, beside peers")
    work = workdir("bench-serving-", need_bytes=3 << 30)
    # Others edit src/ while this runs: build, serve and measure the tree as it is now (a change
    # to a runtime file between the two builds would re-make the runtime layer and count in 4).
    snapshot = work / "src"
    shutil.copytree(REPO / "src" / "modelkiln", snapshot / "modelkiln",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for folder in ("schema", "templates"):  # read beside src/ by an editable install
        shutil.copytree(REPO / folder, work / folder)
    sys.path.insert(0, str(snapshot))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(snapshot), *filter(None, [os.environ.get("PYTHONPATH")])])
    from modelkiln.artifacts.oci.media import IMAGE_TAG
    engine, reg = Engine(), DockerRegistry(find_registry() or "", work / "registry")
    rows: list[list[object]] = []
    notes: list[str] = []
    try:
        engine.start()
        reg.start()
        from modelkiln.stages import engine as kengine

        os.environ["DOCKER_HOST"] = engine.host
        client = kengine.client()
        info = client.version()
        print(f"engine  : dockerd {info.get('Version')} (own, --bridge=none), docker CLI "
              f"{subprocess.run([DOCKER, '--version'], capture_output=True, text=True).stdout.strip()}")

        # --- the project, built for real (the image test runs too: DOCKER_HOST is ours)
        project = make_project(work / "project")
        build_env = {**os.environ, "DOCKER_HOST": engine.host}
        setup_s, ran = doit_build(project, build_env)
        print(f"setup   : doit build:{NAME} {setup_s:.1f} s, {len(ran)} tasks")
        layout = project / "dist" / NAME / VERSION / "oci" / BACKEND
        dist = project / "dist" / NAME / VERSION / BACKEND
        bundle_dir = work / "bundle"
        from modelkiln.artifacts.extract import safe_extract

        safe_extract(dist / "bundle.tar.gz", bundle_dir)
        ours = f"bench/{NAME}:{VERSION}-{BACKEND}"
        kengine.load(client, layout, IMAGE_TAG, ours)
        base_layout = project / "bases" / BASE
        kengine.load(client, base_layout, "base", "bench/base:bookworm")

        # --- the conventional image (setup for 1-3)
        ctx = work / "conventional"
        ctx.mkdir()
        asked = conventional_context(ctx, project, layout, bundle_dir)
        t0 = time.perf_counter()
        client.images.build(path=str(ctx), tag="bench/conventional:1", network_mode="none",
                            pull=False, rm=True, forcerm=True)
        conv_build_s = time.perf_counter() - t0
        print(f"setup   : conventional docker build {conv_build_s:.1f} s (pip install {asked})")
        conv = "bench/conventional:1"
        print(f"in the container: cpu_count, affinity, cpu.max, ort intra_op default = "
              f"{ncpu_in(engine, ours)}; on the host: {os.cpu_count()}, "
              f"{len(os.sched_getaffinity(0))}")
        print()

        one = [json.dumps({"text": texts(project / "bundles" / NAME, 1)[0]})]
        many_texts = texts(project / "bundles" / NAME, args.rows)
        many = [json.dumps({"text": t}) for t in many_texts]
        run_cli = [DOCKER, "run", "--rm", "-i", "--network", "none", "--pull", "never"]
        host_cli = [PYTHON, "-m", "modelkiln.runtime", "predict", str(bundle_dir)]

        # --- 1. cold start (and what it is made of: an empty container, the imports)
        cold: dict[str, list[float]] = {k: [] for k in (
            "ours engine first", "ours engine total", "ours cli first", "ours cli wall",
            "conv engine first", "conv cli wall", "host first", "host wall",
            "empty container cli wall", "ours imports", "conv imports")}
        for _ in range(args.runs):
            r = kengine.run(client, ours, ["predict"], (one[0] + "\n").encode())
            assert r.status == 0 and r.first_answer_s is not None, r.stderr
            cold["ours engine first"].append(r.first_answer_s)
            cold["ours engine total"].append(r.total_s)
            f, _last, total, _ = stream([*run_cli, ours, "predict"], one, engine.env)
            cold["ours cli first"].append(f)
            cold["ours cli wall"].append(total)
            r = kengine.run(client, conv, ["predict"], (one[0] + "\n").encode())
            assert r.status == 0 and r.first_answer_s is not None, r.stderr
            cold["conv engine first"].append(r.first_answer_s)
            _f, _last, total, _ = stream([*run_cli, conv, "predict"], one, engine.env)
            cold["conv cli wall"].append(total)
            f, _last, total, _ = stream(host_cli, one)
            cold["host first"].append(f)
            cold["host wall"].append(total)
            t0 = time.perf_counter()
            engine.docker(*run_cli[1:], "--entrypoint", "/bin/true", ours)
            cold["empty container cli wall"].append(time.perf_counter() - t0)
            for who, image in (("ours", ours), ("conv", conv)):
                cold[f"{who} imports"].append(float(engine.docker(
                    *run_cli[1:], "--entrypoint", "python3", image, "-c", IMPORTS).stdout))
        c = {k: med(v) for k, v in cold.items()}
        rows.append(["1. cold start to first answer, s (engine.run)",
                     f"{c['ours engine first']:.2f}",
                     f"conventional image {c['conv engine first']:.2f}; host process "
                     f"{c['host first']:.2f}", "<= 2 s", _met(c["ours engine first"] <= 2)])
        rows.append(["   `docker run --rm -i ... predict`, CLI wall s", f"{c['ours cli wall']:.2f}",
                     f"conventional image {c['conv cli wall']:.2f}; host process "
                     f"{c['host wall']:.2f}", "", ""])
        rows.append(["   import numpy+onnxruntime+tokenizers in it, s", f"{c['ours imports']:.2f}",
                     f"conventional image (pip's .pyc) {c['conv imports']:.2f}", "", ""])
        notes.append("cold-start medians (s): " + "; ".join(f"{k} {v:.2f}" for k, v in c.items()))
        pyc = engine.docker(*run_cli[1:], "--entrypoint", "python3", conv, "-c",
                            PYC.format(root="/usr/local")).stdout.split()
        own = engine.docker(*run_cli[1:], "--entrypoint", "python3", ours, "-c",
                            PYC.format(root="/opt/modelkiln/env")).stdout.split()
        notes.append(f"bytecode: the conventional image holds {int(pyc[1]) / MB:.1f} MB of .pyc in "
                     f"{pyc[0]} files under /usr/local; modelkiln's environment layer "
                     f"{int(own[1]) / MB:.1f} MB in {own[0]} files (compiled by image_env)")

        # --- 2. throughput (and the same with one onnxruntime intra-op thread)
        from modelkiln.runtime import predict

        pred = predict.load(bundle_dir)
        pred.answer(many_texts[0])
        one_thread = patched_predict(layout, work / "predict_1thread.py")
        contenders: dict[str, Any] = {
            "in-process": lambda: inproc(pred, many_texts),
            "ours": lambda: steady(*stream([*run_cli, ours, "predict"], many, engine.env)),
            "host cli": lambda: steady(*stream(host_cli, many)),
            "conv": lambda: steady(*stream([*run_cli, conv, "predict"], many, engine.env))}
        if one_thread is not None:
            mount = f"{one_thread}:/opt/modelkiln/lib/modelkiln/runtime/predict.py:ro"
            pred1 = load_module(one_thread).load(bundle_dir)
            pred1.answer(many_texts[0])
            contenders["in-process, 1 thread"] = lambda: inproc(pred1, many_texts)
            contenders["ours, 1 thread"] = lambda: steady(*stream(
                [*run_cli, "-v", mount, ours, "predict"], many, engine.env))
        thr: dict[str, list[float]] = {k: [] for k in contenders}
        for _ in range(args.runs):
            for who, measure in contenders.items():
                thr[who].append(measure())
        out = stream([*run_cli, ours, "predict"], many, engine.env)[3]
        same = [json.loads(x)["labels"] for x in out] == \
            [pred.answer(t)["labels"] for t in many_texts]
        t = {k: med(v) for k, v in thr.items()}
        rows.append([f"2. predict throughput, rows/s ({args.rows} rows, steady)",
                     f"{t['ours']:.0f} ({t['ours'] / t['in-process']:.2f}x)",
                     f"in-process answer() {t['in-process']:.0f}; host CLI {t['host cli']:.0f}; "
                     f"conventional image {t['conv']:.0f}", ">= 0.9x in-process",
                     _met(t["ours"] >= 0.9 * t["in-process"])])
        if one_thread is not None:
            rows.append(["   the same, intra_op_num_threads=1 (patched predict.py)",
                         f"{t['ours, 1 thread']:.0f} "
                         f"({t['ours, 1 thread'] / t['in-process, 1 thread']:.2f}x)",
                         f"in-process answer() {t['in-process, 1 thread']:.0f}", "", ""])
        notes.append("throughput runs (rows/s): " + "; ".join(
            f"{k} " + "/".join(f"{x:.0f}" for x in v) for k, v in thr.items()))
        notes.append(f"container answers' labels identical to in-process: {same}")

        # --- 3. size; 4. rebuild + push
        full = kpush(layout, f"{reg.host}/bench/{NAME}:{VERSION}-{BACKEND}")
        ours_bytes, nlayers = layout_image_bytes(layout)
        engine.docker("tag", conv, f"{reg.host}/bench/conventional:1")
        t0 = time.perf_counter()
        engine.docker("push", f"{reg.host}/bench/conventional:1")
        conv_push_s = time.perf_counter() - t0
        conv_bytes = registry_image_bytes(reg.host, "bench/conventional", "1")
        ours_size, conv_size = engine.size(ours), engine.size(conv)
        rows.append(["3. image bytes in the registry (gzip layers), MB",
                     f"{ours_bytes / MB:.1f} ({nlayers} layers)",
                     f"conventional {conv_bytes / MB:.1f}", "<= conventional",
                     _met(ours_bytes <= conv_bytes)])
        rows.append(["   `docker image inspect` Size, MB", f"{ours_size / MB:.1f}",
                     f"conventional {conv_size / MB:.1f}", "<= conventional",
                     _met(ours_size <= conv_size)])
        notes.append(f"full push: modelkiln {full.bytes_uploaded / MB:.1f} MB, "
                     f"{full.blobs_uploaded} blobs; docker push of the conventional image "
                     f"{conv_push_s:.1f} s")

        spec = project / "bundles" / f"{NAME}.yaml"
        text = spec.read_text()
        assert "  min_support: 5\n" in text
        spec.write_text(text.replace("  min_support: 5\n",
                                     "  min_support: 5\n  values: {complication: 0.42}\n", 1))
        rebuild_s, ran = doit_build(project, build_env)
        t0 = time.perf_counter()
        inc = kpush(layout, f"{reg.host}/bench/{NAME}:{VERSION}-{BACKEND}", force=True)
        inc_push_s = time.perf_counter() - t0
        new_bytes, _n = layout_image_bytes(layout)
        share = 100 * inc.bytes_uploaded / new_bytes
        rows.append(["4. push after a thresholds edit, bytes (% of image)",
                     f"{inc.bytes_uploaded} ({share:.3f} %)",
                     f"image {new_bytes / MB:.1f} MB", "< 1 %", _met(share < 1)])
        notes.append(f"rebuild after the edit: {rebuild_s:.1f} s ({', '.join(ran)}); push "
                     f"{inc_push_s:.2f} s, {inc.blobs_uploaded} blobs sent, "
                     f"{inc.blobs_skipped} already there")
        report = project / "build" / NAME / f"imagetest-{BACKEND}" / "imagetest.json"
        if report.is_file():
            rep = json.loads(report.read_text())
            notes.append("the build's own imagetest: first answer "
                         f"{rep.get('startup_to_first_answer_s')} s, "
                         f"{rep.get('container_rows_per_s')} rows/s in the container vs "
                         f"{rep.get('host_rows_per_s')} on the host ({rep.get('rows')} rows, "
                         "start-up included)")
    finally:
        reg.stop()
        engine.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"figures: medians of {args.runs} runs; 2-core shared VM, expect noise")
    table(["figure", "modelkiln", "peer (same run)", "goal", "met?"], rows)
    for n in notes:
        print(f"- {n}")


IMPORTS = ("import time; t = time.perf_counter(); import numpy, onnxruntime, tokenizers; "
           "print(time.perf_counter() - t)")
PYC = ("import pathlib; p = list(pathlib.Path('{root}').rglob('*.pyc')); "
       "print(len(p), sum(x.stat().st_size for x in p))")
SET_THREADS = "    options.log_severity_level = 3\n"


def inproc(pred: Any, items: list[str]) -> float:
    t0 = time.perf_counter()
    for text in items:
        pred.answer(text)
    return len(items) / (time.perf_counter() - t0)


def patched_predict(layout: Path, out: Path) -> Path | None:
    """The image's own runtime/predict.py with `intra_op_num_threads = 1` set on the session
    options (a diagnostic: bind-mounted over the image's copy, and loaded here); None when the
    line it hooks onto is gone (predict.py changed)."""
    with tarfile.open(runtime_layer(layout)) as tar:
        member = next(m for m in tar.getmembers()
                      if m.name.endswith("modelkiln/runtime/predict.py"))
        src = tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    if SET_THREADS not in src or "intra_op_num_threads" in src:
        return None
    out.write_text(src.replace(SET_THREADS, SET_THREADS + "    options.intra_op_num_threads = 1\n"))
    out.chmod(0o644)
    return out


def load_module(path: Path) -> Any:
    """`path` as a module inside modelkiln.runtime (its relative imports resolve there)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("modelkiln.runtime._bench_predict", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def kpush(layout: Path, target: str, force: bool = False) -> Any:
    from modelkiln.artifacts.oci.media import IMAGE_TAG
    from modelkiln.publish.oci import push

    return push(layout, IMAGE_TAG, target, force=force)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    main()
