"""A loopback fake of OpenAI's API (files, fine_tuning.jobs + events + checkpoints, chat.completions, models).

It fakes only OpenAI's servers, at the HTTP boundary: clients under test use the real `openai` SDK
over real HTTP. Responses are built with the SDK's own pydantic types so their shapes follow the API
reference. Everything is scriptable from the test thread:

    with FakeOpenAI(latency=0.05) as fake:            # uvicorn in a background thread, random port
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-test")
        fake.fail("/v1/fine_tuning/jobs", status=429, times=2)   # two 429s, then success
        fake.fail("/v1/files", status=500)                         # 500 forever (times=None)
        fake.next_job_error = ("invalid_training_file", "Training file has 2 examples; need 10.")
        fake.chat_reply = lambda req: "hello"                      # or a dict / list of choices
        fake.count("POST", "/v1/files")                            # requests seen (retries included)

Jobs move validating_files -> queued -> running -> succeeded (or failed) one stage per retrieve
(`advance="poll"`, default) or every `stage_seconds` of wall clock (`advance="clock"`). A succeeded job
gets a result file (base64-encoded CSV like OpenAI's: step,train_loss,train_accuracy,valid_loss,
valid_mean_token_accuracy), three checkpoints and metric events.

Import it from tests (`from fake_openai import FakeOpenAI`); benches and notebooks add `tests/` to
`sys.path` first. The pytest fixture `fake_openai` lives in `tests/fixtures_openai.py`.
"""
from __future__ import annotations
import asyncio, base64, collections, json, math, threading, time, uuid
from dataclasses import dataclass
from typing import Any, Callable

import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import FileObject, FileDeleted, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

__all__ = ["FakeOpenAI", "FakeError", "FailRule", "STAGES", "run_fake", "paraphrase_reply"]

STAGES = ["validating_files", "queued", "running", "succeeded"]
TERMINAL = {"succeeded", "failed", "cancelled"}


class FakeError(Exception):
    "Raise from a `chat_reply` function to answer that request with an HTTP error."
    def __init__(self, status:int=500, message:str="fake error", code:str|None=None, headers:dict|None=None):
        super().__init__(message); self.status,self.message,self.code,self.headers = status,message,code,headers or {}


@dataclass
class FailRule:
    "Answer requests whose path starts with `path` (and `method`, if set) with `status`, `times` times (None = forever)."
    path:str
    status:int = 500
    times:int|None = None
    method:str|None = None
    message:str = "scripted failure"
    retry_after_ms:float|None = 1.0   # header that makes the SDK retry fast; None = no header

    def matches(self, method:str, path:str)->bool:
        return path.startswith(self.path) and (self.method is None or self.method.upper()==method) and (self.times is None or self.times>0)


def _err(status:int, message:str, type_:str="invalid_request_error", param=None, code=None, headers=None)->JSONResponse:
    "OpenAI's error envelope."
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": code}},
                        status_code=status, headers=headers)

def _page(items:list, after:str|None, limit:int)->dict:
    "Cursor paging as OpenAI does it: items after the one with id `after`, `limit` of them, `has_more`."
    start = 0
    if after:
        ids = [i["id"] for i in items]
        start = ids.index(after)+1 if after in ids else len(items)
    chunk = items[start:start+limit]
    return {"object": "list", "data": chunk, "has_more": start+limit < len(items),
            "first_id": chunk[0]["id"] if chunk else None, "last_id": chunk[-1]["id"] if chunk else None}

def _dump(m)->dict: return m.model_dump(mode="json", exclude_unset=False)

def _loss_curve(n:int, seed:int)->list[dict]:
    "A plausible, deterministic falling loss curve with validation every 2 steps."
    rows = []
    for s in range(1, n+1):
        tl = 2.0*math.exp(-s/(n/3)) + 0.1 + 0.05*math.sin(s*1.7+seed)
        ta = min(0.99, 0.5 + 0.45*(1-math.exp(-s/(n/3))))
        row = dict(step=s, train_loss=round(tl,4), train_accuracy=round(ta,4), valid_loss=None, valid_mean_token_accuracy=None)
        if s % 2 == 0 or s == n: row.update(valid_loss=round(tl*1.1,4), valid_mean_token_accuracy=round(ta*0.97,4))
        rows.append(row)
    return rows


