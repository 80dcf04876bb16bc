"""Durability under crashes and damage, with a real server on loopback. Prints a table.

    python benchmarks/recovery.py                 # all three runs (1 GiB log: ~3 GB of disk, minutes)
    python benchmarks/recovery.py --log-gib 0.25  # a smaller log
    python benchmarks/recovery.py --baseline-ref c9ce2e8   # also recover the same log with that commit

1. kill -9: 4 clients learn concurrently until 301 updates are acknowledged, the server is
   SIGKILLed, restarted; every acknowledged version must be there (lost = 0).
2. corruption: one byte flipped at 40 % of the newest log segment of that state; the restarted
   server must refuse that model (naming file, byte offset, versions) and keep serving the
   other one; ``sjff state repair --truncate`` then cuts it and the model resumes.
3. recovery of a large log: ``--log-gib`` of update records (1,024 images each, written in the
   format-1 layout that earlier releases wrote as one segment, so the same files can be
   recovered by an older commit too), then the server's start: seconds to ready, peak RSS
   (VmHWM) against the same server with an empty state.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import serving_utils as su  # noqa: E402
from common import print_table  # noqa: E402


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def kill9_run(repo: Path, state: Path, token: Path, images, labels, target_acks: int = 301) -> dict:
    import grpc
    from sjff_client import Client
    from sjff_server.harness import ServerProcess

    srv = ServerProcess(repo, state_dir=state, token_file=token, metrics=False).start()
    acked: dict[int, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def learner(w: int) -> None:
        c = Client(srv.target, token_file=token, timeout=30)
        i = w
        while not stop.is_set():
            try:
                r = c.learn(images[i % 256 : i % 256 + 1], [labels[i % 256]], seed=70_000 + i)
            except grpc.RpcError:
                return
            with lock:
                acked[r.version] = 70_000 + i
                if len(acked) >= target_acks:
                    stop.set()
            i += 4

    threads = [threading.Thread(target=learner, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    stop.wait(300)
    srv.kill()
    for t in threads:
        t.join(30)
    srv.restart()
    try:
        with Client(srv.target, token_file=token) as c:
            current = c.list_versions(model="mnist").current_version
    finally:
        srv.stop()
    lost = [v for v in acked if v > current]
    return {"acked": len(acked), "max_acked": max(acked), "resumed": current, "lost": len(lost)}


def corruption_run(repo: Path, state: Path, token: Path, images, labels, acks: int = 301) -> dict:
    """The issue's reproduction: acknowledged updates, kill -9, a byte flipped at 40 % of the
    newest segment, restart, then the operator's repair."""
    import grpc
    from sjff_client import Client
    from sjff_server.harness import ServerProcess
    from sjff_server.storage.durability import UpdateLog

    args = ["--snapshot-every", "0", "--snapshot-interval", "0"]
    srv = ServerProcess(repo, state_dir=state, token_file=token, metrics=False, extra_args=args).start()
    try:
        with Client(srv.target, token_file=token) as c:
            for i in range(acks):
                before = c.learn(images[i % 256 : i % 256 + 1], [labels[i % 256]], seed=80_000 + i).version
    finally:
        srv.kill()
    segment = UpdateLog(state / "mnist" / "1" / "log").segments()[-1][1]
    data = bytearray(segment.read_bytes())
    pos = int(len(data) * 0.4)
    data[pos] ^= 0x01
    segment.write_bytes(bytes(data))
    srv.restart()
    try:
        with Client(srv.target) as c:
            try:
                c.infer(images[:1], model="mnist")
                refusal = "NOT REFUSED"
            except grpc.RpcError as exc:
                refusal = f"{exc.code().name}: {exc.details()}"
            other_ok = c.infer(images[:4], model="snn").label.shape == (4,)
    finally:
        srv.stop()
    cli = [sys.executable, "-m", "spikingjelly_ff.cli", "state", "repair", str(state), "--model", "mnist"]
    fixed = subprocess.run([*cli, "--truncate"], capture_output=True, text=True, timeout=600)
    srv.restart()
    try:
        with Client(srv.target, token_file=token) as c:
            resumed = c.list_versions(model="mnist").current_version
    finally:
        srv.stop()
    return {
        "flipped_byte": pos,
        "segment_bytes": len(data),
        "version_before": before,
        "refusal": refusal,
        "other_model_served": other_ok,
        "repair_rc": fixed.returncode,
        "repair_said": fixed.stderr.strip().splitlines()[-1] if fixed.stderr.strip() else "",
        "resumed": resumed,
    }


def write_big_log(state: Path, gib: float, in_features: int, artifact: Path) -> tuple[int, int]:
    """Format-1 log (one segment, as earlier releases wrote it) of 1,024-image updates."""
    from sjff_server.storage.records import MAGIC_V1, UPDATE, Update, UpdateRecord, encode_payload
    from sjff_server.storage.snapshots import atomic_write
    from sjff_server.storage.state import file_sha256

    d = state / "mnist" / "1"
    (d / "log").mkdir(parents=True, exist_ok=True)
    atomic_write(
        d / "artefact.json", f'{{"sha256": "{file_sha256(artifact)}", "model": "mnist", "version": "1"}}'.encode()
    )
    images, labels = su.mnist_test(256)
    x = np.tile(su.as_float(images), (4, 1))  # 1,024 real digits
    y = np.tile(labels, 4)
    pos = np.ones(1024, np.float32)
    pos[1::2] = 0.0
    y_neg = (y + 1 + np.arange(1024) % 9) % 10
    y = np.where(pos > 0, y, y_neg)
    target = int(gib * (1 << 30))
    written, v = 0, 0
    with open(d / "log" / f"{0:020d}.log", "wb") as fh:
        fh.write(MAGIC_V1)
        while written < target:
            v += 1
            p = encode_payload(UpdateRecord(UPDATE, v, time.time(), Update(x, y, pos, v, 0.01)))
            fh.write(struct.pack("<II", len(p), zlib.crc32(p)) + p)
            written += len(p) + 8
        fh.flush()
        os.fsync(fh.fileno())
    return v, written


