"""A private SLURM cluster for the tests: munged, slurmctld and one slurmd per node (``slurmd
-N NAME``: several nodes on this one machine, each with a port, spool and log of its own) with a
config, state, logs, socket and ports of their own in one folder, stopped by the pids it started.
Several nodes are named ``<host>``, ``<host>-2``, ...: Lightning's MASTER_ADDR is the first
node's name in the job's node list, which must resolve (SLURM's NodeName ``localhost`` would
be the host itself twice); every node is this machine, at 127.0.0.1.

``python tests/slurm_cluster.py FOLDER [NODES]`` starts one by hand and prints the
``SLURM_CONF`` to export (README, "The SLURM path on one machine"); Ctrl-C stops it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sinfo", "sbatch")
CRED_EXPIRE_S = 10  # a requeued job waits this long (SLURM's default: 120 s)


def why_not() -> str | None:
    """Why a private cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "a private SLURM cluster needs root (slurmd runs jobs as their user)"
    missing = [d for d in TOOLS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        return f"{', '.join(missing)} not installed (scripts/setup.sh installs slurm-wlm and munge)"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """``NodeName=<host> CPUs=... RealMemory=...`` as ``slurmd -C`` reports this machine."""
    out = subprocess.run([_tool("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    (line,) = [x for x in out.splitlines() if x.startswith("NodeName=")]
    return line.split(" ", 1)[1]  # NodeName set below from hostname -s


@dataclass
class Cluster:
    root: Path
    nodes: int = 1
    conf: Path = field(init=False)
    env: dict[str, str] = field(init=False)  # what a client (sbatch, submitit) needs
    processes: list[subprocess.Popen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conf = self.root / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    def node_names(self) -> list[str]:
        """The nodes' names: this host's, then ``<host>-2``, ``<host>-3``, ... (SLURM sorts a
        job's node list: the host's name, which resolves, comes first)."""
        host = socket.gethostname().split(".")[0]
        return [host, *(f"{host}-{i}" for i in range(2, self.nodes + 1))]

    def start(self, timeout_s: float = 60) -> Cluster:
        root, host, names = self.root, socket.gethostname().split(".")[0], self.node_names()
        for sub in ("state", "log", "munge", *(f"spool/{name}" for name in names)):
            (root / sub).mkdir(parents=True, exist_ok=True)
        munge = root / "munge"
        munge.chmod(0o700)
        key, sock = munge / "munge.key", munge / "munge.socket"
        subprocess.run([_tool("mungekey"), "--create", f"--keyfile={key}"], check=True)
        key.chmod(0o400)
        self._spawn([_tool("munged"), "--foreground", "--force", f"--key-file={key}",
                     f"--socket={sock}", f"--pid-file={munge}/munged.pid",
                     f"--log-file={root}/log/munged.log", f"--seed-file={munge}/munged.seed"],
                    "munged")  # fmt: skip
        self._wait(lambda: sock.exists(), timeout_s, "munged's socket")
        self.conf.write_text(
            "\n".join([
                "ClusterName=reslabtest",
                f"SlurmctldHost={host}",
                f"SlurmctldPort={_free_port()}",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"AuthInfo=socket={sock},cred_expire={CRED_EXPIRE_S}",
                f"StateSaveLocation={root}/state",
                f"SlurmdSpoolDir={root}/spool/%n",
                f"SlurmctldPidFile={root}/slurmctld.pid",
                f"SlurmdPidFile={root}/slurmd.%n.pid",
                f"SlurmctldLogFile={root}/log/slurmctld.log",
                f"SlurmdLogFile={root}/log/slurmd.%n.log",
                "SelectType=select/cons_tres",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "MpiDefault=none",
                "ReturnToService=2",
                "SchedulerType=sched/backfill",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                "JobCompType=jobcomp/none",
                "SlurmctldTimeout=30",
                "SlurmdTimeout=30",
                "InactiveLimit=0",
                "KillWait=5",
                # How long SLURM remembers an ended job (its default: 300 s); squeue is all
                # say_how_slurm_ended can ask here, and a sweep on a busy 2-core machine
                # outlasts 300 s after its first job ends.
                "MinJobAge=3600",
                *(f"NodeName={name} NodeAddr=127.0.0.1 Port={_free_port()} "
                  f"{_node_line()} State=UNKNOWN" for name in names),
                f"PartitionName=debug Nodes={','.join(names)} Default=YES MaxTime=INFINITE "
                "State=UP",
                "",
            ])
        )  # fmt: skip
        env = {**os.environ, **self.env}
        self._spawn([_tool("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld", env)
        for name in names:
            self._spawn([_tool("slurmd"), "-D", "-N", name, "-f", str(self.conf)],
                        f"slurmd.{name}", env)  # fmt: skip
        self._wait(self._nodes_idle, timeout_s, "the nodes to be idle in sinfo")
        return self

    def _spawn(self, command: list[str], name: str, env: dict | None = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 (lives with the daemon)
        self.processes.append(
            subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)
        )  # fmt: skip

    def _nodes_idle(self) -> bool:
        result = subprocess.run(
            [_tool("sinfo"), "-h", "-N", "-o", "%t"], capture_output=True, text=True,
            env={**os.environ, **self.env}, timeout=10,
        )  # fmt: skip
        states = result.stdout.split()
        ready = len(states) == self.nodes and all(s in ("idle", "mix", "alloc") for s in states)
        return result.returncode == 0 and ready

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [p.args[0] for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
                    for p in sorted((self.root / "log").iterdir())
                )
                self.stop()
                raise RuntimeError(f"waiting for {what}: {dead or 'timed out'}\n{logs}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancels the jobs still on this cluster (a failed test can leave one held), so that no
        job step outlives it, then stops the daemons it started (newest first), by their pids."""
        env = {**os.environ, **self.env}
        if self.processes and all(p.poll() is None for p in self.processes):
            user = pwd.getpwuid(os.getuid()).pw_name
            subprocess.run(["scancel", "--full", f"--user={user}"], env=env, timeout=10,
                           capture_output=True, check=False)  # fmt: skip
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                queue = subprocess.run(["squeue", "--noheader"], env=env, timeout=10,
                                       capture_output=True, text=True, check=False)  # fmt: skip
                if queue.returncode != 0 or not queue.stdout.strip():
                    break
                time.sleep(0.3)
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()


if __name__ == "__main__":
    reason = why_not()
    if reason:
        sys.exit(f"slurm_cluster: {reason}")
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "slurm-cluster").resolve()
    cluster = Cluster(folder, nodes=int(sys.argv[2]) if len(sys.argv) > 2 else 1).start()
    print(
        f"export SLURM_CONF={cluster.conf}  # then sinfo, reslab-train ... (Ctrl-C stops)",
        flush=True,
    )
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
