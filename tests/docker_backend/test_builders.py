"""What the Docker backend asks of Docker, built from a request without any daemon: the Kit
container's spec, its labels read back, host ports, the GPU inventory and ledger, and the
state a session's records mean."""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backends.docker import containers as c
from backends.docker import records
from backends.docker.gpus import Gpu, GpuLedger, Inventory, inventory, parse_nvidia_smi
from backends.docker.ports import PortAllocator, parse_port_range
from backends.docker.pulls import PullProgress
from ovas.catalog_files import FileCatalog
from ovas.errors import CapacityExceeded, ConfigurationError
from ovas.models import SessionState
from ovas.testing import make_request

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def standin_catalog(tmp_path_factory):
    folder = tmp_path_factory.mktemp("catalog")
    (folder / "standin.yaml").write_text((REPO / "config/catalog/standin.yaml").read_text())
    return FileCatalog(folder)


@pytest.fixture
def request_(standin_catalog):
    return make_request(
        standin_catalog, app_id="kit-standin", profile_id="standin", username="alice"
    )


def mapped(request, first=31000):
    wanted = c.wanted_ports(request.kit)
    return c.map_ports(request.kit, list(range(first, first + len(wanted))))


def test_standin_catalog_runs_the_standin_image_without_gpu(request_):
    assert request_.kit.image == "ovas/kit-standin:1.0.0"
    assert request_.kit.gpus == 0
    assert request_.kit.probe.path == "/v1/streaming/ready"


def test_container_spec_carries_image_env_limits_and_published_ports(request_):
    spec = c.container_spec(request_, mapped(request_), [], bind_address="127.0.0.1")
    create, host = c.create_arguments(spec)
    assert create["image"] == "ovas/kit-standin:1.0.0"
    assert create["name"] == f"ovas-{request_.id}"
    assert create["environment"]["USD_PATH"] == "/app/samples/stage01.usd"
    assert host["nano_cpus"] == 250_000_000
    assert host["mem_limit"] == 64 * 2**20
    assert host["port_bindings"] == {
        "49100/tcp": ("127.0.0.1", 31000),
        "47998/udp": ("127.0.0.1", 31001),
        "8011/tcp": ("127.0.0.1", 31002),  # the probe's port: ovas probes through it
    }
    assert (49100, "tcp") in create["ports"] and (47998, "udp") in create["ports"]
    assert "device_requests" not in host  # no GPU asked, none requested
    assert "command" not in create  # the image's own entrypoint runs


def test_stage_uri_reaches_only_the_environment(standin_catalog):
    hostile = "omniverse://host/$(touch${IFS}/pwned);`id`.usd"
    request = make_request(
        standin_catalog, app_id="kit-standin", profile_id="standin", usd_stage_uri=hostile
    )
    create, host = c.create_arguments(c.container_spec(request, mapped(request), []))
    assert create["environment"]["USD_PATH"] == hostile
    assert "command" not in create and "entrypoint" not in create
    assert hostile not in repr(host)


def test_gpus_become_a_device_request_for_those_devices(request_):
    request = replace(request_, kit=replace(request_.kit, gpus=2))
    spec = c.container_spec(request, mapped(request), ["GPU-aaa", "GPU-bbb"])
    _, host = c.create_arguments(spec)
    assert host["device_requests"] == [
        {"driver": "", "device_ids": ["GPU-aaa", "GPU-bbb"], "capabilities": [["gpu"]]}
    ]
    assert spec["labels"][c.GPUS] == "GPU-aaa,GPU-bbb"


def test_labels_read_back_the_session(request_):
    ports = mapped(request_)
    spec = c.container_spec(request_, ports, ["0"])
    labels = c.parse_labels(spec["labels"])
    assert labels.session_id == request_.id
    assert (labels.app_id, labels.version, labels.profile, labels.username) == (
        "kit-standin",
        "1.0.0",
        "standin",
        "alice",
    )
    assert labels.created_time == request_.created_time
    assert labels.deadline == request_.deadline
    assert labels.ports == ports
    assert labels.gpus == ("0",)
    assert labels.probe.kind == "http" and labels.probe.port == 8011


