"""The service over HTTP on a loopback port: results equal to `cervrt infer`'s, jobs, the token, 4xx errors."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from cervrt._cv import cv2
from tests.serve.conftest import start


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model):
    server, client = start(tmp_path_factory.mktemp("served"), tiny_model, workers=1, queue=2, max_body_mb=1)
    yield server, client
    client.close()
    server.__exit__()


@pytest.fixture(scope="module")
def infer_outputs(tmp_path_factory, tiny_model, region_png):
    """`cervrt infer` on the region, stride 32: its mask and its report."""
    out = tmp_path_factory.mktemp("infer")
    result = subprocess.run([sys.executable, "-m", "cervrt", "infer", "--engine", str(tiny_model), str(region_png),
                             "--out", str(out), "--device", "cpu", "--stride", "32"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    mask = cv2.imread(str(out / "region.mask.png"), cv2.IMREAD_UNCHANGED)
    return mask, json.loads((out / "region.json").read_text())


def _decode_png(data):
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _pixels(classes):
    return {name: row["pixels"] for name, row in classes.items()}


def _wait(client, job_id, statuses=("done", "failed", "cancelled"), timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_health_model_and_openapi(served, tiny_model):
    server, client = served
    assert server.url.startswith("http://127.0.0.1:")
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"] == "tiny.onnx"
    model = client.get("/v1/model").json()
    assert model["patch_size"] == 64 and model["classes"][0] == "background" and model["engine"] == "onnxruntime"
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/segment", "/v1/slides", "/v1/jobs/{job_id}", "/v1/model", "/healthz"} <= set(paths)


def test_segment_returns_the_labels_cervrt_infer_writes(served, region_png, infer_outputs):
    _, client = served
    mask, _ = infer_outputs
    response = client.post("/v1/segment", params={"stride": 32}, content=region_png.read_bytes(),
                           headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    labels = _decode_png(response.content)
    assert labels.dtype == np.uint8 and labels.shape == mask.shape == (200, 260)
    np.testing.assert_array_equal(labels, mask)
    assert 0 < np.count_nonzero(labels) < labels.size


def test_segment_json_has_the_report_of_cervrt_infer(served, region_png, infer_outputs):
    _, client = served
    mask, report = infer_outputs
    response = client.post("/v1/segment", params={"stride": 32}, content=region_png.read_bytes(),
                           headers={"Content-Type": "image/png", "Accept": "application/json"})
    assert response.status_code == 200
    body = response.json()
    for key in ("width", "height", "worst_grade", "tissue_pixels", "no_tissue"):
        assert body[key] == report[key], key
    assert _pixels(body["classes"]) == _pixels(report["classes"])
    assert body["settings"] == report["settings"] and body["patches"]["run"] == report["patches"]["run"]
    np.testing.assert_array_equal(_decode_png(base64.b64decode(body["labels_png"])), mask)


@pytest.mark.parametrize(("kwargs", "status", "message"), [
    ({"content": b"not an image", "headers": {"Content-Type": "image/png"}}, 400, "not an image OpenCV can decode"),
    ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "the request body is empty"),
    ({"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415, "Content-Type image/*"),
    ({"content": b"x" * (1024 * 1024 + 1), "headers": {"Content-Type": "image/png"}}, 413, "at most 1048576"),
    ({"content": b"x", "headers": {"Content-Type": "image/png"}, "params": {"stride": 0}}, 422, "stride"),
    ({"content": b"x", "headers": {"Content-Type": "image/png"}, "params": {"blend": "max"}}, 422, "blend"),
    ({"content": b"x", "headers": {"Content-Type": "image/png"}, "params": {"tissue_threshold": "nan"}}, 422,
     "tissue_threshold"),
])
def test_bad_segment_requests_are_4xx_in_one_line(served, kwargs, status, message):
    _, client = served
    response = client.post("/v1/segment", **kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert message in detail and "\n" not in detail and "Traceback" not in detail


def test_a_stride_too_small_for_the_service_is_refused(served, region_png):
    _, client = served
    response = client.post("/v1/segment", params={"stride": 2}, content=region_png.read_bytes(),
                           headers={"Content-Type": "image/png"})
    assert response.status_code == 400 and "stride must be at least 4" in response.json()["detail"]


def test_a_slide_job_writes_what_cervrt_infer_writes(served, region_png, infer_outputs):
    _, client = served
    mask, report = infer_outputs
    response = client.post("/v1/slides", json={"slide": str(region_png), "stride": 32})
    assert response.status_code == 202 and response.json()["status"] in ("queued", "running", "done")
    job = _wait(client, response.json()["id"])
    assert job["status"] == "done", job
    np.testing.assert_array_equal(cv2.imread(job["outputs"]["mask"], cv2.IMREAD_UNCHANGED), mask)
    assert job["report"]["classes"] == report["classes"] and job["progress"]["done"] == report["patches"]["run"]
    again = client.delete(f"/v1/jobs/{job['id']}")
    assert again.status_code == 409 and "already finished (done)" in again.json()["detail"]


def test_a_bad_slide_fails_its_job_in_one_line(served, tmp_path):
    _, client = served
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    job = _wait(client, client.post("/v1/slides", json={"slide": str(broken)}).json()["id"])
    assert job["status"] == "failed" and "\n" not in job["error"] and job["outputs"] is None


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"slide": "/no/such/slide.svs"}, 400, "does not exist on the server"),
    ({"slide": "x.svs", "stride": -1}, 422, "stride"),
    ({"slide": "x.svs", "colour": "red"}, 422, "colour"),
    ({"slide": "x.svs", "format": "bmp"}, 422, "format"),
    ({}, 422, "slide"),
])
def test_bad_slide_requests(served, body, status, message):
    _, client = served
    response = client.post("/v1/slides", json=body)
    assert response.status_code == status and message in response.json()["detail"]


def test_unknown_jobs_are_404(served):
    _, client = served
    for method in (client.get, client.delete):
        response = method("/v1/jobs/0123abcd")
        assert response.status_code == 404 and "no job '0123abcd'" in response.json()["detail"]


def test_cancel_a_queued_job(tmp_path, tiny_model, region_png):
    server, client = start(tmp_path, tiny_model, workers=1, queue=4)
    try:
        big = tmp_path / "big.png"
        rgb = np.random.default_rng(1).integers(90, 200, size=(1200, 1200, 3), dtype=np.uint8)
        cv2.imwrite(str(big), rgb)
        first = client.post("/v1/slides", json={"slide": str(big), "stride": 8, "tissue_threshold": 0}).json()
        second = client.post("/v1/slides", json={"slide": str(region_png)}).json()
        cancelled = client.delete(f"/v1/jobs/{second['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        stopped = client.delete(f"/v1/jobs/{first['id']}")
        assert stopped.status_code in (200, 409)
        job = _wait(client, first["id"])
        if job["status"] == "cancelled":
            assert not list((tmp_path / "jobs").glob(f"{first['id']}/*"))
        assert _wait(client, second["id"])["status"] == "cancelled"
    finally:
        client.close()
        server.__exit__()


def test_the_token_guards_every_v1_route(tmp_path, tiny_model):
    server, client = start(tmp_path, tiny_model, token="s3cret")
    try:
        assert client.get("/healthz").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            response = client.get("/v1/model", headers=headers)
            assert response.status_code == 401 and "bearer token" in response.json()["detail"]
        assert client.get("/v1/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v1/slides", json={"slide": "x"}).status_code == 401
    finally:
        client.close()
        server.__exit__()


def test_the_service_runs_the_model_on_the_backend_it_is_given(tmp_path, tiny_model, region_png, infer_outputs):
    """``cervrt serve --backend openvino``: the model runs on real OpenVINO, with the labels ONNX Runtime gives."""
    pytest.importorskip("openvino")
    server, client = start(tmp_path, tiny_model, backend="openvino")
    try:
        model = client.get("/v1/model").json()
        assert model["engine"] == "openvino" and model["provider"] == "OpenVINO CPU (f32)"
        response = client.post("/v1/segment", params={"stride": 32}, content=region_png.read_bytes(),
                               headers={"Content-Type": "image/png"})
        assert response.status_code == 200
        labels, (mask, _) = _decode_png(response.content), infer_outputs
        assert labels.shape == mask.shape and (labels == mask).mean() > 0.999 and np.count_nonzero(labels)
    finally:
        client.close()
        server.__exit__()
