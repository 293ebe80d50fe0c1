"""Connecting to Ray: join a running cluster (``ray start --head``, ``ray job submit``) or start a local one."""

from __future__ import annotations

import logging
import os
import socket

import ray

# Ray Train's controller polls its worker group every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default 2 s), so a
# run notices that its workers started, and that they finished, up to one poll late: on short trials that
# is a noticeable share of each fit. A shorter interval costs little: a poll is one small RPC per worker.
# Read by processes the raylet starts, so it is set where a raylet starts: here for local instances, in
# the Makefile for `make ray-up`.
TRAIN_POLL_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def start_local_ray(num_cpus: int | None = None) -> None:
    """A new local Ray instance, on its own GCS port, whose processes all know its address.

    Ray's own helpers that run inside workers (Ray Train's placement-group cleaner, through the State API)
    find "the" cluster by RAY_ADDRESS, else /tmp/ray/ray_current_cluster (the last `ray start`), else by
    listing GCS processes. Beside a head someone else started (`make run`), that finds the wrong cluster or
    two, and the cleaner's thread dies: the next trial then waits forever for its CPUs. The raylet is a child
    of this process and hands its environment to every worker, so both variables are set for the start.
    """
    port = free_port()
    # RAY_ADDRESS stays set in this process too: its own State API calls (raymotion.tune.resources) resolve
    # the cluster the same way, and beside `make run`'s head they would ask that head (and its token).
    os.environ["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    for key, value in TRAIN_POLL_ENV.items():
        os.environ.setdefault(key, value)
    try:
        # The dashboard hosts the State API, which Ray Train uses to clean up finished worker groups.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
                 logging_level=logging.WARNING)
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT")  # a later instance must pick its own port


def last_started_cluster(address_file: str | None = None) -> str | None:
    """The GCS address the last ``ray start`` on this machine wrote (what ``address="auto"`` reads), when
    that GCS still accepts connections: a head killed without ``ray stop`` leaves the file behind, and
    Ray would then retry it for minutes."""
    from ray._common.utils import get_ray_address_file

    try:
        with open(address_file or get_ray_address_file(None)) as f:
            address = f.read().strip()
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=1.0):
            return address
    except (OSError, ValueError):
        return None


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Initialise Ray once; returns True when this process started its own local instance (which dies
    with the process), False when it joined an existing cluster.

    ``address``: a cluster to join; "local": always a new local instance; None: RAY_ADDRESS, else the
    cluster the last ``ray start`` made when it still answers, else a new local instance. Not Ray's
    "auto", which also joins any Ray found running here (a test session's, say) and waits minutes on a
    stale address."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS") or last_started_cluster()
    if address and address != "local":
        # Ray 2.59+ heads started with `ray start` use token auth, and Ray turns a client's token mode on
        # only when it finds the cluster itself (address "auto"): a shell that never set RAY_AUTH_MODE is
        # refused by an explicit address (--address, or the one command.json keeps for --resume). A
        # token-mode client joins a cluster without auth too, so the mode goes on whenever a token is at
        # hand and the user chose none, by Ray's own rule for that.
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
        ray.init(address=address, logging_level=logging.WARNING)
        return False
    start_local_ray(num_cpus)
    return True
