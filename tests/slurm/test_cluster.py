"""The test cluster itself: slurmrestd answers for the nodes and their GPUs (GRES)."""

import time

from tests.slurm.cluster import REST_VERSION


def test_slurmrestd_reports_four_idle_nodes_with_eight_h200_each(slurm):
    answer = slurm.rest("GET", "nodes")
    assert answer["errors"] == []
    assert answer["meta"]["plugin"]["type"] == f"openapi/{REST_VERSION}"
    nodes = {node["name"]: node for node in answer["nodes"]}
    assert sorted(nodes) == ["gpu1", "gpu2", "gpu3", "gpu4"]
    for node in nodes.values():
        assert node["state"] == "idle"
        assert node["gres"] == "gpu:h200:8"
        assert node["address"] == "127.0.0.1"
        assert "gres/gpu:h200=8" in node["tres"]


def test_a_job_through_slurmrestd_gets_the_gpus_it_asked_for(slurm):
    submitted = slurm.rest(
        "POST",
        "job/submit",
        {
            "job": {
                "name": "harness-check",
                "partition": "gpu",
                "nodes": "1",
                "gpus_per_node": "h200:2",
                "environment": {"PATH": "/bin:/usr/bin"},
                "current_working_directory": "/tmp",
                "standard_output": "/dev/null",
            },
            "script": "#!/bin/sh\nexec sleep 300\n",
        },
    )
    assert submitted["errors"] == []
    job_id = submitted["job_id"]
    deadline = time.monotonic() + 15
    while True:
        job = slurm.rest("GET", f"job/{job_id}")["jobs"][0]
        if job["job_state"] == "RUNNING" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert job["job_state"] == "RUNNING"
    assert job["gres_detail"] == ["gpu:h200:2(IDX:0-1)"]
    node = slurm.rest("GET", f"node/{job['nodes']}")["nodes"][0]
    # A node partly in use may read "allocated" (not "mixed") for a while after a job starts,
    # so what is free on a node is read from its GRES in use, not from its state.
    assert node["state"] in ("mixed", "allocated")
    assert node["gres_used"] == "gpu:h200:2(IDX:0-1)"