class FakeOpenAI:
    "The fake: a FastAPI `app`, its state, scripting knobs and request counters. Use as a context manager to serve it."
    def __init__(self,
        latency:float|dict=0.0,          # seconds added to every request (asyncio.sleep), or {path_prefix: seconds}
        advance:str="poll",              # "poll": a job moves one stage per retrieve; "clock": one per `stage_seconds`
        stage_seconds:float=0.05,        # stage length for advance="clock"
        n_steps:int=10,                  # training steps per job (metric events, result CSV rows)
        file_processing_polls:int=1,     # retrieves before an uploaded file turns "processed" (0 = at once)
        result_base64:bool=True,         # result file content base64-encoded, like OpenAI's
        chat_reply:Callable|None=None,   # fn(request_dict) -> str | dict (ChatCompletion fields) | list[str] (choices)
        validate_training_files:bool=True, # fail jobs whose training file is not chat JSONL (like OpenAI does)
    ):
        self.latency,self.advance,self.stage_seconds,self.n_steps = latency,advance,stage_seconds,n_steps
        self.file_processing_polls,self.result_base64,self.validate_training_files = file_processing_polls,result_base64,validate_training_files
        self.chat_reply = chat_reply
        self.app = self._build_app()
        self.server = self.thread = None
        self.base_url = None
        self.reset()

    # ----- state & scripting -------------------------------------------------------------------
    def reset(self):
        "Forget all files, jobs, rules and counters (keeps latency, chat_reply and other settings)."
        self.files:dict[str,dict] = {}       # id -> {"obj": dict, "content": bytes, "polls": int}
        self.jobs:dict[str,dict] = {}        # id -> {"obj": dict, "polls": int, "t0": float, "error": tuple|None}
        self.events:dict[str,list] = {}      # job id -> event dicts, oldest first
        self.checkpoints:dict[str,list] = {}
        self.rules:list[FailRule] = []
        self.next_job_error:tuple[str,str]|None = None   # (code, message) for the next created job
        self.job_errors:list[tuple[str,str]] = []         # queue of errors for the next jobs
        self.counts = collections.Counter()  # (METHOD, route path template) -> n ; also ("chat",) etc.
        self.requests:list[tuple[str,str]] = []  # (METHOD, actual path), in arrival order
        self.chat_requests:list[dict] = []
        self.in_flight = self.max_in_flight = 0  # concurrent chat.completions requests now / at most (latency included)
        self._clock = 0
        return self

    def fail(self, path:str, status:int=500, times:int|None=None, method:str|None=None, message:str="scripted failure",
             retry_after_ms:float|None=1.0)->FailRule:
        "Answer requests to `path...` with HTTP `status`, `times` times (None = forever). Returns the rule."
        r = FailRule(path, status, times, method, message, retry_after_ms); self.rules.append(r); return r

    def count(self, method:str, path:str)->int:
        "Requests seen for `method` on `path` (exact path, e.g. '/v1/files' or '/v1/fine_tuning/jobs/ftjob-1')."
        return sum(1 for m,p in self.requests if m==method.upper() and p==path)

    def count_prefix(self, method:str, prefix:str)->int:
        "Requests seen for `method` on paths starting with `prefix`."
        return sum(1 for m,p in self.requests if m==method.upper() and p.startswith(prefix))

    def _now(self)->int:
        return int(time.time())   # lists keep insertion order, so equal timestamps are fine

    # ----- jobs --------------------------------------------------------------------------------
    def _event(self, job_id:str, message:str, level="info", type_="message", data=None):
        ev = FineTuningJobEvent(id=f"ftevent-{uuid.uuid4().hex[:20]}", created_at=self._now(), level=level,
                                message=message, object="fine_tuning.job.event", type=type_, data=data)
        self.events[job_id].append(_dump(ev))

    def _set_status(self, job:dict, status:str):
        o = job["obj"]; jid = o["id"]
        if o["status"] == status: return
        o["status"] = status
        if status == "queued": self._event(jid, "Files validated, moving job to queued state")
        elif status == "running":
            self._event(jid, "Fine-tuning job started")
        elif status == "succeeded": self._succeed(job)
        elif status == "failed":
            code,msg = job["error"]
            o["error"] = {"code": code, "message": msg, "param": "training_file" if "file" in code else None}
            o["finished_at"] = self._now()
            self._event(jid, msg, level="error")

    def _succeed(self, job:dict):
        o = job["obj"]; jid = o["id"]; n = self.n_steps
        rows = _loss_curve(n, len(self.jobs))
        for r in rows:
            self._event(jid, f"Step {r['step']}/{n}: training loss={r['train_loss']:.2f}", type_="metrics",
                        data={"step": r["step"], "total_steps": n, "train_loss": r["train_loss"],
                              "train_mean_token_accuracy": r["train_accuracy"]})
        cols = ["step","train_loss","train_accuracy","valid_loss","valid_mean_token_accuracy"]
        csv = ",".join(cols) + "\n" + "".join(",".join("" if r[c] is None else str(r[c]) for c in cols)+"\n" for r in rows)
        data = base64.b64encode(csv.encode()) if self.result_base64 else csv.encode()
        rf = self._add_file("step_metrics.csv", data, "fine-tune-results", processed=True)
        suffix = o.pop("_suffix", None)
        name = f"ft:{o['model']}:personal{':'+suffix if suffix else ''}:{jid[-8:]}"
        epochs = 3
        for e in range(1, epochs+1):
            step = n*e//epochs; r = rows[step-1]
            ck = FineTuningJobCheckpoint(id=f"ftckpt_{uuid.uuid4().hex[:20]}", created_at=self._now(),
                fine_tuned_model_checkpoint=f"{name}:ckpt-step-{step}" if e<epochs else name,
                fine_tuning_job_id=jid, object="fine_tuning.job.checkpoint", step_number=step,
                metrics={"step": step, "train_loss": r["train_loss"], "train_mean_token_accuracy": r["train_accuracy"],
                         "valid_loss": rows[-1]["valid_loss"], "valid_mean_token_accuracy": rows[-1]["valid_mean_token_accuracy"],
                         "full_valid_loss": rows[-1]["valid_loss"], "full_valid_mean_token_accuracy": rows[-1]["valid_mean_token_accuracy"]})
            self.checkpoints[jid].append(_dump(ck))
        self._event(jid, f"New fine-tuned model created: {name}")
        self._event(jid, "The job has successfully completed")
        ne = o["hyperparameters"].get("n_epochs")
        o.update(fine_tuned_model=name, finished_at=self._now(), result_files=[rf["id"]],
                 trained_tokens=job["tokens"] * (ne if isinstance(ne, int) else 3))

    def _advance(self, job:dict):
        "Move a job forward per the `advance` mode."
        o = job["obj"]
        if o["status"] in TERMINAL: return
        if self.advance == "clock": target = int((time.monotonic()-job["t0"]) / self.stage_seconds)
        else: job["polls"] += 1; target = job["polls"]
        while o["status"] not in TERMINAL and STAGES.index(o["status"]) < min(target, len(STAGES)-1):
            nxt = STAGES[STAGES.index(o["status"])+1]
            if nxt == "succeeded" and job["error"]: nxt = "failed"
            self._set_status(job, nxt)

    def _add_file(self, filename:str, content:bytes, purpose:str, processed:bool=False)->dict:
        f = FileObject(id=f"file-{uuid.uuid4().hex[:24]}", bytes=len(content), created_at=self._now(),
                       filename=filename, object="file", purpose=purpose,
                       status="processed" if processed or self.file_processing_polls==0 else "uploaded")
        d = _dump(f); self.files[d["id"]] = {"obj": d, "content": content, "polls": 0}
        return d

    @staticmethod
    def _check_dpo_jsonl(content:bytes)->tuple[int,str|None]:
        "Like `_check_chat_jsonl`, for a DPO job's preference file (input.messages, preferred_output, non_preferred_output)."
        tokens = 0
        for i,line in enumerate(content.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip(): continue
            try: rec = json.loads(line)
            except ValueError: return tokens, f"Invalid file format. Line {i} is not valid JSON."
            if not isinstance(rec, dict) or not isinstance((rec.get("input") or {}).get("messages"), list):
                return tokens, f"Invalid file format. Line {i}, key \"input\": missing or has no messages."
            for k in ("preferred_output", "non_preferred_output"):
                out = rec.get(k)
                if not isinstance(out, list) or not out or not all(isinstance(m, dict) and m.get("role")=="assistant" for m in out):
                    return tokens, f"Invalid file format. Line {i}, key \"{k}\": must be a list of assistant messages."
            tokens += sum(len(str(m.get("content","")).split()) for k in ("preferred_output","non_preferred_output") for m in rec[k])
            tokens += sum(len(str(m.get("content","")).split()) for m in rec["input"]["messages"] if isinstance(m, dict))
        return tokens, None

    @staticmethod
    def _check_chat_jsonl(content:bytes)->tuple[int,str|None]:
        "Count tokens roughly and find the first problem in a chat JSONL file, like OpenAI's validation step."
        tokens = 0
        for i,line in enumerate(content.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip(): continue
            try: rec = json.loads(line)
            except ValueError: return tokens, f"Invalid file format. Line {i} is not valid JSON."
            msgs = rec.get("messages") if isinstance(rec, dict) else None
            if not isinstance(msgs, list) or not msgs: return tokens, f"Invalid file format. Line {i}, key \"messages\": missing or empty."
            if not any(isinstance(m, dict) and m.get("role")=="assistant" for m in msgs):
                return tokens, f"Invalid file format. Line {i}: no assistant message."
            tokens += sum(len(str(m.get("content","")).split()) for m in msgs if isinstance(m, dict))
        return tokens, None

    # ----- the app -----------------------------------------------------------------------------
    def _build_app(self)->FastAPI:
        app, fake = FastAPI(title="fake OpenAI"), self

        class Script:
            "Pure ASGI middleware (cheaper than @app.middleware): count, delay, and answer scripted failures."
            def __init__(self, app): self.app = app
            async def __call__(self, scope, receive, send):
                if scope["type"] != "http": return await self.app(scope, receive, send)
                method, path = scope["method"], scope["path"]
                fake.requests.append((method, path))
                chat = path == "/v1/chat/completions"
                if chat: fake.in_flight += 1; fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    lat = fake.latency
                    if isinstance(lat, dict): lat = next((v for k,v in lat.items() if path.startswith(k)), 0.0)
                    if lat: await asyncio.sleep(lat)
                    for r in fake.rules:
                        if r.matches(method, path):
                            if r.times is not None: r.times -= 1
                            hdr = {"retry-after-ms": str(r.retry_after_ms)} if r.retry_after_ms is not None else {}
                            typ = "rate_limit_exceeded" if r.status==429 else "server_error"
                            return await _err(r.status, r.message, type_=typ, code=typ, headers=hdr)(scope, receive, send)
                    await self.app(scope, receive, send)
                finally:
                    if chat: fake.in_flight -= 1
        app.add_middleware(Script)

        # --- files
        @app.post("/v1/files")
        async def create_file(file:UploadFile=File(...), purpose:str=Form(...)):
            content = await file.read()
            if purpose not in ("fine-tune","batch","assistants","vision","user_data"):
                return _err(400, f"Invalid purpose {purpose!r}", param="purpose")
            if purpose == "fine-tune" and not file.filename.endswith(".jsonl"):
                return _err(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
            return fake._add_file(file.filename, content, purpose)

        @app.get("/v1/files")
        async def list_files(after:str|None=None, limit:int=10000, order:str="desc", purpose:str|None=None):
            items = [f["obj"] for f in fake.files.values()][::-1 if order=="desc" else 1]
            if purpose: items = [o for o in items if o["purpose"]==purpose]
            return _page(items, after, limit)

        @app.get("/v1/files/{file_id}")
        async def retrieve_file(file_id:str):
            f = fake.files.get(file_id)
            if f is None: return _err(404, f"No such File object: {file_id}", param="id")
            f["polls"] += 1
            if f["obj"]["status"] == "uploaded" and f["polls"] >= fake.file_processing_polls: f["obj"]["status"] = "processed"
            return f["obj"]

        @app.get("/v1/files/{file_id}/content")
        async def file_content(file_id:str):
            f = fake.files.get(file_id)
            if f is None: return _err(404, f"No such File object: {file_id}", param="id")
            return Response(f["content"], media_type="application/octet-stream")

        @app.delete("/v1/files/{file_id}")
        async def delete_file(file_id:str):
            if fake.files.pop(file_id, None) is None: return _err(404, f"No such File object: {file_id}", param="id")
            return _dump(FileDeleted(id=file_id, object="file", deleted=True))

        # --- fine-tuning jobs
        @app.post("/v1/fine_tuning/jobs")
        async def create_job(request:Request):
            body = await request.json()
            tf = body.get("training_file")
            if not body.get("model"): return _err(400, "Missing required parameter: 'model'.", param="model")
            if tf not in fake.files: return _err(400, f"invalid training_file: {tf}", param="training_file", code="invalid_training_file")
            vf = body.get("validation_file")
            if vf is not None and vf not in fake.files: return _err(400, f"invalid validation_file: {vf}", param="validation_file")
            hp = dict(body.get("hyperparameters") or {})
            method = body.get("method") or {"type": "supervised"}
            kind = method.get("type")
            if kind not in ("supervised", "dpo"): return _err(400, f"Invalid method type {kind!r}", param="method")
            hp = {**(((method.get(kind) or {}).get("hyperparameters")) or {}), **hp}
            keys = ("batch_size","learning_rate_multiplier","n_epochs") + (("beta",) if kind=="dpo" else ())
            if set(hp) - set(keys): return _err(400, f"Unknown hyperparameter(s) {sorted(set(hp) - set(keys))}", param="method")
            mhp = {k: hp.get(k, "auto") for k in keys}
            hp = {k: mhp[k] for k in ("batch_size","learning_rate_multiplier","n_epochs")}
            jid = f"ftjob-{uuid.uuid4().hex[:24]}"
            obj = _dump(FineTuningJob(id=jid, created_at=fake._now(), error=None, fine_tuned_model=None, finished_at=None,
                hyperparameters=hp, model=body["model"], object="fine_tuning.job", organization_id="org-fake",
                result_files=[], seed=body.get("seed") if body.get("seed") is not None else 42, status="validating_files",
                trained_tokens=None, training_file=tf, validation_file=vf, metadata=body.get("metadata"),
                method={"type": kind, kind: {"hyperparameters": mhp}}))
            obj["_suffix"] = body.get("suffix")
            check = fake._check_dpo_jsonl if kind == "dpo" else fake._check_chat_jsonl
            tokens, problem = check(fake.files[tf]["content"]) if fake.validate_training_files else (100, None)
            error = fake.next_job_error or (fake.job_errors.pop(0) if fake.job_errors else None)
            fake.next_job_error = None
            if problem and not error: error = ("invalid_training_file", problem)
            fake.jobs[jid] = {"obj": obj, "polls": 0, "t0": time.monotonic(), "error": error, "tokens": tokens}
            fake.events[jid], fake.checkpoints[jid] = [], []
            fake._event(jid, f"Created fine-tuning job: {jid}")
            fake._event(jid, f"Validating training file: {tf}" + (f" and validation file: {vf}" if vf else ""))
            return fake._public(obj)

        @app.get("/v1/fine_tuning/jobs")
        async def list_jobs(after:str|None=None, limit:int=20):
            items = [fake._public(j["obj"]) for j in fake.jobs.values()][::-1]   # newest first
            return _page(items, after, limit)

        @app.get("/v1/fine_tuning/jobs/{job_id}")
        async def retrieve_job(job_id:str):
            j = fake.jobs.get(job_id)
            if j is None: return _err(404, f"Could not find fine tune job: {job_id}", param="id")
            fake._advance(j)
            return fake._public(j["obj"])

        @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
        async def cancel_job(job_id:str):
            j = fake.jobs.get(job_id)
            if j is None: return _err(404, f"Could not find fine tune job: {job_id}", param="id")
            if j["obj"]["status"] in TERMINAL:
                return _err(400, f"Job {job_id} has already completed with status {j['obj']['status']}.", param="id")
            j["obj"].update(status="cancelled", finished_at=fake._now())
            fake._event(job_id, "Fine-tuning job cancelled")
            return fake._public(j["obj"])

        @app.get("/v1/fine_tuning/jobs/{job_id}/events")
        async def list_events(job_id:str, after:str|None=None, limit:int=20):
            if job_id not in fake.jobs: return _err(404, f"Could not find fine tune job: {job_id}", param="id")
            return _page(list(reversed(fake.events[job_id])), after, limit)   # newest first

        @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
        async def list_checkpoints(job_id:str, after:str|None=None, limit:int=10):
            if job_id not in fake.jobs: return _err(404, f"Could not find fine tune job: {job_id}", param="id")
            return _page(list(reversed(fake.checkpoints[job_id])), after, limit)

        # --- models
        @app.get("/v1/models")
        async def list_models():
            names = ["gpt-4o-mini-2024-07-18", "gpt-4.1-nano-2025-04-14"] + [j["obj"]["fine_tuned_model"] for j in fake.jobs.values() if j["obj"]["fine_tuned_model"]]
            return {"object": "list", "data": [_dump(Model(id=n, created=0, object="model", owned_by="fake")) for n in names]}

        # --- chat completions
        @app.post("/v1/chat/completions")
        async def chat(request:Request):
            body = await request.json()
            fake.chat_requests.append(body)
            reply = fake.chat_reply or (lambda req: "ok")
            try:
                out = reply(body)
                if asyncio.iscoroutine(out): out = await out
            except FakeError as e:
                return _err(e.status, e.message, type_="server_error" if e.status>=500 else "invalid_request_error", code=e.code, headers=e.headers)
            comp = fake._completion(body, out)
            if body.get("stream"): return StreamingResponse(fake._stream(comp, body), media_type="text/event-stream")
            return comp

        return app

    @staticmethod
    def _public(obj:dict)->dict: return {k:v for k,v in obj.items() if not k.startswith("_")}

    def _completion(self, body:dict, out)->dict:
        "Turn a reply (str, list of str, or dict of ChatCompletion fields) into a ChatCompletion dict."
        if isinstance(out, dict) and "choices" in out: base = out
        else:
            texts = out if isinstance(out, list) else [out]
            base = {"choices": [{"index": i, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": t}} for i,t in enumerate(texts)]}
        pt = sum(len(str(m.get("content","")).split()) for m in body.get("messages", []))
        ct = sum(len(str(c["message"].get("content") or "").split()) for c in base["choices"])
        d = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
             "model": body.get("model","gpt-4o-mini"),
             "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt+ct}, **base}
        return _dump(ChatCompletion.model_validate(d))

    async def _stream(self, comp:dict, body:dict):
        for ch in comp["choices"]:
            for piece,fin in ((ch["message"]["content"], None), ("", ch["finish_reason"])):
                chunk = ChatCompletionChunk(id=comp["id"], created=comp["created"], model=comp["model"], object="chat.completion.chunk",
                    choices=[{"index": ch["index"], "delta": {"content": piece} if piece else {}, "finish_reason": fin}])
                yield f"data: {json.dumps(_dump(chunk))}\n\n"
        yield "data: [DONE]\n\n"

    # ----- serving -----------------------------------------------------------------------------
    def start(self, host:str="127.0.0.1", port:int=0)->"FakeOpenAI":
        "Serve the app with uvicorn in a daemon thread; sets `base_url` ('http://127.0.0.1:PORT/v1')."
        # Let uvicorn bind (port=0 picks a free port): handing it a pre-bound socket loses TCP_NODELAY
        # and costs ~40 ms per request (Nagle + delayed ACK).
        cfg = uvicorn.Config(self.app, host=host, port=port, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="fake-openai")
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic()-t0 > 20: raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.005)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://{host}:{self.port}/v1"
        return self

    def stop(self):
        "Stop the server thread."
        if self.server is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
            self.server = None

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()


_TEMPLATES = ["Could you help with this: {t}", "{t} Thanks in advance.", "Quick question. {t}", "Hi, {t}",
              "I need help. {t}", "{t} Please advise.", "Hello! {t}", "Question for support: {t}"]

def paraphrase_reply(req:dict)->str:
    "A chat reply for augmentation tests: a JSON array of n deterministic rewrites of the last user message."
    import re
    text = req["messages"][-1]["content"]
    sys_ = " ".join(m["content"] for m in req["messages"] if m["role"] == "system")
    m = re.search(r"(\d+) (?:different )?paraphrases", sys_)
    n = int(m.group(1)) if m else 3
    return json.dumps([_TEMPLATES[i % len(_TEMPLATES)].format(t=text) + (f" ({i // len(_TEMPLATES)})" if i >= len(_TEMPLATES) else "")
                       for i in range(n)])


def run_fake(**kwargs)->FakeOpenAI:
    "Start a `FakeOpenAI(**kwargs)` and return it (also usable as `with run_fake() as fake:`)."
    return FakeOpenAI(**kwargs).start()


if __name__ == "__main__":   # serve from another process: python tests/fake_openai.py --latency 0.05 --reply paraphrase
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0); ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--reply", choices=["ok", "paraphrase"], default="ok")
    a = ap.parse_args()
    fake = FakeOpenAI(latency=a.latency, chat_reply=paraphrase_reply if a.reply == "paraphrase" else None).start(port=a.port)
    print(fake.base_url, flush=True)
    try: fake.thread.join()
    except KeyboardInterrupt: fake.stop()
