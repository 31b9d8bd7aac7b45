"""One ovas worker process starting sessions on the Docker backend at an agreed moment, for
tests of admission across processes (as under `gunicorn -w 4`).

    python start_worker.py '{"docker_host": ..., "catalog": ..., "count": 5,
                             "capacity": 5, "port_range": "30100-30999", "go_at": <unix time>}'

prints one JSON object: {"started": [session ids], "refused": [messages]}. With "image"
(and "pull_policy"), the sessions run that image; with "linger": N, the process then waits N
seconds before it exits (a test may kill it meanwhile, as a crash of ovas would).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from backends.docker import DockerBackend
from ovas.catalog_files import FileCatalog
from ovas.errors import CapacityExceeded
from ovas.testing import make_request


def main(options: dict) -> dict:
    catalog = FileCatalog(options["catalog"])
    backend = DockerBackend(
        catalog,
        docker_host=options["docker_host"],
        port_range=options.get("port_range", "30100-30999"),
        gpus="none",
    )
    backend.check()  # connect before the agreed moment, as a serving worker would have
    requests = [
        make_request(
            catalog,
            app_id="kit-standin",
            profile_id="standin",
            capacity=options.get("capacity", 0),
            env={"STANDIN_READY_DELAY": str(options.get("ready_delay", 60))},
        )
        for _ in range(options["count"])
    ]
    if options.get("image"):
        kit = {"image": options["image"], "pull_policy": options.get("pull_policy", "Always")}
        requests = [replace(r, kit=replace(r.kit, **kit)) for r in requests]
    started: list[str] = []
    refused: list[str] = []

    def start(request) -> None:
        time.sleep(max(0.0, options.get("go_at", 0) - time.time()))
        try:
            started.append(backend.start(request).record.id)
        except CapacityExceeded as exc:
            refused.append(exc.message)

    threads = [threading.Thread(target=start, args=(r,)) for r in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"started": started, "refused": refused}


if __name__ == "__main__":
    options = json.loads(sys.argv[1])
    print(json.dumps(main(options)), flush=True)
    time.sleep(options.get("linger", 0))
