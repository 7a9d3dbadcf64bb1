"""Store and registry trials of the reliability campaign: SIGKILL through a real build, prune
racing publish, disk full on a real tmpfs, and drift mutations against both verifies.

Each function returns one `Row`; `run(quick)` returns them all. Children are forked (so a crash is
a real SIGKILL or a real exception, with no cleanup in the parent's address space); builds and
prunes run as real `kiln` processes.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from common import BIN, Row, fork_call

AGENT = "registry"
NAME = "registry-v3-pytorch"


def run(quick: bool) -> list[Row]:
    n = (lambda full, small: small if quick else full)  # noqa: E731
    return [build_kills(n(30, 3)), prune_races(n(30, 6)), disk_full(n(50, 8)), drift(n(300, 40))]


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------ SIGKILL during build
def build_kills(trials: int) -> Row:
    """Kill `kiln build` of a small real project at a random instant, re-run it, and compare the
    bundle with a clean build's (tarballs are deterministic, so byte equality is the check)."""
    from helpers import make_inputs, make_project

    row = Row("SIGKILL at random instants through `kiln build`")
    with scratch("kiln-rel-build-") as base:
        make_inputs(base / "inputs")
        clean = make_project(base / "clean", base / "inputs")
        t0 = time.monotonic()
        ref = _kiln(["build"], clean.root)
        span = time.monotonic() - t0
        if ref.returncode != 0:
            row.crashed(f"clean build failed: {ref.stderr[-300:]}")
            return row
        want = _tarballs(clean.root)
        project = make_project(base / "p", base / "inputs")
        rng = random.Random(1)
        for i in range(trials):
            row.trials += 1
            for d in ("build", "dist", ".kiln"):
                shutil.rmtree(project.root / d, ignore_errors=True)
            proc = subprocess.Popen([str(BIN / "kiln"), "build"], cwd=project.root,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            time.sleep(rng.uniform(0.05, span))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            again = _kiln(["build"], project.root)
            if "Traceback" in again.stdout + again.stderr:
                row.crashed(f"trial {i}: traceback in the re-run")
            if again.returncode != 0:
                row.violation(f"trial {i}: re-run exited {again.returncode}: {again.stderr[-200:]}")
            elif _tarballs(project.root) != want:
                row.violation(f"trial {i}: re-run's bundle differs from a clean build's")
    return row


def _kiln(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kiln"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def _tarballs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("dist/**/*.tar.gz"))}


# ------------------------------------------------------------------------ prune racing publish
def prune_races(trials: int) -> Row:
    """A publish (a no-op re-publish of an older version, or a new one) and `prune --keep 1` start
    together; afterwards the registry must name a version that exists and verifies."""
    from distfactory import make_dist
    from modelkiln import registry as R
    from modelkiln.store import ModelStore

    row = Row("prune racing publish")
    rng = random.Random(2)
    with scratch("kiln-rel-prune-") as base:
        dists = {v: make_dist(base / "dists", version=v, seed=i) for i, v in
                 enumerate(("1.0.0", "2.0.0", "3.0.0", "4.0.0"))}
        for i in range(trials):
            row.trials += 1
            root, configs = base / f"t{i}" / "store", base / f"t{i}" / "configs"
            for v in ("1.0.0", "2.0.0", "3.0.0"):
                _release(dists[v], root, configs, v)
            target = rng.choice(["2.0.0", "4.0.0"])

            def publisher(target: str = target, root: Path = root, configs: Path = configs) -> None:
                time.sleep(rng.uniform(0, 0.03))
                _release(dists[target], root, configs, target)

            def pruner(root: Path = root, configs: Path = configs) -> None:
                time.sleep(rng.uniform(0, 0.03))
                store = ModelStore(root)
                store.prune(AGENT, 1, protect=lambda: R.store_versions_in_use(
                    root, AGENT, registry_dir=configs))

            results = _together([publisher, pruner])
            for status, tb in results:
                if tb:
                    row.crashed(tb.strip().splitlines()[-1])
                elif status != 0:
                    row.violation(f"trial {i}: a racer failed (status {status})")
            (entry,) = [e for e in R.list_entries(include_non_installed=True,
                                                  registry_dir=configs) if e.name == NAME]
            store_path = Path(entry.artifacts.store or "")
            if entry.version != target or not store_path.is_dir():
                row.violation(f"trial {i}: registry names {entry.version} at {store_path}, "
                              "which is gone")
                continue
            try:
                R.verify(NAME, registry_dir=configs)
                store = ModelStore(root)
                for info in store.list_versions(AGENT):
                    store.verify(AGENT, info.version)
                assert store.get_current(AGENT) is not None
            except Exception as exc:  # a broken promise, whatever its type
                row.violation(f"trial {i}: {type(exc).__name__}: {str(exc)[:120]}")
    return row


def _release(dist: Path, root: Path, configs: Path, version: str) -> None:
    """What `kiln publish` does for the store and the registry (publish/release.py)."""
    from modelkiln import registry as R
    from modelkiln.publish.store import publish_to_store
    from modelkiln.store import ModelStore

    store = ModelStore(root)
    with store.holding(AGENT):
        r = publish_to_store(dist, root, AGENT, version, {}, store=store)
        R.record_discovered(R.RegistryEntry(NAME, backend="pytorch", version=version,
                                            artifacts=R.Artifacts(store=str(r.path))),
                            registry_dir=configs)


def _together(fns: list[Callable[[], None]]) -> list[tuple[int, str]]:
    """Fork every function at once; (status, traceback) of each."""
    with tempfile.TemporaryDirectory() as d:
        pids = []
        for k, fn in enumerate(fns):
            pid = os.fork()
            if pid == 0:
                status, tb = fork_call(fn)
                Path(d, str(k)).write_text(tb)
                os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 9)
            pids.append(pid)
        out = []
        for k, pid in enumerate(pids):
            _, status = os.waitpid(pid, 0)
            tb_file = Path(d, str(k))
            out.append((status, tb_file.read_text() if tb_file.exists() else ""))
        return out


# ------------------------------------------------------------------------------ disk full
def disk_full(trials: int) -> Row:
    """On a real 4 MiB tmpfs filled to a random level, a random store or registry write either
    succeeds or fails with one `kiln:` line; either way `current` and every listed version
    verify, the registry still loads, and once space is back the same write converges."""
    row = Row("disk full on a small tmpfs (store + registry writes)")
    with scratch("kiln-rel-full-") as base:
        mnt = base / "mnt"
        mnt.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            row.notes.append(f"cannot mount a tmpfs ({mounted.stderr.strip()}): not run")
            return row
        try:
            from distfactory import make_dist

            rng = random.Random(3)
            small = make_dist(base / "d", version="1.0.0", seed=1, weights=150_000)
            bigs = [make_dist(base / "d", version=f"2.0.{k}", seed=10 + k,
                              weights=rng.randint(200_000, 1_500_000)) for k in range(6)]
            for i in range(trials):
                row.trials += 1
                for entry in mnt.iterdir():
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                _disk_full_trial(i, mnt, small, rng.choice(bigs), rng, row)
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    return row


def _disk_full_trial(i: int, mnt: Path, small: Path, big: Path, rng: random.Random,
                     row: Row) -> None:
    from modelkiln import registry as R
    from modelkiln.errors import KilnError
    from modelkiln.store import ModelStore

    root, configs = mnt / "store", mnt / "configs"
    _release(small, root, configs, "1.0.0")
    filler = mnt / "filler"
    free = shutil.disk_usage(mnt).free
    leave = rng.randint(0, min(free, 1_800_000))
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        f.write(b"\0" * max(0, free - leave))
    version = big.parent.parent.name
    ops: dict[str, Callable[[], object]] = {
        "publish": lambda: _release(big, root, configs, version),
        "registry lock": lambda: R.lock(NAME, set_expected=True, registry_dir=configs),
        "pin": lambda: ModelStore(root).pin(AGENT, "1.0.0", "x" * rng.randint(0, 200_000)),
        "prune": lambda: ModelStore(root).prune(AGENT, 0),
        "rollback": lambda: ModelStore(root).rollback(AGENT, "1.0.0"),
    }
    name = rng.choice(sorted(ops))
    try:
        ops[name]()
    except KilnError as exc:
        if "\n" in str(exc) and "drift" not in str(exc):
            row.violation(f"trial {i} {name}: a multi-line error: {str(exc)[:120]}")
    except Exception as exc:
        row.crashed(f"trial {i} {name}: {type(exc).__name__}: {str(exc)[:120]}")
    _check_consistent(i, name, root, configs, row)
    filler.unlink()
    try:
        ops[name]()  # space is back: the same write must now converge
    except Exception as exc:
        row.violation(f"trial {i} {name} after freeing space: {type(exc).__name__}: "
                      f"{str(exc)[:120]}")
    _check_consistent(i, name, root, configs, row)


def _check_consistent(i: int, op: str, root: Path, configs: Path, row: Row) -> None:
    from modelkiln import registry as R
    from modelkiln.store import ModelStore

    try:
        store = ModelStore(root)
        if store.get_current(AGENT) is None:
            raise AssertionError("no current version")
        for info in store.list_versions(AGENT):
            if info.problem:
                raise AssertionError(f"{info.version}: {info.problem}")
            store.verify(AGENT, info.version)
        R.layers(configs)
    except Exception as exc:
        row.violation(f"trial {i} {op}: {type(exc).__name__}: {str(exc)[:160]}")


# ------------------------------------------------------------------------------ drift
def drift(trials: int) -> Row:
    """A random mutation of a published, registered version: both `kiln store verify` and
    `kiln registry verify` must say drift (exit 2); for the controls (nothing changed, only mtimes
    or permissions changed) both must say ok. The version is restored between trials."""
    from distfactory import make_dist
    from modelkiln import registry as R
    from modelkiln.errors import DriftError
    from modelkiln.store import ModelStore

    row = Row("drift mutations (incl. mtime-only, chmod and no-change controls)")
    rng = random.Random(4)
    with scratch("kiln-rel-drift-") as base:
        dist = make_dist(base / "d", version="1.0.0", seed=1, weights=300_000)
        root, configs = base / "store", base / "configs"
        _release(dist, root, configs, "1.0.0")
        vdir = root / AGENT / "versions" / "1.0.0"
        backup = base / "backup"
        shutil.copytree(vdir, backup, symlinks=True)
        store = ModelStore(root)
        names = sorted(MUTATIONS)
        for i in range(trials):
            row.trials += 1
            name = names[i % len(names)]
            control = name.startswith("control")
            try:
                MUTATIONS[name](vdir, rng)
            except Exception as exc:
                row.crashed(f"{name}: mutation failed: {exc}")
                continue
            for which, check in (("store", lambda: store.verify(AGENT, "1.0.0")),
                                 ("registry", lambda: R.verify(NAME, registry_dir=configs))):
                try:
                    check()
                    if not control:
                        row.violation(f"{name}: {which} verify said ok")
                except DriftError as exc:
                    if control:
                        row.violation(f"{name}: {which} verify said drift: {str(exc)[:100]}")
                except Exception as exc:
                    row.crashed(f"{name}: {which} verify: {type(exc).__name__}: {str(exc)[:100]}")
            if vdir.is_symlink():
                vdir.unlink()
            else:
                shutil.rmtree(vdir)
            shutil.copytree(backup, vdir, symlinks=True)
    return row


def _payload(vdir: Path, rng: random.Random) -> Path:
    files = sorted(p for p in (vdir / "bundle").rglob("*") if p.is_file())
    return rng.choice(files)


def _keep_mtime(path: Path, edit: Callable[[Path], None]) -> None:
    st = path.stat()
    edit(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _flip(vdir: Path, rng: random.Random) -> None:
    path = _payload(vdir, rng)

    def edit(p: Path) -> None:
        with open(p, "r+b") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                f.write(b"x")
                return
            at = rng.randrange(size)
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))

    _keep_mtime(path, edit)


