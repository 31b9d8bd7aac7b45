"""What the Docker backend asks of Docker, built from a request without any daemon: the Kit
container's spec, its labels and records read back, the port range, the GPU inventory and
ledger, client counts, and what a session's records show."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.docker_earlier import kit_labels, mark_container

from backends.docker import containers as c
from backends.docker import earlier, observe
from backends.docker.connections import count_established
from backends.docker.gpus import Gpu, GpuLedger, Inventory, inventory, parse_nvidia_smi
from backends.docker.ports import ephemeral_overlap, parse_port_range
from backends.docker.pulls import PullProgress
from ovas.catalog_files import FileCatalog
from ovas.errors import CapacityExceeded, ConfigurationError, Unsatisfiable
from ovas.ledger import NAME_PATTERN, LedgerError, UnknownFormat
from ovas.lifecycle import Mark, Outcome, Record, Stage
from ovas.models import Reason, SessionState
from ovas.testing import make_request
from ovas.workloads import Places, place_name

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


def test_standin_catalog_runs_the_standin_image_without_gpu(request_):
    assert request_.kit.image == "ovas/kit-standin:1.0.0"
    assert request_.kit.gpus == 0
    assert request_.kit.probe.path == "/v1/streaming/ready"


def test_container_spec_carries_image_env_limits_and_ports_docker_picks(request_):
    spec = c.container_spec(request_, [], bind_address="127.0.0.1", host_ports="31000-31099")
    create, host = c.create_arguments(spec)
    assert create["image"] == "ovas/kit-standin:1.0.0"
    assert create["name"] == f"ovas-{request_.id}"
    assert create["environment"]["USD_PATH"] == "/app/samples/stage01.usd"
    assert host["nano_cpus"] == 250_000_000
    assert host["mem_limit"] == 64 * 2**20
    # Docker picks each host port from the range when it starts the container.
    assert host["port_bindings"] == {
        "49100/tcp": ("127.0.0.1", "31000-31099"),
        "47998/udp": ("127.0.0.1", "31000-31099"),
        "8011/tcp": ("127.0.0.1", "31000-31099"),  # the probe's port: ovas probes through it
    }
    assert (49100, "tcp") in create["ports"] and (47998, "udp") in create["ports"]
    assert "device_requests" not in host  # no GPU asked, none requested
    assert "command" not in create  # the image's own entrypoint runs


def test_with_the_gateway_on_signaling_is_published_only_where_ovas_reaches_it(request_):
    """Clients reach media on the bind address, and signaling only through the gateway."""
    spec = c.container_spec(
        request_, [], bind_address="0.0.0.0", signaling_address="127.0.0.1", host_ports="31000"
    )
    assert c.create_arguments(spec)[1]["port_bindings"] == {
        "49100/tcp": ("127.0.0.1", "31000"),
        "47998/udp": ("0.0.0.0", "31000"),
        "8011/tcp": ("0.0.0.0", "31000"),
    }


def test_the_backend_publishes_signaling_on_its_probe_host_once_the_gateway_is_on(
    standin_catalog,
):
    from backends.docker.backend import DockerBackend

    settings = {"DOCKER_BIND_ADDRESS": "0.0.0.0", "CATALOG_PATH": str(standin_catalog.root)}
    off = DockerBackend.from_settings(settings)
    on = DockerBackend.from_settings({**settings, "GATEWAY_DOMAIN": "streams.example.com"})
    probed = DockerBackend.from_settings(
        {**settings, "GATEWAY_DOMAIN": "streams.example.com", "DOCKER_PROBE_HOST": "10.1.2.3"}
    )
    try:
        assert (off.signaling_address, on.signaling_address) == (None, "127.0.0.1")
        assert probed.signaling_address == "10.1.2.3"
        with pytest.raises(ConfigurationError, match="OVAS_DOCKER_PROBE_HOST"):
            DockerBackend.from_settings(
                {**settings, "GATEWAY_DOMAIN": "s.example.com", "DOCKER_PROBE_HOST": "docker"}
            )
    finally:
        for backend in (off, on, probed):
            backend.close()


def test_a_capped_cpu_limit_replaces_the_profiles(request_):
    spec = c.container_spec(request_, [], cpu_limit="2", note="capped")
    assert c.create_arguments(spec)[1]["nano_cpus"] == 2 * 10**9
    assert c.parse_labels(spec["labels"]).note == "capped"


def test_stage_uri_reaches_only_the_environment(standin_catalog):
    hostile = "omniverse://host/$(touch${IFS}/pwned);`id`.usd"
    request = make_request(
        standin_catalog, app_id="kit-standin", profile_id="standin", usd_stage_uri=hostile
    )
    create, host = c.create_arguments(c.container_spec(request, []))
    assert create["environment"]["USD_PATH"] == hostile
    assert "command" not in create and "entrypoint" not in create
    assert hostile not in repr(host)


def test_gpus_become_a_device_request_for_those_devices(request_):
    request = replace(request_, kit=replace(request_.kit, gpus=2))
    spec = c.container_spec(request, ["GPU-aaa", "GPU-bbb"])
    _, host = c.create_arguments(spec)
    assert host["device_requests"] == [
        {"driver": "", "device_ids": ["GPU-aaa", "GPU-bbb"], "capabilities": [["gpu"]]}
    ]
    assert spec["labels"][c.GPUS] == "GPU-aaa,GPU-bbb"


def test_gpus_by_cdi_name_become_a_request_to_the_cdi_driver(request_):
    request = replace(request_, kit=replace(request_.kit, gpus=2))
    spec = c.container_spec(request, ["nvidia.com/gpu=0", "nvidia.com/gpu=1"])
    _, host = c.create_arguments(spec)
    # What `docker run --device nvidia.com/gpu=0 --device nvidia.com/gpu=1` sends.
    assert host["device_requests"] == [
        {"driver": "cdi", "device_ids": ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]}
    ]
    assert c.parse_labels(spec["labels"]).gpus == ("nvidia.com/gpu=0", "nvidia.com/gpu=1")
    names = {place_name("gpu", d) for d in ("a.com/gpu=0-1", "a.com/gpu-0=1", "nvidia.com/gpu=all")}
    assert len(names) == 3  # a place per device, though its name is a digest
    assert all(NAME_PATTERN.fullmatch(name) for name in names)


def test_labels_read_back_the_workload_and_no_more(request_):
    spec = c.container_spec(request_, ["0"])
    labels = c.parse_labels(spec["labels"])
    assert labels.session_id == request_.id and not labels.earlier
    # The session's fields are the core's record, in the ledger: not on the container.
    assert {k for k in spec["labels"] if k.startswith("ovas.")} == {
        c.SESSION,
        c.RECORD,
        c.FORMAT,
        c.IMAGE,
        c.PORTS,
        c.GPUS,
        c.PROBE,
        c.NOTE,
    }
    assert [(p.name, p.key) for p in labels.ports] == [
        ("signaling", "49100/tcp"),
        ("media", "47998/udp"),
        ("probe", "8011/tcp"),
    ]
    assert labels.gpus == ("0",)
    assert labels.probe.kind == "http" and labels.probe.port == 8011


def test_labels_of_the_releases_before_are_read_with_the_session(request_):
    # As the releases before record formats wrote them: the session's fields, no format.
    earlier = kit_labels(request_, ("0",))
    labels = c.parse_labels(earlier)
    assert labels.earlier and labels.session_id == request_.id
    assert (labels.app_id, labels.version, labels.profile, labels.username) == (
        "kit-standin",
        "1.0.0",
        "standin",
        "alice",
    )
    assert (labels.created_time, labels.deadline) == (request_.created_time, request_.deadline)
    assert labels.clocks == request_.clocks and labels.gpus == ("0",)
    # The release before the core's ledger wrote them in format 1: read the same.
    assert c.parse_labels({**earlier, c.FORMAT: "1"}) == labels
    mark = mark_container(request_.id, Mark.READY, request_.created_time)["labels"]
    assert c.read_record("ovas-x.ready", mark)[c.AT] == request_.created_time.isoformat()


@pytest.mark.parametrize("record", [c.CONTAINER, c.MARK_RECORD, "a-kind-of-a-newer-release"])
def test_labels_of_a_newer_format_are_refused_by_the_codec_and_left_alone(request_, record):
    labels = {
        **c.container_spec(request_, [])["labels"],
        c.RECORD: record,
        c.FORMAT: "3",
        "ovas.spec-of-a-newer-release": "{}",
    }
    with pytest.raises(UnknownFormat) as refused:
        c.read_record("ovas-x", labels)
    assert (refused.value.name, refused.value.format) == ("ovas-x", "3")
    if record == c.CONTAINER:
        with pytest.raises(UnknownFormat):
            c.parse_labels(labels)
    name = c.container_name(request_.id)
    summary = {"Names": [f"/{name}"], "Id": "abc", "State": "created", "Labels": labels}
    sessions, malformed = observe.group([summary])
    assert (sessions, malformed) == ({}, [])  # neither read nor collected as malformed


def test_the_codec_writes_the_kind_and_format_and_keeps_them(request_):
    labels = c.fault_labels(request_.id, Reason.IMAGE_PULL, "manifest unknown")
    assert (labels[c.RECORD], labels[c.FORMAT]) == (c.FAULT, "1")
    kit = c.container_spec(request_, [])["labels"]
    assert (kit[c.RECORD], kit[c.FORMAT]) == (c.CONTAINER, c.CURRENT_FORMAT)
    with pytest.raises(LedgerError):
        c.RECORDS[c.FAULT].encode({**labels})
    with pytest.raises(LedgerError):
        c.RECORDS[c.FAULT].encode({"com.example.label": "x"})


def test_records_keep_the_spec_and_the_fault_and_read_an_earlier_outcome(request_):
    spec = c.container_spec(request_, [])
    pending = c.record_spec(c.container_name(request_.id, c.PENDING), c.pending_labels(spec))
    assert pending["name"] == f"ovas-{request_.id}.pending"
    assert pending["image"] == c.RECORD_IMAGE
    assert c.spec_from_labels(pending["labels"]) == spec
    assert c.parse_labels(pending["labels"]).session_id == request_.id
    fault = c.fault_labels(request_.id, Reason.IMAGE_PULL, "manifest unknown")
    assert (fault[c.REASON], fault[c.DETAIL]) == ("image_pull", "manifest unknown")
    outcome = Outcome(SessionState.ENDED, Reason.IDLE_TIMEOUT, "Ended: idle", request_.deadline)
    kept = earlier_outcome(request_, outcome, ["a", "b"])
    assert c.parse_outcome(kept) == (outcome, ["a", "b"])
    assert c.parse_labels(kept).session_id == request_.id


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


def test_port_range_setting_and_the_ephemeral_range(tmp_path):
    assert parse_port_range("31000-31999") == range(31000, 32000)
    assert parse_port_range("40000") == range(40000, 40001)
    for bad in ("31999-31000", "a-b", "0-10", "70000-70001"):
        with pytest.raises(ConfigurationError, match="OVAS_DOCKER_PORT_RANGE"):
            parse_port_range(bad)
    kernel = tmp_path / "ip_local_port_range"
    kernel.write_text("32768\t60999\n")
    assert ephemeral_overlap(range(31000, 32000), kernel) is None
    assert ephemeral_overlap(range(32000, 33000), kernel) == range(32768, 33000)
    assert ephemeral_overlap(range(32000, 33000), tmp_path / "missing") is None


TABLE = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 00000000:BFCC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 020011AC:BFCC 010011AC:D4F2 01 00000000:00000000 00:00000000 00000000     0
   2: 020011AC:BFCC 010011AC:D4F4 01 00000000:00000000 00:00000000 00000000     0
   3: 020011AC:BFCC 010011AC:D4F6 06 00000000:00000000 00:00000000 00000000     0
   4: 020011AC:1F4B 010011AC:D4F8 01 00000000:00000000 00:00000000 00000000     0
"""