def start_and_measure(repo: Path, state: Path, python: str, cwd: Path, env: dict) -> dict:
    """Start ``python -m sjff_server`` from ``cwd``; seconds to ready and VmHWM once ready."""
    tmp = Path(tempfile.mkdtemp(prefix="sjff-rec-"))
    ready = tmp / "ready.json"
    cmd = [python, "-m", "sjff_server", "--model-repository", str(repo), "--state-dir", str(state)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1", "--ready-file", str(ready)]
    cmd += ["--snapshot-interval", "0", "--log-format", "text"]
    t0 = time.perf_counter()
    with open(tmp / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak = 0.0
        while not ready.exists() and proc.poll() is None:
            peak = max(peak, vm_hwm_mib(proc.pid))
            time.sleep(0.05)
        seconds = time.perf_counter() - t0
        ok = ready.exists()
        if ok:
            peak = max(peak, vm_hwm_mib(proc.pid))
        proc.kill()
        proc.wait()
    text = (tmp / "server.log").read_text(errors="replace")
    shutil.rmtree(tmp, ignore_errors=True)
    resumed = next((ln.split("resumed at version")[1].split()[0] for ln in text.splitlines() if "resumed at" in ln), "")
    return {"ok": ok, "seconds": round(seconds, 1), "peak_rss_mib": round(peak), "resumed": resumed, "log": text[-800:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log-gib", type=float, default=1.0)
    ap.add_argument(
        "--baseline-ref", help="also recover the large log with this git commit (e.g. the previous release)"
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["kill9", "corruption", "large"])
    args = ap.parse_args()
    models = su.trained_models()
    images, labels = su.mnist_test(256)
    work = Path(tempfile.mkdtemp(prefix="sjff-recovery-"))
    token = su.write_token(work / "token.txt")
    repo = su.make_repository(work / "repo", {"mnist": models["analog"], "snn": models["spike"]})
    rows = []
    try:
        if "kill9" not in args.skip:
            k = kill9_run(repo, work / "state", token, images, labels)
            rows.append(
                [
                    "kill -9 during learning",
                    f"{k['acked']} acked (max v{k['max_acked']})",
                    f"resumed at v{k['resumed']}, lost {k['lost']}",
                ]
            )
            if "corruption" not in args.skip:
                c = corruption_run(repo, work / "state-corrupt", token, images, labels)
                rows.append(
                    [
                        "byte flipped at 40 % of newest segment",
                        f"v{c['version_before']}, byte {c['flipped_byte']} of {c['segment_bytes']}",
                        c["refusal"][:300],
                    ]
                )
                rows.append(["  other model served meanwhile", "", str(c["other_model_served"])])
                rows.append(["  sjff state repair --truncate", f"rc {c['repair_rc']}", c["repair_said"][:200]])
                rows.append(["  restart after repair", "", f"resumed at v{c['resumed']}"])
        if "large" not in args.skip:
            big = work / "big-state"
            versions, size = write_big_log(big, args.log_gib, 784, repo / "mnist" / "1" / "model.onnx")
            env = dict(os.environ)
            env.pop("SJFF_TOKEN", None)
            empty = start_and_measure(repo, work / "empty-state", sys.executable, ROOT, env)
            rows.append(
                ["server start, empty state", "", f"{empty['seconds']} s, peak RSS {empty['peak_rss_mib']} MiB"]
            )
            r = start_and_measure(repo, big, sys.executable, ROOT, env)
            rows.append(
                [
                    f"recover {size / 2**30:.2f} GiB log ({versions} x 1,024 images)",
                    "this tree",
                    f"{r['seconds']} s, peak RSS {r['peak_rss_mib']} MiB, resumed v{r['resumed']}",
                ]
            )
            if args.baseline_ref:
                old = work / "baseline"
                subprocess.run(
                    ["git", "worktree", "add", "--detach", str(old), args.baseline_ref],
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                )
                try:
                    shutil.rmtree(big / "mnist" / "1" / "snapshots", ignore_errors=True)
                    shutil.rmtree(big / "snn", ignore_errors=True)  # written by this tree's format
                    for seg in (big / "mnist" / "1" / "log").glob("*.log"):  # the new server's fresh segment
                        if seg.name != f"{0:020d}.log":
                            seg.unlink()
                    env_old = {**env, "PYTHONPATH": f"{old / 'server'}:{old / 'clients' / 'python'}:{old}"}
                    b = start_and_measure(repo, big, sys.executable, old, env_old)
                    if not b["ok"]:
                        print(b["log"], file=sys.stderr)
                    rows.append(
                        [
                            "  same log, " + args.baseline_ref,
                            "baseline",
                            f"{b['seconds']} s, peak RSS {b['peak_rss_mib']} MiB, resumed v{b['resumed']}"
                            + ("" if b["ok"] else " (did not start)"),
                        ]
                    )
                finally:
                    subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, capture_output=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table("Durability: crash, corruption, recovery (real server on loopback)", ["run", "input", "result"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