def _truncate(vdir: Path, rng: random.Random) -> None:
    path = _payload(vdir, rng)
    _keep_mtime(path, lambda p: os.truncate(p, rng.randrange(max(1, p.stat().st_size))))


def _append(vdir: Path, rng: random.Random) -> None:
    with open(_payload(vdir, rng), "ab") as f:
        f.write(os.urandom(rng.randint(1, 64)))


def _delete(vdir: Path, rng: random.Random) -> None:
    _payload(vdir, rng).unlink()


def _add(vdir: Path, rng: random.Random) -> None:
    where = rng.choice([vdir, vdir / "bundle", vdir / "bundle" / "tokenizer"])
    where.mkdir(exist_ok=True)
    (where / f"extra-{rng.randrange(1000)}.bin").write_bytes(os.urandom(10))


def _rename(vdir: Path, rng: random.Random) -> None:
    path = _payload(vdir, rng)
    path.rename(path.with_name(path.name + ".old"))


def _symlink_file(vdir: Path, rng: random.Random) -> None:
    path = _payload(vdir, rng)
    copy = vdir.parent.parent / f"copy-{rng.randrange(10**6)}"
    shutil.copy2(path, copy)
    path.unlink()
    os.symlink(copy, path)


def _symlink_version(vdir: Path, rng: random.Random) -> None:
    copy = vdir.parent.parent / f"vcopy-{rng.randrange(10**6)}"
    shutil.copytree(vdir, copy, symlinks=True)
    shutil.rmtree(vdir)
    os.symlink(copy, vdir)