def test_a_pending_record_keeps_the_container_spec_and_a_failed_one_the_reason(request_):
    spec = c.container_spec(request_, mapped(request_), [])
    base = c.base_labels(spec["labels"])
    pending = c.record_spec(base, c.PENDING, spec=spec)
    assert pending["name"] == f"ovas-{request_.id}.pending"
    assert pending["image"] == c.RECORD_IMAGE
    assert c.spec_from_labels(pending["labels"]) == spec
    failed = c.record_spec(base, c.FAILED, message="no such image")
    assert c.parse_labels(failed["labels"]).message == "no such image"
    assert c.parse_labels(failed["labels"]).ports == c.parse_labels(spec["labels"]).ports


@pytest.mark.parametrize(
    "labels",
    [
        {c.SESSION: "x"},
        {c.SESSION: "x", c.RECORD: "container", c.CREATED: "yesterday"},
    ],
)
def test_labels_that_are_no_session_are_refused(labels):
    with pytest.raises(ValueError):
        c.parse_labels(labels)


def test_port_range_setting():
    assert parse_port_range("31000-31999") == range(31000, 32000)
    assert parse_port_range("40000") == range(40000, 40001)
    for bad in ("31999-31000", "a-b", "0-10", "70000-70001"):
        with pytest.raises(ConfigurationError, match="OVAS_DOCKER_PORT_RANGE"):
            parse_port_range(bad)


def held_port() -> socket.socket:
    """A listening TCP socket on a port below the ephemeral range (so no other connection
    takes its neighbours meanwhile)."""
    for port in range(30500, 30600, 5):
        holder = socket.socket()
        try:
            holder.bind(("127.0.0.1", port))
        except OSError:
            holder.close()
            continue
        holder.listen()
        return holder
    pytest.skip("no free port to hold in 30500-30600")


def test_ports_in_use_by_sessions_or_other_programs_are_skipped():
    with held_port() as holder:
        busy = holder.getsockname()[1]
        allocator = PortAllocator(range(busy - 2, busy + 3), bind_address="127.0.0.1")
        chosen = allocator.allocate(["tcp", "tcp", "tcp"], in_use={busy - 2})
        assert chosen == [busy - 1, busy + 1, busy + 2]
        # Another program's TCP port does not hold the same number for UDP.
        assert allocator.allocate(["udp"], in_use={busy - 2, busy - 1}) == [busy]


def test_a_full_port_range_is_capacity_exceeded():
    allocator = PortAllocator(range(31000, 31004), check_host=False)
    with pytest.raises(CapacityExceeded, match="31000-31003") as caught:
        allocator.allocate(["tcp", "udp", "tcp"], in_use={31000, 31001})
    assert caught.value.headers["Retry-After"]


GPUS = Inventory((Gpu(0, "GPU-aaa", "NVIDIA L40S", 48 * 2**30), Gpu(1, "GPU-bbb")), "test")


def test_ledger_gives_free_gpus_and_refuses_saying_what_is_free():
    ledger = GpuLedger(GPUS)
    assert [g.uuid for g in ledger.allocate(1, in_use=set())] == ["GPU-aaa"]
    # Labels may name a GPU by index or UUID; both hold it.
    assert [g.uuid for g in ledger.allocate(1, in_use={"0"})] == ["GPU-bbb"]
    with pytest.raises(CapacityExceeded) as caught:
        ledger.allocate(2, in_use={"GPU-aaa"})
    assert "asks for 2 GPUs" in caught.value.message
    assert "1 of the 2 GPUs" in caught.value.message and "GPU 1" in caught.value.message
    assert ledger.allocate(0, in_use={"GPU-aaa", "GPU-bbb"}) == []


def test_no_gpu_at_all_says_so():
    ledger = GpuLedger(Inventory((), "no NVIDIA GPU found (NVML: driver not loaded)"))
    with pytest.raises(CapacityExceeded, match=r"no GPU to give.*NVML"):
        ledger.allocate(1, in_use=())


def test_gpu_setting_overrides_detection():
    assert inventory("none", detector=lambda: GPUS).gpus == ()
    assert inventory("auto", detector=lambda: GPUS) is GPUS
    listed = inventory("1", detector=lambda: GPUS).gpus
    assert [g.uuid for g in listed] == ["GPU-bbb"]
    undetected = inventory("0,GPU-ccc", detector=lambda: Inventory((), "none")).gpus
    assert [g.device_id for g in undetected] == ["0", "GPU-ccc"]
    with pytest.raises(ConfigurationError, match="OVAS_DOCKER_GPUS"):
        inventory("first", detector=lambda: GPUS)


