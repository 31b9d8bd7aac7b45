"""Queued starts and retry-safe starts on the emulated cluster, through two replicas (two
apps, each with its own `KubernetesBackend`, over one cluster): they agree on one line, start
each queued session once (one Pod), in order, whichever replica a session is deleted through;
the line is ConfigMaps (`ovas-ledger-queue.<id>`) and a queued session's DELETE leaves no
object behind; one Idempotency-Key through both replicas makes one Pod; a full namespace
ResourceQuota queues a start rather than refusing it."""

from __future__ import annotations

import threading

import pytest

from backends.kubernetes.ledger import object_name
from kubernetes_backend.conftest import NAMESPACE
from kubernetes_backend.steps import (
    CONFIG_MAPS,
    ONE_POD_QUOTA,
    PODS,
    START_BODY,
    leftovers,
    of_session,
    wait_until,
)
from ovas import create_app
from ovas.queueing import PREFIX

pytestmark = pytest.mark.kubernetes
URL = "/streaming/stream"


@pytest.fixture
def replicas(make_backend):
    """`replicas(n=2, **config)`: `n` apps at capacity 2, each on its own backend."""

    def build(n: int = 2, **config):
        settings = {"TESTING": True, "REAP_INTERVAL": 0, "SESSION_CAPACITY": 2, **config}
        return [create_app(settings, backend=make_backend()) for _ in range(n)]

    return build


def post(client, **headers) -> dict:
    answer = client.post(URL, json=START_BODY, headers=headers)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    return answer.json


def condition(session: dict) -> str:
    return session["status"]["condition"]


def pod_creates(cluster) -> int:
    """POSTs of pods the API server has answered (a refused second create counts too)."""
    return sum(
        1
        for r in cluster.emulator.calls()
        if r.method.value == "POST" and r.url.path.endswith("/pods")
    )


def has_pod(cluster, session_id: str) -> bool:
    return bool(of_session(cluster, PODS, session_id))


def config_maps(cluster) -> set[str]:
    return {c["metadata"]["name"] for c in cluster.objects(CONFIG_MAPS, NAMESPACE)}


def line_records(cluster) -> set[str]:
    """The queued starts' ConfigMaps."""
    return {name for name in config_maps(cluster) if name.startswith(object_name(PREFIX))}


def positions(client) -> dict[str, int]:
    listed = client.get(URL).json["items"]
    return {s["id"]: s["queue_position"] for s in listed if s["queue_position"] is not None}


