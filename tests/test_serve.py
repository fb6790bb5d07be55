"""``prunekit serve`` as a user runs it: a server process on a free loopback port, real HTTP requests (httpx) for
every endpoint and every bad input, concurrent clients of different tasks answered correctly and batched together,
task changes only with the token, and a full queue answered 503 while the server keeps serving."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from PIL import Image

import prunekit as pk

from task_runs import first_line, make_task_runs

pytestmark = pytest.mark.integration

TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def task_runs(tmp_path_factory):
    return make_task_runs(tmp_path_factory.mktemp("serve"))


@contextlib.contextmanager
def server(*args, token: str | None = None):
    """``prunekit serve ARGS --port 0`` in its own process; yields its base URL; stopped with SIGTERM."""
    env = {k: v for k, v in os.environ.items() if k != "PRUNEKIT_SERVE_TOKEN"}
    if token is not None:
        env["PRUNEKIT_SERVE_TOKEN"] = token
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "prunekit", "serve", *map(str, args), "--port", "0",
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        first = first_line(proc)
        assert first.startswith("serving "), (first, proc.poll(), proc.stderr.read() if proc.poll() is not None
                                              else "")
        url = first.split(" on ")[1].split(";")[0]
        assert url.startswith("http://127.0.0.1:"), first  # loopback unless told otherwise
        wait_until_up(url)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung server fails the test, not the suite
            proc.kill()


def wait_until_up(url: str) -> None:
    for _ in range(100):
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer /health")


def png(path) -> bytes:
    return path.read_bytes()


def expected(run_dir, path, k: int) -> list[tuple[str, float]]:
    """What prunekit.load(run) says for one image: its top-k (name, probability)."""
    model = pk.load(run_dir).eval()
    task = pk.load_tasks([run_dir]).runs[run_dir.name]
    with Image.open(path) as im, torch.no_grad():
        probs = model(task.transform()(im)[None]).softmax(-1)[0]
    p, idx = probs.topk(k)
    return [(task.class_name(i), q) for i, q in zip(idx.tolist(), p.tolist())]


def assert_answer(body: dict, want: list[tuple[str, float]]) -> None:
    got = [(t["name"], t["probability"]) for t in body["top"]]
    assert [n for n, _ in got] == [n for n, _ in want], (got, want)
    for (_, p), (_, q) in zip(got, want):
        assert abs(p - q) < 1e-5, (got, want)


@pytest.fixture(scope="module")
def served(task_runs):
    """A server of the three tasks (token set, 30 ms batching window)."""
    runs = task_runs.runs
    with server(runs["full"], runs["half"], runs["emptied"], "--max-wait-ms", 30, "--max-mb", 0.05,
                token=TOKEN) as url:
        yield url


def test_health_list_and_predict_raw_and_multipart(served, task_runs):
    runs, image = task_runs.runs, sorted(task_runs.images.rglob("*.png"))[3]
    health = httpx.get(f"{served}/health").json()
    assert health["status"] == "ok" and health["tasks"] == 3
    tasks = httpx.get(f"{served}/v1/tasks").json()["tasks"]
    assert [(t["name"], t["classes"]) for t in tasks] == [("full", 10), ("half", 3), ("emptied", 5)]
    assert tasks[1]["class_names"] == ["0", "1", "2"] and tasks[0]["parameters"] > tasks[2]["parameters"] > 0
    assert httpx.get(f"{served}/v1/tasks/half").json()["cycle"] == tasks[1]["cycle"]

    raw = httpx.post(f"{served}/v1/tasks/full/predict", params={"top_k": 3}, content=png(image),
                     headers={"Content-Type": "image/png"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["task"] == "full" and len(raw.json()["top"]) == 3
    assert_answer(raw.json(), expected(runs["full"], image, 3))
    form = httpx.post(f"{served}/v1/tasks/emptied/predict", files={"file": ("x.png", png(image), "image/png")})
    assert form.status_code == 200, form.text
    assert_answer(form.json(), expected(runs["emptied"], image, 5))  # top_k 5 by default, 5 classes


def test_bad_input_is_a_4xx_with_a_clear_message_and_the_server_keeps_serving(served, task_runs):
    image = png(sorted(task_runs.images.rglob("*.png"))[0])
    post = lambda path, **kw: httpx.post(f"{served}{path}", **kw)  # noqa: E731
    cases = [
        (post("/v1/tasks/full/predict", content=b"not an image", headers={"Content-Type": "image/png"}),
         400, "the upload: not a readable image"),
        (post("/v1/tasks/full/predict", content=b"", headers={"Content-Type": "image/png"}), 400, "body is empty"),
        (post("/v1/tasks/full/predict", content=b"x" * 60_000, headers={"Content-Type": "image/jpeg"}),
         413, "at most 52,428 are accepted"),
        (post("/v1/tasks/full/predict", content=image, headers={"Content-Type": "application/json"}),
         415, "Content-Type 'application/json': send the image as the body with an image/* type"),
        (post("/v1/tasks/ful/predict", content=image, headers={"Content-Type": "image/png"}),
         404, "unknown task 'ful'; did you mean 'full'?"),
        (httpx.get(f"{served}/v1/tasks/hlf"), 404, "did you mean 'half'?"),
        (post("/v1/tasks/full/predict", files={"image": ("x.png", image, "image/png")}),
         400, "without a 'file' field (fields: image)"),
        (post("/v1/tasks/full/predict", params={"top_k": 0}, content=image, headers={"Content-Type": "image/png"}),
         422, "greater than or equal to 1"),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (status, response.text)
        assert message in response.text, (message, response.text)
    good = post("/v1/tasks/half/predict", content=image, headers={"Content-Type": "image/png"})
    assert good.status_code == 200 and httpx.get(f"{served}/health").json()["status"] == "ok"


def test_concurrent_clients_of_different_tasks_are_batched_and_answered_correctly(served, task_runs):
    runs = task_runs.runs
    files = sorted(task_runs.images.rglob("*.png"))[:8]
    work = [(task, f) for f in files for task in ("full", "half", "emptied")]  # 24 requests, 3 tasks interleaved
    want = {(t, f): expected(runs[t], f, 2) for t, f in work}
    before = httpx.get(f"{served}/health").json()

    def ask(item):
        task, f = item
        r = httpx.post(f"{served}/v1/tasks/{task}/predict", params={"top_k": 2}, content=png(f),
                       headers={"Content-Type": "image/png"}, timeout=60)
        return item, r

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, work))
    for item, r in answers:
        assert r.status_code == 200, r.text
        assert r.json()["task"] == item[0]
        assert_answer(r.json(), want[item])
    after = httpx.get(f"{served}/health").json()
    assert after["answered"] - before["answered"] == len(work)
    assert after["batches"] - before["batches"] < len(work)  # requests shared forwards
    assert max(r.json()["batch"] for _, r in answers) > 1


def test_tasks_change_only_with_the_token(served, task_runs):
    runs, image = task_runs.runs, png(sorted(task_runs.images.rglob("*.png"))[5])
    add = lambda headers, **body: httpx.post(f"{served}/v1/tasks", json=body, headers=headers, timeout=60)  # noqa
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert add({}, run=str(runs["half"]), name="again").status_code == 401
    assert add({"Authorization": "Bearer nope"}, run=str(runs["half"]), name="again").status_code == 403
    assert httpx.delete(f"{served}/v1/tasks/full").status_code == 401
    assert [t["name"] for t in httpx.get(f"{served}/v1/tasks").json()["tasks"]] == ["full", "half", "emptied"]

    taken = add(bearer, run=str(runs["half"]), name="full")
    assert taken.status_code == 409 and "the name 'full' is taken" in taken.text
    other = add(bearer, run=str(task_runs.other))
    assert other.status_code == 400 and "trained on another backbone" in other.text and "other" in other.text
    lora = add(bearer, run=str(task_runs.lora))
    assert lora.status_code == 400 and "lora" in lora.text
    added = add(bearer, run=str(runs["half"]), name="again")
    assert added.status_code == 201 and added.json()["classes"] == 3
    r = httpx.post(f"{served}/v1/tasks/again/predict", content=image, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and len(r.json()["top"]) == 3
    gone = httpx.delete(f"{served}/v1/tasks/again", headers=bearer)
    assert gone.status_code == 200 and gone.json()["tasks"] == ["full", "half", "emptied"]
    assert httpx.post(f"{served}/v1/tasks/again/predict", content=image,
                      headers={"Content-Type": "image/png"}).status_code == 404


def test_without_a_token_nothing_changes_and_a_full_queue_is_503(task_runs):
    runs, image = task_runs.runs, png(sorted(task_runs.images.rglob("*.png"))[1])
    # one place in the queue; the first request waits up to 3 s for a second one to join its batch
    with server(runs["full"], runs["half"], "--queue", 1, "--max-batch", 2, "--max-wait-ms", 3000) as url:
        off = httpx.post(f"{url}/v1/tasks", json={"run": str(runs["emptied"])},
                         headers={"Authorization": f"Bearer {TOKEN}"})
        assert off.status_code == 403 and "switched off" in off.text
        assert httpx.delete(f"{url}/v1/tasks/full", headers={"Authorization": "Bearer x"}).status_code == 403
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(httpx.post, f"{url}/v1/tasks/full/predict", content=image,
                                headers={"Content-Type": "image/png"}, timeout=60)
            for _ in range(100):
                if httpx.get(f"{url}/health").json()["queued"] == 1:
                    break
                time.sleep(0.02)
            full = httpx.post(f"{url}/v1/tasks/half/predict", content=image, headers={"Content-Type": "image/png"})
            assert full.status_code == 503 and full.headers["retry-after"] == "1", full.text
            assert "1 requests are waiting already" in full.text
            assert first.result().status_code == 200
        assert [t["name"] for t in httpx.get(f"{url}/v1/tasks").json()["tasks"]] == ["full", "half"]


def test_the_server_refuses_bad_options_before_serving(task_runs):
    run = task_runs.runs["full"]
    cases = [
        (["serve", run, "--port", "70000"], "70000 is not in the range 0<=x<=65535"),
        (["serve", run, "--host", "no.such.host.invalid"], "--host 'no.such.host.invalid': not an address"),
        (["serve", run, task_runs.other], "trained on another backbone"),
        (["serve", "--task", f"a={run}", "--task", f"a={task_runs.runs['half']}"], "'a' is named twice"),
    ]
    for args, message in cases:
        out = subprocess.run([sys.executable, "-m", "prunekit", *map(str, args)], capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 2 and message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    empty = subprocess.run([sys.executable, "-m", "prunekit", "serve", str(run)], capture_output=True, text=True,
                           timeout=300, env={**os.environ, "PRUNEKIT_SERVE_TOKEN": " "})
    assert empty.returncode == 2 and "PRUNEKIT_SERVE_TOKEN is set but empty" in empty.stderr, empty.stderr


def test_an_image_decodes_the_same_from_a_path_and_from_bytes(task_runs):
    from prunekit.run.predicting import read_image

    f = sorted(task_runs.images.rglob("*.png"))[0]
    transform = pk.load_tasks([task_runs.runs["half"]]).runs["half"].transform()
    torch.testing.assert_close(read_image(io.BytesIO(f.read_bytes()), transform), read_image(f, transform))
