"""A tiny local server that speaks the Hugging Face Hub's HTTP protocol, for tests only.

The real, unmodified huggingface_hub client talks to it through HF_ENDPOINT. It keeps repos in
memory and covers: whoami-v2, repos/create (409 when the repo exists), validate-yaml, preupload
(every file "regular"), commit (NDJSON with base64 contents), repo info, and resolve (GET/HEAD).
No LFS/Xet. Tokens: VALID_TOKENS maps token -> user; any other token gets 401.

    python tests/hub_server.py PORT      # run it by hand
"""
from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

VALID_TOKENS = {"hf_test_valid_token_abcdefghijklmnop": "tester", "hf_LEAKCHECK_7f3a9c2e5b1d8046": "tester"}
OTHER_USER_REPO = ("model", "someone-else/their-model")


def create_app() -> FastAPI:
    app = FastAPI()
    repos: dict[tuple[str, str], dict] = {OTHER_USER_REPO: {"files": {}, "sha": "0" * 40, "owner": "someone-else"}}
    lock = threading.Lock()

    def user_of(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        return VALID_TOKENS.get(header.removeprefix("Bearer ").strip())

    def denied():
        return JSONResponse({"error": "Invalid credentials in Authorization header"}, status_code=401)

    @app.get("/api/whoami-v2")
    def whoami(request: Request):
        user = user_of(request)
        return {"type": "user", "name": user, "orgs": [], "auth": {"type": "access_token"}} if user else denied()

    @app.post("/api/repos/create")
    async def create(request: Request):
        user = user_of(request)
        if not user:
            return denied()
        body = await request.json()
        namespace = body.get("organization") or user
        key = (body.get("type") or "model", f"{namespace}/{body['name']}")
        if namespace != user:
            return JSONResponse({"error": "You don't have the rights to create a repo under this namespace"},
                                status_code=403)
        with lock:
            if key in repos:
                return JSONResponse({"error": "You already created this repo", "url": _url(request, key)},
                                    status_code=409)
            repos[key] = {"files": {}, "sha": hashlib.sha1(key[1].encode()).hexdigest(), "owner": user,
                          "sdk": body.get("sdk"), "private": body.get("private", False)}
        return {"url": _url(request, key), "name": key[1]}

    @app.post("/api/validate-yaml")
    def validate_yaml():
        return {"errors": [], "warnings": []}

    @app.post("/api/{kind}s/{namespace}/{name}/preupload/{revision}")
    async def preupload(kind: str, namespace: str, name: str, revision: str, request: Request):
        files = (await request.json())["files"]
        return {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    @app.post("/api/{kind}s/{namespace}/{name}/commit/{revision}")
    async def commit(kind: str, namespace: str, name: str, revision: str, request: Request):
        user, key = user_of(request), (kind, f"{namespace}/{name}")
        if not user:
            return denied()
        if key not in repos:
            return JSONResponse({"error": "Repository not found"}, status_code=404)
        if repos[key]["owner"] != user:
            return JSONResponse({"error": "You don't have the rights to write to this repo"}, status_code=403)
        lines = [json.loads(line) for line in (await request.body()).decode().splitlines() if line.strip()]
        with lock:
            for line in lines:
                if line["key"] == "file":
                    repos[key]["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] == "deletedFile":
                    repos[key]["files"].pop(line["value"]["path"], None)
            sha = hashlib.sha1(json.dumps(sorted(repos[key]["files"])).encode() + repos[key]["sha"].encode())
            repos[key]["sha"] = sha.hexdigest()
        return {"commitUrl": f"{_url(request, key)}/commit/{repos[key]['sha']}", "commitOid": repos[key]["sha"]}

    @app.get("/api/{kind}s/{namespace}/{name}")
    @app.get("/api/{kind}s/{namespace}/{name}/revision/{revision}")
    def info(kind: str, namespace: str, name: str, request: Request, revision: str = "main"):
        repo = repos.get((kind, f"{namespace}/{name}"))
        if repo is None:
            return JSONResponse({"error": "Repository not found"}, status_code=404,
                                headers={"X-Error-Code": "RepoNotFound"})
        return {"id": f"{namespace}/{name}", "sha": repo["sha"], "private": repo.get("private", False),
                "siblings": [{"rfilename": path} for path in sorted(repo["files"])], "sdk": repo.get("sdk")}

    @app.api_route("/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve_model(namespace: str, name: str, revision: str, path: str, request: Request):
        return _resolve(repos, ("model", f"{namespace}/{name}"), path, request)

    @app.api_route("/spaces/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve_space(namespace: str, name: str, revision: str, path: str, request: Request):
        return _resolve(repos, ("space", f"{namespace}/{name}"), path, request)

    app.state.repos = repos
    return app


def _url(request: Request, key) -> str:
    prefix = "" if key[0] == "model" else f"{key[0]}s/"
    return f"{str(request.base_url).rstrip('/')}/{prefix}{key[1]}"


def _resolve(repos, key, path, request):
    repo = repos.get(key)
    if repo is None:
        return Response(status_code=404, headers={"X-Error-Code": "RepoNotFound"})
    if path not in repo["files"]:
        return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound"})
    data = repo["files"][path]
    headers = {"X-Repo-Commit": repo["sha"], "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
               "Content-Length": str(len(data))}
    return Response(b"" if request.method == "HEAD" else data, headers=headers,
                    media_type="application/octet-stream")


def serve_in_thread(port: int):
    """Start the server on 127.0.0.1:port in a daemon thread; return the uvicorn Server."""
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]))