def test_clients_are_the_established_connections_to_the_signaling_port():
    assert count_established(TABLE, 49100) == 2  # not the listener, not one in TIME_WAIT
    assert count_established(TABLE, 8011) == 1
    assert count_established(TABLE.splitlines()[0], 49100) == 0


GPUS = Inventory((Gpu(0, "GPU-aaa", "NVIDIA L40S", 48 * 2**30), Gpu(1, "GPU-bbb")), "test")


def test_ledger_lists_free_gpus_and_refuses_saying_what_is_free():
    ledger = GpuLedger(GPUS)
    assert [g.uuid for g in ledger.candidates(1, in_use=set())] == ["GPU-aaa", "GPU-bbb"]
    # A claim may name a GPU by index or UUID; both hold it.
    assert [g.uuid for g in ledger.candidates(1, in_use={"0"})] == ["GPU-bbb"]
    with pytest.raises(CapacityExceeded) as caught:
        ledger.candidates(2, in_use={"GPU-aaa"})
    assert "asks for 2 GPUs" in caught.value.message
    assert "1 of the 2 GPUs" in caught.value.message and "GPU 1" in caught.value.message
    assert ledger.candidates(0, in_use={"GPU-aaa", "GPU-bbb"}) == []


def test_no_gpu_at_all_is_no_retry_and_points_to_the_standin():
    ledger = GpuLedger(Inventory((), "no NVIDIA GPU found (NVML: driver not loaded)"))
    with pytest.raises(Unsatisfiable) as caught:
        ledger.candidates(1, in_use=())
    refused = caught.value
    assert refused.http_status == 422 and refused.field == "profile"
    assert "Retry-After" not in refused.headers
    assert "asks for 1 GPU, and this host has none" in refused.message
    assert "NVML: driver not loaded" in refused.message
    assert '"kit-standin"' in refused.message and "make standin" in refused.message