def _fifo(vdir: Path, rng: random.Random) -> None:
    path = _payload(vdir, rng)
    path.unlink()
    os.mkfifo(path)


def _swap(vdir: Path, rng: random.Random) -> None:
    files = sorted(p for p in (vdir / "bundle").rglob("*") if p.is_file())
    a, b = rng.sample(files, 2)
    da, db = a.read_bytes(), b.read_bytes()
    if da == db:
        db += b" "
    a.write_bytes(db)
    b.write_bytes(da)


def _manifest_edit(key: str) -> Callable[[Path, random.Random], None]:
    def mutate(vdir: Path, rng: random.Random) -> None:
        import json

        path = vdir / "manifest.json"
        data = json.loads(path.read_bytes())
        if key == "metadata":
            data["metadata"] = {"edited": rng.randrange(1000)}
        elif key == "hash":
            row = rng.choice(data["files"])
            row["sha256"] = "0" * 64
        elif key == "version":
            data["version"] = "9.9.9"
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return mutate


def _manifest_delete(vdir: Path, rng: random.Random) -> None:
    (vdir / "manifest.json").unlink()


def _control_nothing(vdir: Path, rng: random.Random) -> None:
    pass


def _control_mtime(vdir: Path, rng: random.Random) -> None:
    path = _payload(vdir, rng)
    when = time.time_ns() - rng.randrange(10**15)
    os.utime(path, ns=(when, when))


def _control_chmod(vdir: Path, rng: random.Random) -> None:
    os.chmod(_payload(vdir, rng), rng.choice([0o600, 0o640, 0o444, 0o755]))


def _control_rewrite_same(vdir: Path, rng: random.Random) -> None:
    path = _payload(vdir, rng)
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)  # a new inode with identical bytes


MUTATIONS: dict[str, Callable[[Path, random.Random], None]] = {
    "flip a bit (same size, same mtime)": _flip,
    "truncate (same mtime)": _truncate,
    "append bytes": _append,
    "delete a file": _delete,
    "add a file": _add,
    "rename a file": _rename,
    "file -> symlink to identical copy": _symlink_file,
    "version dir -> symlink to identical copy": _symlink_version,
    "file -> fifo": _fifo,
    "swap two files": _swap,
    "manifest: edit metadata": _manifest_edit("metadata"),
    "manifest: rewrite a hash": _manifest_edit("hash"),
    "manifest: rename the version": _manifest_edit("version"),
    "manifest: delete": _manifest_delete,
    "control: no change": _control_nothing,
    "control: mtime only": _control_mtime,
    "control: chmod only": _control_chmod,
    "control: same bytes, new inode": _control_rewrite_same,
}