def stop_at_once(pairs) -> None:
    """DELETE each (client, session id) in its own thread, all released together."""
    barrier = threading.Barrier(len(pairs))
    codes: list[int] = []

    def stop(client, session_id):
        barrier.wait()
        codes.append(client.delete(f"{URL}/{session_id}").status_code)

    threads = [threading.Thread(target=stop, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [204] * len(pairs)


def test_two_replicas_agree_on_one_line_and_start_each_queued_session_once_in_order(
    replicas, cluster
):
    apps = replicas()
    clients = [a.test_client() for a in apps]
    running = [post(clients[0])["id"], post(clients[1])["id"]]
    queued = [post(clients[i % 2]) for i in range(8)]
    assert [(condition(q), q["queue_position"]) for q in queued] == [
        ("queued", n) for n in range(1, 9)
    ]
    queued_ids = [q["id"] for q in queued]
    for client in clients:
        for place, session_id in enumerate(queued_ids, 1):
            answer = client.get(f"{URL}/{session_id}")
            assert (answer.status_code, answer.json["queue_position"]) == (202, place)
        assert positions(client) == {sid: n for n, sid in enumerate(queued_ids, 1)}
    # The line is ConfigMaps; a queued session has no pod.
    assert line_records(cluster) == {object_name(f"{PREFIX}{sid}") for sid in queued_ids}
    assert not any(has_pod(cluster, sid) for sid in queued_ids)
    assert pod_creates(cluster) == 2

    order: list[str] = []
    # One at a time, alternating replicas: the first in line starts in the DELETE's request.
    for i in range(4):
        assert clients[i % 2].delete(f"{URL}/{running.pop(0)}").status_code == 204
        new = [sid for sid in queued_ids if has_pod(cluster, sid) and sid not in order]
        assert new == [queued_ids[len(order)]]
        order += new
        running += new
        waiting = queued_ids[len(order) :]
        for client in clients:
            assert positions(client) == {sid: n for n, sid in enumerate(waiting, 1)}
    # Both sessions deleted at once, one through each replica: the next two start, once.
    for _ in range(2):
        stop_at_once([(clients[0], running.pop(0)), (clients[1], running.pop(0))])
        for app in apps:
            app.extensions["ovas"].sessions.drain()
        new = [sid for sid in queued_ids if has_pod(cluster, sid) and sid not in order]
        assert new == queued_ids[len(order) : len(order) + 2]
        order += new
        running += new
    assert order == queued_ids
    assert pod_creates(cluster) == 2 + len(queued_ids)  # one pod each, never a second try
    assert line_records(cluster) == set()
    for sid in queued_ids[-2:]:
        started = clients[1].get(f"{URL}/{sid}").json
        assert condition(started) in ("creating", "ready") and started["queue_position"] is None


def test_deleting_a_queued_session_through_the_other_replica_leaves_nothing(replicas, cluster):
    first, second = (a.test_client() for a in replicas())
    running = [post(first)["id"], post(first)["id"]]
    leaving, staying = post(first), post(first)
    assert object_name(f"{PREFIX}{leaving['id']}") in config_maps(cluster)
    before = config_maps(cluster)

    assert second.delete(f"{URL}/{leaving['id']}").status_code == 204
    assert config_maps(cluster) == before - {object_name(f"{PREFIX}{leaving['id']}")}
    assert not [name for name in config_maps(cluster) if leaving["id"] in name]
    assert leftovers(cluster, leaving["id"]) == []
    assert first.get(f"{URL}/{leaving['id']}").status_code == 404
    assert second.delete(f"{URL}/{leaving['id']}").status_code == 404
    assert first.get(f"{URL}/{staying['id']}").json["queue_position"] == 1
    # The line moves past it: the next DELETE starts the one behind it.
    assert second.delete(f"{URL}/{running[0]}").status_code == 204
    assert has_pod(cluster, staying["id"]) and not has_pod(cluster, leaving["id"])
    assert pod_creates(cluster) == 3


def test_one_idempotency_key_through_both_replicas_makes_one_pod(replicas, cluster):
    first, second = (a.test_client() for a in replicas())
    answers: list[dict] = []
    barrier = threading.Barrier(2)

    def start(client):
        barrier.wait()
        answers.append(post(client, **{"Idempotency-Key": "retry-1"}))

    threads = [threading.Thread(target=start, args=(c,)) for c in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 2 and answers[0]["id"] == answers[1]["id"]
    assert pod_creates(cluster) == 1 and has_pod(cluster, answers[0]["id"])
    # A queued start's key: the retry through the other replica answers it queued.
    post(first)
    queued = post(first, **{"Idempotency-Key": "retry-2"})
    again = post(second, **{"Idempotency-Key": "retry-2"})
    assert (again["id"], condition(again), again["queue_position"]) == (queued["id"], "queued", 1)
    assert len(line_records(cluster)) == 1 and pod_creates(cluster) == 2
    assert second.delete(f"{URL}/{answers[0]['id']}").status_code == 204
    assert has_pod(cluster, queued["id"])
    retried = post(second, **{"Idempotency-Key": "retry-2"})
    assert retried["id"] == queued["id"] and condition(retried) in ("creating", "ready")
    assert pod_creates(cluster) == 3


def test_a_full_resource_quota_queues_the_start(replicas, cluster):
    cluster.seed(NAMESPACE, [ONE_POD_QUOTA])
    (app,) = replicas(1, SESSION_CAPACITY=5)
    client = app.test_client()
    first = post(client)
    assert condition(first) == "creating"
    waiting = post(client)
    assert (condition(waiting), waiting["queue_position"]) == ("queued", 1)
    assert waiting["status"]["message"] == "Waiting for a free session slot: 1st in line"
    assert not has_pod(cluster, waiting["id"])
    assert leftovers(cluster, waiting["id"]) == []  # its slot was given back
    assert client.delete(f"{URL}/{first['id']}").status_code == 204
    # The quota counts the first pod until its grace ends; the line moves once it is gone,
    # at the DELETE's drain or a reaper pass after it.
    sessions = app.extensions["ovas"].sessions
    assert wait_until(lambda: not has_pod(cluster, first["id"]), timeout=10)

    def reaped_and_started() -> bool:
        sessions.reap()
        return has_pod(cluster, waiting["id"])

    assert wait_until(reaped_and_started)
    started = client.get(f"{URL}/{waiting['id']}")
    assert condition(started.json) in ("creating", "ready"), started.json
    assert line_records(cluster) == set()