def test_more_gpus_than_the_host_has_is_no_retry():
    with pytest.raises(Unsatisfiable, match=r"asks for 3 GPUs, and this host has only 2"):
        GpuLedger(GPUS).candidates(3, in_use=())
    # Fewer free than asked, but enough on the host: a wait may help.
    with pytest.raises(CapacityExceeded) as caught:
        GpuLedger(GPUS).candidates(2, in_use={"GPU-bbb"})
    assert caught.value.headers == {"Retry-After": "60"}


def test_gpu_setting_overrides_detection():
    assert inventory("none", detector=lambda: GPUS).gpus == ()
    assert inventory("auto", detector=lambda: GPUS) is GPUS
    listed = inventory("1", detector=lambda: GPUS).gpus
    assert [g.uuid for g in listed] == ["GPU-bbb"]
    undetected = inventory("0,GPU-ccc", detector=lambda: Inventory((), "none")).gpus
    assert [g.device_id for g in undetected] == ["0", "GPU-ccc"]
    with pytest.raises(ConfigurationError, match="OVAS_DOCKER_GPUS"):
        inventory("first", detector=lambda: GPUS)


def test_gpus_by_cdi_name_are_named_slots_of_the_ledger():
    listed = inventory("nvidia.com/gpu=0, nvidia.com/gpu=GPU-bbb", detector=lambda: GPUS)
    assert [g.device_id for g in listed.gpus] == ["nvidia.com/gpu=0", "nvidia.com/gpu=GPU-bbb"]
    assert listed.gpus[0].describe() == "GPU nvidia.com/gpu=0 (NVIDIA L40S, 48 GiB, GPU-aaa)"
    ledger = GpuLedger(listed)
    free = ledger.candidates(1, in_use={"nvidia.com/gpu=0"})
    assert [g.device_id for g in free] == ["nvidia.com/gpu=GPU-bbb"]
    # A claim by index or UUID does not hold a GPU listed by CDI name: names are not mixed.
    assert len(ledger.candidates(2, in_use={"0", "GPU-aaa"})) == 2
    with pytest.raises(CapacityExceeded, match="0 of the 2 GPUs"):
        ledger.candidates(1, in_use={"nvidia.com/gpu=0", "nvidia.com/gpu=GPU-bbb"})
    # Undetected, and `all`: one slot holding every GPU of the kind.
    alone = inventory("nvidia.com/gpu=all", detector=lambda: Inventory((), "none"))
    assert [g.describe() for g in alone.gpus] == ["GPU nvidia.com/gpu=all"]
    assert [g.device_id for g in GpuLedger(alone).candidates(1, in_use=())] == [
        "nvidia.com/gpu=all"
    ]
    with pytest.raises(CapacityExceeded, match="0 of the 1 GPUs"):
        GpuLedger(alone).candidates(1, in_use={"nvidia.com/gpu=all"})


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ("nvidia.com/gpu=0,1", "both by CDI name and by index/UUID"),
        ("nvidia.com/gpu=all,nvidia.com/gpu=1", "nvidia.com/gpu=all and nvidia.com/gpu=1"),
        ("nvidia.com/gpu=0,nvidia.com/gpu=0", "one GPU twice"),
        ("nvidia.com/gpu=0,nvidia.com/gpu=GPU-aaa", "one GPU twice"),  # detection knows
        ("0,GPU-aaa", "one GPU twice"),
        ("nvidia.com/gpu=0:1,nvidia.com/gpu=0", "share a GPU"),
        ("nvidia.com/gpu=", "none of these"),
        ("nvidia.com/gpu", "none of these"),
        ("nvidia.com/=0", "none of these"),
        ("nvidia.com/gpu=0;1", "none of these"),
    ],
)
def test_a_gpu_list_that_could_give_a_gpu_twice_stops_ovas(setting, why):
    with pytest.raises(ConfigurationError, match="OVAS_DOCKER_GPUS") as caught:
        inventory(setting, detector=lambda: GPUS)
    assert why in caught.value.message


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