def test_nvidia_smi_rows_are_read():
    rows = "0, GPU-1d2c, NVIDIA H100 80GB HBM3, 81559\n1, GPU-77aa, NVIDIA H100 80GB HBM3, 81559\n"
    gpus = parse_nvidia_smi(rows)
    assert [(g.index, g.uuid) for g in gpus] == [(0, "GPU-1d2c"), (1, "GPU-77aa")]
    assert gpus[0].memory_bytes == 81559 * 2**20


def test_pull_progress_reads_as_one_line():
    progress = PullProgress("nvcr.io/x/usd-viewer:1")
    progress.update({"status": "Pulling from x/usd-viewer", "id": "1"})
    progress.update({"status": "Already exists", "id": "a"})
    progress.update(
        {
            "status": "Downloading",
            "id": "b",
            "progressDetail": {"current": 5_000_000, "total": 20_000_000},
        }
    )
    assert progress.message() == (
        "Pulling the image nvcr.io/x/usd-viewer:1: 1 of 2 layers, 5.0 MB of 20.0 MB (25%)"
    )


def summary(labels, record, state="running", status="Up 1 second"):
    name = c.container_name(labels[c.SESSION], record)
    labels = {**labels, c.RECORD: record}
    return {
        "Id": name,
        "Names": [f"/{name}"],
        "Labels": labels,
        "State": state,
        "Status": status,
        "Created": 0,
    }


def test_records_of_a_session_mean_one_state(request_):
    spec = c.container_spec(request_, mapped(request_), [])
    base = c.base_labels(spec["labels"])
    now = request_.created_time + timedelta(seconds=1)

    def state(*summaries, **kw):
        sessions, malformed = records.group(summaries)
        assert not malformed
        return records.session_state(sessions[request_.id], now, **kw)

    pulling = state(summary(base, c.PENDING, "created", "Created"), pull_message="Pulling x: 10%")
    assert (pulling.state, pulling.message) == (SessionState.CREATING, "Pulling x: 10%")
    starting = state(summary(base, c.CONTAINER))
    assert starting.state is SessionState.CREATING and starting.routes == ()
    ready = state(summary(base, c.CONTAINER), ready=True, public_host="kit.example.com")
    assert ready.state is SessionState.READY and ready.host == "kit.example.com"
    assert [(r.description, r.source_port, r.destination_port) for r in ready.routes] == [
        ("signaling", 31000, 49100),
        ("media", 31001, 47998),
    ]
    exited = state(summary(base, c.CONTAINER, "exited", "Exited (137) 1 second ago"))
    assert exited.state is SessionState.FAILED and "code 137" in exited.message
    failed = c.record_spec(base, c.FAILED, message="could not select device driver")
    both = state(summary(base, c.CONTAINER), summary(failed["labels"], c.FAILED, "created"))
    assert both.state is SessionState.FAILED and both.message == "could not select device driver"


def test_past_the_deadline_a_session_not_ready_is_failed(request_):
    spec = c.container_spec(request_, mapped(request_), [])
    sessions, _ = records.group([summary(spec["labels"], c.CONTAINER)])
    late = request_.deadline + timedelta(seconds=1)
    session = records.session_state(sessions[request_.id], late)
    assert session.state is SessionState.FAILED and "not ready within" in session.message
    still_ready = records.session_state(sessions[request_.id], late, ready=True)
    assert still_ready.state is SessionState.READY


def test_a_record_whose_name_does_not_match_its_labels_is_malformed(request_):
    spec = c.container_spec(request_, mapped(request_), [])
    forged = summary(spec["labels"], c.CONTAINER)
    forged["Names"] = ["/someone-else"]
    sessions, malformed = records.group([forged])
    assert sessions == {} and malformed == [forged]


def test_times_in_labels_are_absolute():
    now = datetime.now(UTC)
    labels = {
        c.SESSION: "x",
        c.RECORD: "container",
        c.APP: "a",
        c.VERSION: "1",
        c.PROFILE: "p",
        c.CREATED: now.replace(tzinfo=None).isoformat(),
        c.DEADLINE: now.isoformat(),
    }
    with pytest.raises(ValueError, match="time zone"):
        c.parse_labels(labels)
