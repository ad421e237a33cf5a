"""Issue 16's twelve hostile probes against the two services, each printing fixed / NOT with what it saw."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
from probe_service import CAN_DROP_PRIVILEGES, FINAL, KEY, LONG, RUN, Service, wait
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

results: list[tuple[str, bool, str]] = []


def item(name: str) -> Callable[[Callable[[], str]], Callable[[], None]]:
    """Record a probe's outcome: it returns what it saw, or raises AssertionError saying what failed."""

    def wrap(probe: Callable[[], str]) -> Callable[[], None]:
        def run() -> None:
            began = time.monotonic()
            try:
                seen, ok = probe(), True
            except Exception as error:  # a probe that crashes is a finding too
                seen, ok = f"{type(error).__name__}: {error}", False
            results.append((name, ok, f"{seen} ({time.monotonic() - began:.0f} s)"))
            print(f"[{'fixed' if ok else 'NOT  '}] {name}: {results[-1][2]}", flush=True)

        return run

    return wrap


def probes(open_: Service, keyed: Service) -> Iterator[Callable[[], None]]:
    s = open_

    @item("1 two runs finishing together both export ONNX")
    def exports() -> str:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            ids = list(pool.map(lambda _: s.start(RUN), range(2)))
        states = [s.finished(run_id) for run_id in ids]
        onnx = [(b["status"], b["onnx"]["status"]) for b in states]
        assert onnx == [("completed", "exported")] * 2, onnx
        downloads = [s.http.get(f"/experiments/{run_id}/model.onnx").status_code for run_id in ids]
        assert downloads == [200, 200], downloads
        again = s.http.post(f"/experiments/{ids[0]}/export").status_code
        assert again not in (404, 405), f"both exported, but POST /experiments/{{id}}/export answers {again}"
        return f"both exported, downloads 200; POST /experiments/{{id}}/export answers {again}"

    @item("2 unstoppable hyperparameters are refused; stop is honoured within seconds")
    def stoppable() -> str:
        hp = {"learning_starts": 0, "gradient_steps": 1_000_000_000, "train_freq": 1, "batch_size": 1}
        huge = {"algorithm": "DQN", "total_episodes": 2, "timesteps_per_episode": 64, "maze_size": 6}
        answers = [
            s.http.post("/training/start", json={**huge, "hyperparameters": hp}),
            s.http.post("/training/start", json={**huge, "hyperparameters": {"train_freq": 10**12}}),
        ]
        locs = [a.json()["detail"][0]["loc"][-1] for a in answers if a.status_code == 422]
        assert [a.status_code for a in answers] == [422, 422], [a.text for a in answers]
        run_id = s.start(LONG)
        s.until(run_id, lambda b: b["status"] == "running" and b["timesteps"] > 0)
        began = time.monotonic()
        stopped = s.http.post(f"/training/stop/{run_id}", params={"wait_s": 30}).json()
        took = time.monotonic() - began
        assert stopped["status"] == "stopped", stopped
        return f"422 naming {locs}; a running run stopped in {took:.1f} s"

    @item("3 NaN/Infinity/booleans/numeric strings get 422 naming the field")
    def non_finite() -> str:
        bodies = {
            "maze_size": '{"algorithm":"PPO","total_episodes":2,"timesteps_per_episode":64,"maze_size":NaN}',
            "learning_rate": '{"algorithm":"PPO","total_episodes":2,"timesteps_per_episode":64,'
            '"hyperparameters":{"learning_rate":Infinity}}',
            "gamma": '{"algorithm":"PPO","total_episodes":2,"timesteps_per_episode":64,'
            '"hyperparameters":{"gamma":-Infinity}}',
            "target_kl": '{"algorithm":"PPO","total_episodes":2,"timesteps_per_episode":64,'
            '"hyperparameters":{"target_kl":Infinity}}',
            "total_episodes": '{"algorithm":"PPO","total_episodes":true,"timesteps_per_episode":64}',
            "timesteps_per_episode": '{"algorithm":"PPO","total_episodes":2,"timesteps_per_episode":"10"}',
        }
        headers = {"Content-Type": "application/json"}
        bad = []
        for field, body in bodies.items():
            answer = s.http.post("/training/start", content=body, headers=headers)
            if answer.status_code != 422 or field not in json.dumps(answer.json()["detail"]):
                bad.append((field, answer.status_code))
        evaluate = s.http.post(
            f"/experiments/{uuid.uuid4()}/evaluate", content='{"episodes":NaN}', headers=headers
        )
        if evaluate.status_code != 422:
            bad.append(("episodes", evaluate.status_code))
        assert not bad, bad
        return f"{len(bodies) + 1} bodies: all 422 naming their field"

    @item("4 a 20 s database blip loses nothing; Idempotency-Key; /health sees it")
    def blip() -> str:
        if not CAN_DROP_PRIVILEGES:
            return "not probed (needs root and setpriv to run the service without file privileges)"
        runs = [s.start({**RUN, "total_episodes": 40, "n_envs": 2, "seed": seed}) for seed in (1, 2)]
        s.until(runs[0], lambda b: b["status"] == "running")
        key = str(uuid.uuid4())
        s.db_dir.chmod(0)
        try:
            time.sleep(3)
            health = httpx.get(f"{s.url}/health", timeout=30).json()
            during = s.http.post("/training/start", json={**RUN, "seed": 9}, headers={"Idempotency-Key": key})
            time.sleep(17)
        finally:
            s.db_dir.chmod(0o755)
        retry = s.http.post("/training/start", json={**RUN, "seed": 9}, headers={"Idempotency-Key": key})
        assert retry.status_code == 200, retry.text
        if during.status_code == 200:
            assert during.json()["experiment_id"] == retry.json()["experiment_id"]
        runs.append(retry.json()["experiment_id"])
        ends = [(b["status"], b["onnx"]["status"]) for b in map(s.finished, runs)]
        assert ends == [("completed", "exported")] * 3, ends
        assert health["database"]["ok"] is False and health["status"] == "degraded", health
        return f"start during blip {during.status_code}, retry with the key → same run; runs end {ends}"

    @item("5 a read-only data directory: checkpoints skipped, training goes on; I/O failure resumable")
    def filesystem() -> str:
        if not CAN_DROP_PRIVILEGES:
            return "not probed (needs root and setpriv to run the service without file privileges)"
        run_id = s.start({**LONG, "maze_size": 5})
        before = wait(lambda: s.checkpoints(run_id), 120, "a checkpoint")[0]
        checkpoint_dir = before.parent
        s.data_dir.chmod(0o555)
        checkpoint_dir.chmod(0o555)
        try:
            time.sleep(2)
            health = httpx.get(f"{s.url}/health", timeout=30).json()["data_dir"]
            read_only_at = s.status(run_id)["timesteps"]
            time.sleep(18)
            # At least 20 s, and until two checkpoints were due (a crowded CPU trains slowly).
            s.until(run_id, lambda b: b["timesteps"] >= read_only_at + 2 * 64)
            during = s.status(run_id)["status"]
        finally:
            s.data_dir.chmod(0o755)
            checkpoint_dir.chmod(0o755)
        wait(lambda: s.checkpoints(run_id)[0] != before, 120, "a checkpoint after the fault")
        stopped = s.http.post(f"/training/stop/{run_id}", params={"wait_s": 30}).json()["status"]
        warnings = s.log_path.read_text().count('"checkpoint_not_saved"')
        assert health["writable"] is False and during == "running" and stopped == "stopped", (health, during)
        assert warnings >= 1, "no checkpoint_not_saved warning"
        # A run that does fail from an I/O error (its directory unwritable at the end) resumes.
        failing = s.start({**RUN, "maze_size": 5, "n_envs": 2, "total_episodes": 20})
        run_dir = s.data_dir / "runs" / failing
        wait(lambda: len(s.checkpoints(failing)) >= 2, 120, "two checkpoints")
        run_dir.chmod(0o555)
        try:
            failed = s.until(failing, lambda b: b["status"] in FINAL)
        finally:
            run_dir.chmod(0o755)
        newest = s.checkpoints(failing)[0]
        newest.write_bytes(newest.read_bytes()[:-300])
        resumed = s.http.post(f"/training/resume/{failing}")
        assert failed["status"] == "failed" and resumed.status_code == 200, (failed["error"], resumed.text)
        done = s.finished(failing)
        assert done["status"] == "completed", done
        return (
            f"health data_dir.writable false during it, run kept training ({warnings} checkpoint_not_saved "
            f"warnings), new checkpoint after; failed run ({failed['error'][:40]}…) resumed past a "
            "truncated newest checkpoint and completed"
        )

    @item("6 45 concurrent evaluations: bounded (429), /health stays fast")
    def starvation() -> str:
        run_id = s.start(RUN)
        s.finished(run_id)

        def evaluate(_: int) -> int:
            with httpx.Client(base_url=s.url, timeout=300) as http:
                return http.post(f"/experiments/{run_id}/evaluate", json={"episodes": 300}).status_code

        with concurrent.futures.ThreadPoolExecutor(45) as pool:
            codes = pool.map(evaluate, range(45))
            health_s = []
            for _ in range(10):
                began = time.monotonic()
                httpx.get(f"{s.url}/health", timeout=60)
                health_s.append(time.monotonic() - began)
            statuses = list(codes)
        assert max(health_s) < 2 and statuses.count(429) >= 40, (max(health_s), statuses)
        return f"{statuses.count(429)} × 429, /health max {max(health_s) * 1000:.0f} ms"

    @item("7 huge query parameters get 422")
    def query() -> str:
        codes = [
            s.http.get("/experiments", params={"offset": "100000000000000000000"}).status_code,
            s.http.get("/experiments", params={"limit": "100000000000000000000"}).status_code,
            s.http.post(f"/training/stop/{uuid.uuid4()}", params={"wait_s": "1e300"}).status_code,
        ]
        assert codes == [422, 422, 422], codes
        return f"{codes}"

    @item("8 MAX_QUEUED_RUNS holds under 20 concurrent starts (cap 2, queue 3)")
    def admission() -> str:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: s.http.post("/training/start", json=LONG), range(20)))
        accepted = [a.json()["experiment_id"] for a in answers if a.status_code == 200]
        for run_id in accepted:
            s.http.post(f"/training/stop/{run_id}", params={"wait_s": 30})
        assert len(accepted) <= 5 and {a.status_code for a in answers} <= {200, 429}, len(accepted)
        return f"{len(accepted)} accepted, {20 - len(accepted)} × 429"

    @item("9 corrupt or unreadable model files get 409/503, never 500 or a truncated body")
    def model_files() -> str:
        run_id = s.start(RUN)
        s.finished(run_id)
        onnx = s.data_dir / "runs" / run_id / "model.onnx"
        saved = onnx.read_bytes()
        onnx.write_bytes(saved[:100])
        truncated = s.http.post(f"/experiments/{run_id}/rollout", json={}).status_code
        onnx.write_bytes(saved)
        unreadable = None
        if CAN_DROP_PRIVILEGES:
            onnx.chmod(0)
            unreadable = s.http.get(f"/experiments/{run_id}/model.onnx").status_code
            onnx.chmod(0o644)
        assert truncated == 409 and unreadable in (503, None), (truncated, unreadable)
        return f"truncated model.onnx → {truncated}; unreadable model.onnx → {unreadable}"

    @item("10 API_KEY guards docs and is checked first; WebSocket takes X-API-Key; foreign Host refused")
    def auth() -> str:
        anonymous = httpx.Client(base_url=keyed.url, timeout=30)
        docs = [anonymous.get(path).status_code for path in ("/docs", "/redoc", "/openapi.json")]
        malformed = anonymous.post(
            "/training/start", content="{nope", headers={"Content-Type": "application/json"}
        ).status_code
        anonymous.close()
        # An unknown run: with the key the socket opens and then closes 4404 (unknown experiment_id);
        # without it the handshake is refused (401) or closed 1008.
        ws_url = f"ws://127.0.0.1:{keyed.port}/ws/training/{uuid.uuid4()}"

        def ws_outcome(headers: dict[str, str]) -> str:
            try:
                with connect(ws_url, additional_headers=headers, open_timeout=30) as socket_:
                    return f"message {str(socket_.recv(timeout=30))[:30]}"
            except ConnectionClosed as closed:
                return f"close {closed.rcvd.code if closed.rcvd else None}"
            except InvalidStatus as refused:
                return f"HTTP {refused.response.status_code}"

        reply, refused = ws_outcome({"X-API-Key": KEY}), ws_outcome({})
        assert reply == "close 4404" and refused in ("HTTP 401", "close 1008"), (reply, refused)
        rebinding = httpx.get(f"{s.url}/health", headers={"Host": "evil.example"}).status_code
        assert docs == [401] * 3 and malformed == 401 and rebinding == 400, (docs, malformed, rebinding)
        return (
            f"docs {docs}, malformed JSON without key {malformed}, WS with the header {reply} "
            "(authenticated; "
            f"unknown run), without it {refused}, Host evil.example {rebinding}"
        )

    @item("11 a chunked body over MAX_REQUEST_BYTES gets 413")
    def chunked() -> str:
        def body() -> Iterator[bytes]:
            yield b'{"padding":"'
            for _ in range(100):
                yield b"x" * 1024
            yield b'"}'

        code = s.http.post("/training/start", content=body(), headers={"Content-Type": "application/json"})
        assert code.status_code == 413, code.status_code
        return "413"

    @item("12 no prefixItems in the OpenAPI schema")
    def schema() -> str:
        text = s.http.get("/openapi.json").text
        rollout = json.loads(text)["components"]["schemas"]["RolloutResponse"]["properties"]["start"]
        assert "prefixItems" not in text, "prefixItems found"
        return f"RolloutResponse.start: {json.dumps(rollout)[:80]}"

    yield from (exports, stoppable, non_finite, blip, filesystem, starvation, query, admission)
    yield from (model_files, auth, chunked, schema)