def summary(labels, record, state="running", status="Up 1 second", ports=()):
    session_id = labels[c.SESSION]
    name = c.container_name(session_id, record) if record in c.SESSION_RECORDS else record
    kind = record if record in c.SESSION_RECORDS else labels[c.RECORD]
    return {
        "Id": name,
        "Names": [f"/{name}"],
        "Labels": {**labels, c.RECORD: kind},
        "State": state,
        "Status": status,
        "Created": 0,
        "Ports": [
            {"IP": "127.0.0.1", "PrivatePort": p, "PublicPort": h, "Type": t} for p, t, h in ports
        ],
    }


PUBLISHED = ((49100, "tcp", 31005), (47998, "udp", 31006), (8011, "tcp", 31007))


def test_what_a_sessions_records_show(request_):
    spec = c.container_spec(request_, [])
    labels = spec["labels"]

    def seen(*summaries, **kw):
        sessions, malformed = observe.group(summaries)
        assert not malformed
        return observe.observation(sessions[request_.id], public_host="kit.example", **kw)

    pending = c.pending_labels(spec)
    pulling = seen(summary(pending, c.PENDING, "created", "Created"), progress="Pulling x: 10%")
    assert (pulling.stage, pulling.detail) == (Stage.WAITING, "Pulling x: 10%")
    created = seen(summary(labels, c.CONTAINER, "created", "Created"))
    assert created.stage is Stage.WAITING
    starting = seen(summary(labels, c.CONTAINER, ports=PUBLISHED))
    assert (starting.stage, starting.probe_ok) == (Stage.RUNNING, False)
    ready = seen(summary(labels, c.CONTAINER, ports=PUBLISHED), probe_ok=True, connections=0)
    assert ready.probe_ok and ready.host == "kit.example" and ready.connections == 0
    assert [(r.description, r.source_port, r.destination_port) for r in ready.routes] == [
        ("signaling", 31005, 49100),
        ("media", 31006, 47998),
    ]
    # A probe that passes before Docker shows the ports is no readiness: no routes yet.
    assert not seen(summary(labels, c.CONTAINER), probe_ok=True).probe_ok
    exited = seen(summary(labels, c.CONTAINER, "exited", "Exited (137) 1 second ago"))
    assert (exited.stage, exited.exit_code) == (Stage.EXITED, 137)
    fault = c.fault_labels(request_.id, Reason.CREATE_FAILED, "could not select device driver")
    both = seen(summary(labels, c.CONTAINER), summary(fault, f"ovas-{request_.id}.fault"))
    assert (both.stage, both.fault, both.detail) == (
        Stage.FAULT,
        Reason.CREATE_FAILED,
        "could not select device driver",
    )


