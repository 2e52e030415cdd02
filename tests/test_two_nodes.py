"""Data-parallel training across two simulated nodes: every byte between the ranks crosses a network link.

Each node is a network namespace of its own (``ip netns``), with one link (a veth pair) to a bridge, its own
address and its own hostname (``unshare --uts``). ``mpiexec`` (MPICH's Hydra) runs in a third namespace on
the bridge and starts one rank on each node through a stand-in for ``ssh`` that enters the node's namespace;
``UCX_TLS=tcp,self`` keeps MPI's traffic on TCP (no shared memory between the nodes). The addresses
(10.213.0.0/24) exist only on this bridge, which lives inside the launcher's namespace: nothing reaches the
machine's own network. Every name carries this process's id, so parallel runs do not collide, and
everything is removed at the end, however the test ended.

Needs root (network namespaces), ``ip`` (iproute2) and ``unshare`` (util-linux), mpi4py and MPICH's
``mpiexec``; elsewhere the tests skip and say why. CI's second run has all of them.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from . import distributed_jobs
from .test_distributed import job_environment, mpi_or_skip, run_bounded, saved, trained, whole_lines

SUBNET = "10.213.0"
LAUNCHER_ADDRESS = f"{SUBNET}.1"
NODES = (f"{SUBNET}.10", f"{SUBNET}.11")
SETUP_TIMEOUT = 30  # seconds for one `ip` command
JOB_TIMEOUT = 300  # a guard against a hanging job, far above what these take


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=SETUP_TIMEOUT)


def missing_pieces():
    """Why the two nodes cannot be made here; None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool, package in (("ip", "iproute2"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            return f"no `{tool}` on PATH (install {package})"
    return None


class TwoNodes:
    """Namespaces ``<prefix>h`` (mpiexec and the bridge), ``<prefix>n0`` and ``<prefix>n1`` (one rank each)."""

    def __init__(self, directory):
        self.prefix = f"xq{os.getpid()}"
        self.launcher_ns = f"{self.prefix}h"
        self.node_ns = [f"{self.prefix}n{i}" for i in range(len(NODES))]
        self.ssh = Path(directory) / "ssh-into-namespace"

    def create(self):
        h = self.launcher_ns
        ip("netns", "add", h)
        ip("-n", h, "link", "set", "lo", "up")
        ip("-n", h, "link", "add", "br0", "type", "bridge")
        ip("-n", h, "addr", "add", f"{LAUNCHER_ADDRESS}/24", "dev", "br0")
        ip("-n", h, "link", "set", "br0", "up")
        for i, (ns, address) in enumerate(zip(self.node_ns, NODES)):
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", h, "link", "add", f"link{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", h, "link", "set", f"link{i}", "master", "br0")
            ip("-n", h, "link", "set", f"link{i}", "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        hosts = "\n".join(f"  {address}) ns={ns}; name=node{i};;" for i, (ns, address) in
                          enumerate(zip(self.node_ns, NODES)))
        self.ssh.write_text(f"""#!/bin/sh
# A stand-in for ssh, as mpiexec calls it: [OPTIONS] HOST COMMAND. COMMAND runs in HOST's network namespace,
# under HOST's own hostname.
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
case $host in
{hosts}
  *) echo "ssh-into-namespace: unknown host $host" >&2; exit 255;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $name && exec $*"
""")
        self.ssh.chmod(0o755)

    def remove(self):
        """Kill what still runs in the namespaces (a stopped rank included), then remove them."""
        for ns in (self.launcher_ns, *self.node_ns):
            listed = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                    timeout=SETUP_TIMEOUT)
            for pid in listed.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=SETUP_TIMEOUT)

    def link(self, node, state):
        """Bring node ``node``'s link ``"up"`` or ``"down"``."""
        ip("-n", self.node_ns[node], "link", "set", "eth0", state)

    def received_bytes(self, node):
        return int(subprocess.run(["ip", "netns", "exec", self.node_ns[node], "cat",
                                   "/sys/class/net/eth0/statistics/rx_bytes"], capture_output=True, text=True,
                                  check=True, timeout=SETUP_TIMEOUT).stdout)

    def mpiexec(self, *command, cwd, timeout=JOB_TIMEOUT):
        """One rank on each node; returns the finished process (its leftovers killed)."""
        launcher = mpi_or_skip()
        environment = {**job_environment(), "UCX_TLS": "tcp,self"}
        return run_bounded(["ip", "netns", "exec", self.launcher_ns, launcher, "-launcher", "ssh", "-launcher-exec",
                            str(self.ssh), "-iface", "br0", "-hosts", ",".join(NODES), "-n", str(len(NODES)),
                            *command], timeout, cwd=cwd, env=environment)


