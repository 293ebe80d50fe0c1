"""`make ray-up` on a new machine: no ~/.ray, so no auth token yet. The Makefile must make one and start a
token-auth head whose clients (the CLI, a driver, the dashboard's HTTP API) all get in with it.

The head here is private: its own HOME, ports and temp dir, stopped by killing only its own processes
(`ray stop` would also stop the session's Ray and any head the developer left running)."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def kill_processes_under(path: str) -> None:
    """Every process whose command line names ``path`` (a head's temp dir): that head, and nothing else."""
    victims = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(path in arg for arg in proc.info["cmdline"] or ()):
            victims.append(proc)
    for proc in victims:
        proc.kill()
    psutil.wait_procs(victims, timeout=10)


@pytest.fixture
def fresh_home():
    """A HOME as a new machine has it: only the image's pip settings, no ~/.ray."""
    home = tempfile.mkdtemp(prefix="rm-home-")
    pip_conf = os.path.expanduser("~/.config/pip")
    if os.path.isdir(pip_conf):
        shutil.copytree(pip_conf, os.path.join(home, ".config", "pip"))
    # Short: Ray's unix socket paths under the temp dir must stay under 108 bytes. Named "ray" inside a
    # folder of its own: with RAY_TMPDIR at that folder, a client finds this head as it finds /tmp/ray's.
    base = tempfile.mkdtemp(prefix="rmh-", dir="/tmp")
    temp_dir = os.path.join(base, "ray")
    os.mkdir(temp_dir)
    yield home, temp_dir
    kill_processes_under(temp_dir)
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)


# What Ray's State API (and with it Ray Train's placement-group cleaner) resolves as "the" cluster inside a
# worker. Beside a second head it must still be the worker's own cluster, or the cleaner's thread dies and
# the next trial waits forever for CPUs (raymotion.runtime.start_local_ray).
RESOLVE = ("from ray._private.services import canonicalize_bootstrap_address_or_die as resolve; "
           "return resolve(None).rsplit(':', 1)[1]")


def resolved_port_in_a_worker() -> str:
    import ray

    @ray.remote
    def resolve() -> str:
        from ray._private.services import canonicalize_bootstrap_address_or_die

        return canonicalize_bootstrap_address_or_die(None).rsplit(":", 1)[1]

    return ray.get(resolve.remote(), timeout=60)


def test_make_ray_up_makes_a_token_on_a_machine_without_one(ray_session, fresh_home):
    home, temp_dir = fresh_home
    assert not os.path.exists(os.path.join(home, ".ray"))
    gcs, dashboard, client, agent_http, agent_grpc, metrics, env_agent = free_ports(7)
    extra = (f"--ray-client-server-port={client} --dashboard-agent-listen-port={agent_http} "
             f"--dashboard-agent-grpc-port={agent_grpc} --metrics-export-port={metrics} "
             f"--runtime-env-agent-port={env_agent}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=home, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(["make", "-s", "ray-up", f"RAY_PORT={gcs}", f"DASHBOARD_PORT={dashboard}",
                           f"RAY_TEMP_DIR={temp_dir}", "NUM_CPUS=1", f"RAY_START_ARGS={extra}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    token_file = os.path.join(home, ".ray", "auth_token")
    token = open(token_file).read().strip()
    assert len(token) >= 32

    # The clients the README uses, in token mode, with that HOME: the CLI, a driver, the dashboard API.
    client_env = dict(env, RAY_AUTH_MODE="token")
    deadline = time.monotonic() + 90
    while True:  # right after the start (and more so on a loaded machine) it says "No cluster status" yet
        status = subprocess.run([RAY, "status", "--address", f"127.0.0.1:{gcs}"], env=client_env,
                                capture_output=True, text=True, timeout=60)
        if status.returncode != 0 or "1.0 CPU" in status.stdout or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status.returncode == 0 and "1.0 CPU" in status.stdout, status.stdout + status.stderr
    driver = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{gcs}'); "
                               "print(int(ray.cluster_resources()['CPU']))\n"
                               f"@ray.remote\ndef resolve():\n    {RESOLVE}\nprint(ray.get(resolve.remote()))"],
        env=client_env, capture_output=True, text=True, timeout=120)
    assert driver.returncode == 0, driver.stderr[-3000:]
    # The head's CPU, then the port a worker of the head resolves as its cluster: the head's own.
    assert driver.stdout.split()[-2:] == ["1", str(gcs)], driver.stdout
    # raymotion's own commands join that head from a shell that never set RAY_AUTH_MODE, the token being at
    # hand: found as the last `ray start` (its temp dir holds the address file) and named by --address.
    for address in ("None", f"'127.0.0.1:{gcs}'"):
        joined = subprocess.run(
            [sys.executable, "-c", "from raymotion.runtime import init_ray; import ray; "
                                   f"print(init_ray({address}), int(ray.cluster_resources()['CPU']))"],
            cwd=REPO, env=dict(env, RAY_TMPDIR=os.path.dirname(temp_dir)), capture_output=True, text=True, timeout=120)
        assert joined.returncode == 0 and joined.stdout.split()[-2:] == ["False", "1"], \
            address + joined.stdout + joined.stderr[-3000:]
    # Two heads on this machine now: the session's workers still resolve the session's cluster.
    assert resolved_port_in_a_worker() == ray_session.get_runtime_context().gcs_address.rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{dashboard}/api/jobs/"
    deadline = time.monotonic() + 60
    while True:  # the dashboard may still be starting its HTTP server
        try:
            authorised = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    assert authorised.status_code == 200, authorised.text
    # The token is what lets a client in: without it the dashboard refuses.
    assert requests.get(url, timeout=5).status_code in (401, 403)

    # A second `make ray-up` finds the head running and changes nothing (the token is kept).
    again = subprocess.run(["make", "-s", "ray-up", f"RAY_PORT={gcs}", f"DASHBOARD_PORT={dashboard}",
                            f"RAY_TEMP_DIR={temp_dir}", "NUM_CPUS=1", f"RAY_START_ARGS={extra}"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "Ray runtime started" not in again.stdout, again.stdout + again.stderr
    assert open(token_file).read().strip() == token


def test_a_stale_address_of_the_last_ray_start_is_not_joined(tmp_path):
    """A head killed without `ray stop` leaves its address behind; Ray's "auto" would retry it for
    minutes. init_ray joins it only while something answers there."""
    import socket

    from raymotion.runtime import last_started_cluster

    address_file = tmp_path / "ray_current_cluster"
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        address_file.write_text(f"127.0.0.1:{port}\n")
        assert last_started_cluster(str(address_file)) == f"127.0.0.1:{port}"
    assert last_started_cluster(str(address_file)) is None  # nothing listens there any more
    assert last_started_cluster(str(tmp_path / "missing")) is None