def test_a_session_of_an_earlier_release_is_read_from_its_records_and_marks(request_):
    at = request_.created_time + timedelta(seconds=30)
    mark = mark_container(request_.id, Mark.READY, at)
    slot = {c.SESSION: request_.id, c.RECORD: c.SLOT, c.CLAIM: c.SLOT, c.USER: "alice"}
    sessions, malformed = observe.group(
        [
            summary(kit_labels(request_), c.CONTAINER, ports=PUBLISHED),
            summary(mark["labels"], mark["name"]),
            summary(slot, "ovas-slot-0"),
        ]
    )
    assert not malformed
    objects = sessions[request_.id]
    assert objects.workload and [f.name for f in objects.claims] == ["ovas-slot-0"]
    assert earlier.is_earlier(objects)
    record = earlier.record_of(objects)
    assert record == replace(Record.of(request_), marks={Mark.READY: at})
    found = earlier.earlier_record(
        objects,
        logs=lambda container_id: [],
        gpu_ids=str,
        ports=lambda protocol, count: Places(f"port-{protocol}", ("0", "1"), count, str),
    )
    assert [(p.kind, p.need) for p in found.named] == [("port-tcp", 2), ("port-udp", 1)]
    # Its claims and marks alone are no session: the reaper removes them once old enough.
    alone, _ = observe.group([summary(slot, "ovas-slot-1")])
    assert not alone[request_.id].exists and not alone[request_.id].workload
    # Ended (and its end complete), it has no workload: its containers stay, for its logs.
    outcome = Outcome(SessionState.ENDED, Reason.IDLE_TIMEOUT, "Ended: idle", at)
    ended, _ = observe.group(
        [
            summary(kit_labels(request_), c.CONTAINER, "exited", "Exited (0) 1 second ago"),
            summary(earlier_outcome(request_, outcome, ["x"]), c.OUTCOME),
        ]
    )
    assert ended[request_.id].exists and not ended[request_.id].workload
    assert earlier.record_of(ended[request_.id]).outcome == outcome


def earlier_outcome(request, outcome: Outcome, logs: list[str]) -> dict[str, str]:
    """An outcome record's labels, as the releases before the core's ledger wrote them."""
    return {
        **kit_labels(request),
        c.RECORD: c.OUTCOME,
        c.STATE: outcome.state.value,
        c.REASON: outcome.reason.value,
        c.MESSAGE: outcome.message,
        c.ENDED: outcome.ended_time.isoformat(),
        c.LOGS: "\n".join(logs),
    }


def test_a_record_whose_name_does_not_match_its_labels_is_malformed(request_):
    forged = summary(c.container_spec(request_, [])["labels"], c.CONTAINER)
    forged["Names"] = ["/someone-else"]
    sessions, malformed = observe.group([forged])
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