@pytest.fixture
def nodes(tmp_path):
    mpi_or_skip()
    reason = missing_pieces()
    if reason is not None:
        pytest.skip(f"the two-node tests cannot run: {reason}")
    made = TwoNodes(tmp_path)
    try:
        try:
            made.create()
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"the two-node tests cannot run: `{' '.join(exc.cmd)}` failed: {exc.stderr.strip()}")
        yield made
    finally:
        made.remove()


def job(nodes, tmp_path, *args):
    return nodes.mpiexec(sys.executable, "-m", "tests.distributed_jobs", *args, cwd=tmp_path)


def test_two_nodes_over_tcp_train_exactly_what_one_process_trains(nodes, tmp_path):
    """The ranks see two nodes (one rank each), their traffic crosses the links, and every run of
    tests/distributed_jobs.py's RUNS gives one process's parameters and losses to 1e-12."""
    done = job(nodes, tmp_path, "collectives")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["local"] == [0, 1]  # one rank on rank 0's node
    received = nodes.received_bytes(1)
    for n in (1, 2):
        (tmp_path / str(n)).mkdir()
        command = [sys.executable, "-m", "tests.distributed_jobs", "train-grid", str(tmp_path / str(n)), str(n)]
        if n == 1:
            done = run_bounded(command, JOB_TIMEOUT, cwd=Path(__file__).parents[1], env=job_environment())
        else:
            done = nodes.mpiexec(*command, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    # At the least, node 1 received the other rank's gradients of every step of the line models (float64).
    names = sorted(p.name for p in (tmp_path / "1").iterdir())
    gradients = sum(9 * 8 * sum(v.size for k, v in saved(tmp_path / "1" / name).items() if k.startswith("param/"))
                    for name in names if name.startswith("lines-"))
    assert nodes.received_bytes(1) - received > gradients > 0
    for name in names:
        alone, shared = saved(tmp_path / "1" / name), saved(tmp_path / "2" / name)
        for key in alone:
            if key != "shares":
                np.testing.assert_allclose(shared[key], alone[key], rtol=0, atol=1e-12, err_msg=f"{name} {key}")


RECIPE = ["--steps", "8", "--batch", "5", "--hidden", "8", "--samples", "0", "--dtype", "float64"]


def fault_at_step_6(nodes, tmp_path, fault):
    """``xseq train`` on the two nodes with rank 1's ``fault`` at step 6, --comm-timeout 10."""
    (tmp_path / "corpus.txt").write_text("\n".join(distributed_jobs.NAMES) + "\n", encoding="utf-8")
    return job(nodes, tmp_path, "cli", fault, "1", "6", "train", "corpus.txt", *RECIPE, "--out", "m.npz",
               "--comm-timeout", "10")


def assert_ended_by_the_watchdog_and_resumable(nodes, tmp_path, done):
    """Status 124, rank 0's message naming the step and the timeout; the checkpoint of step 4 resumes on the two
    nodes (the link up again) to the uninterrupted run's result."""
    assert done.returncode == 124, done.stdout + done.stderr
    assert ("xseq train: error: [rank 0/2] no reply from the other ranks in a collective for 10 s (step 6); "
            "ending the job (--comm-timeout 10)") in whole_lines(done.stderr)
    assert saved(tmp_path / "m.npz")["array/train/losses"].size == 4
    nodes.remove()
    nodes.create()
    resumed = nodes.mpiexec(sys.executable, "-m", "xseq", "train", "corpus.txt", "--resume", "m.npz", "--steps", "8",
                            "--samples", "0", "--out", "resumed.npz", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    full = run_bounded([sys.executable, "-m", "xseq", "train", "corpus.txt", *RECIPE, "--out", "full.npz"],
                       JOB_TIMEOUT, cwd=tmp_path, env=job_environment())
    assert full.returncode == 0, full.stdout + full.stderr
    expected, again = trained(tmp_path / "full.npz"), trained(tmp_path / "resumed.npz")
    assert sorted(again) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(again[key], expected[key], rtol=0, atol=1e-12, err_msg=key)


def test_a_node_whose_link_goes_down_mid_training_ends_the_job(nodes, tmp_path):
    """Rank 1 takes its node's link down at step 6 (``ip link set eth0 down`` in its namespace): both ranks wait
    in that step's all-reduce, and --comm-timeout ends the job instead of a hang."""
    assert_ended_by_the_watchdog_and_resumable(nodes, tmp_path, fault_at_step_6(nodes, tmp_path, "link-down"))


def test_a_stopped_rank_on_another_node_ends_the_job(nodes, tmp_path):
    assert_ended_by_the_watchdog_and_resumable(nodes, tmp_path, fault_at_step_6(nodes, tmp_path, "sigstop"))
