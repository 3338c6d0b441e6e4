"""The ports the tests give their servers and Ray nodes (tests/ports.py), by Ray's own rule."""

from __future__ import annotations

from ports import ephemeral_range, free_port, ray_node_ports
from ray._private.parameter import RayParams
from ray.scripts.scripts import start

# `ray start` flag -> the RayParams field it sets (ray/scripts/scripts.py).
_FIELDS = {
    "node-manager-port": "node_manager_port",
    "object-manager-port": "object_manager_port",
    "metrics-export-port": "metrics_export_port",
    "dashboard-agent-grpc-port": "metrics_agent_port",
    "dashboard-agent-listen-port": "dashboard_agent_listen_port",
    "runtime-env-agent-port": "runtime_env_agent_port",
    "min-worker-port": "min_worker_port",
    "max-worker-port": "max_worker_port",
}


def _head() -> dict[str, int]:
    """A head's ports as test_containers and test_two_nodes choose them."""
    ports = {
        "gcs_server_port": free_port(),
        "dashboard_port": free_port(),
        "ray_client_server_port": free_port(),
    }
    for arg in ray_node_ports():
        if arg.startswith("--object-store-memory"):
            continue
        flag, value = arg.removeprefix("--").split("=")
        ports[_FIELDS[flag]] = int(value)
    return ports


def test_nodes_on_one_host_get_ports_ray_accepts_and_the_kernel_never_hands_out():
    # CI lost a containerized head to `ray start` refusing its ports: with ports the kernel
    # picked for bind(0), a second pick can land on the first or inside the 41-port worker
    # range, and the kernel gives the same range to every outbound connection.
    kernel = ephemeral_range()
    handed_out: set[int] = set()
    for _ in range(30):
        ports = _head()
        # Raises "Ray component ... is trying to use a port number ... used by other components".
        RayParams(**ports).update_pre_selected_port()
        workers = range(ports["min_worker_port"], ports["max_worker_port"] + 1)
        node = {*ports.values(), *workers}
        assert len(workers) == 41
        assert not node & handed_out, "a port handed to two nodes"
        assert not [port for port in node if port in kernel], f"ports inside {kernel}"
        handed_out |= node


def test_a_port_for_a_node_with_default_worker_ports_is_outside_their_range():
    # `ray start --head --port=P` without a worker range reserves 10002-19999 for workers and
    # refuses a P inside it (test_generate's head starts so); its workers bind ports there too.
    defaults = {param.name: param.default for param in start.params}
    workers = range(defaults["min_worker_port"], defaults["max_worker_port"] + 1)
    for _ in range(100):
        port = free_port()
        RayParams(
            gcs_server_port=port, min_worker_port=workers.start, max_worker_port=workers.stop - 1
        ).update_pre_selected_port()
