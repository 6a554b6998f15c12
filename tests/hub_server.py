"""A tiny local server that speaks the Hugging Face Hub's HTTP protocol, for tests only.

The real, unmodified huggingface_hub client talks to it through HF_ENDPOINT. It keeps repos in
memory and covers: whoami-v2, repos/create (409 when the repo exists), validate-yaml, preupload
(every file "regular"), commit (NDJSON with base64 contents), repo info, resolve (GET/HEAD), and
a Space's secrets (kept in `repos[key]["secrets"]`, apart from its files).
No LFS/Xet. Tokens: VALID_TOKENS maps token -> user; any other token gets 401.

For the Hub as a source (tests/test_hub_source.py) it also answers what `list_models`,
`list_datasets` and `datasets.load_dataset` ask for: the two listings (filters, parameter
range, sort, limit, expand), a repo's file tree and paths-info, and ranged GETs on resolve.
`app.state.sent` counts the bytes each resolve response carried, per repo path, so a test can
check that streaming read only part of a file; `app.state.repos` holds every repo as received.
`seed(app, kind, repo_id, files, **info)` adds a repo with its listing metadata.

    python tests/hub_server.py PORT      # run it by hand
"""
from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

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
                          "sdk": body.get("sdk"),
                          "private": body.get("private", False) or body.get("visibility") == "private"}
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

    @app.post("/api/spaces/{namespace}/{name}/secrets")
    async def add_secret(namespace: str, name: str, request: Request):
        user, key = user_of(request), ("space", f"{namespace}/{name}")
        if not user or key not in repos or repos[key]["owner"] != user:
            return denied() if not user else JSONResponse({"error": "Repository not found"}, status_code=404)
        body = await request.json()
        with lock:  # kept apart from the files, as the Hub keeps a secret out of the repo
            repos[key].setdefault("secrets", {})[body["key"]] = body["value"]
        return {}

    @app.get("/api/{kind}s/{namespace}/{name}")
    @app.get("/api/{kind}s/{namespace}/{name}/revision/{revision}")
    def info(kind: str, namespace: str, name: str, request: Request, revision: str = "main"):
        repo = repos.get((kind, f"{namespace}/{name}"))
        if repo is None:
            return JSONResponse({"error": "Repository not found"}, status_code=404,
                                headers={"X-Error-Code": "RepoNotFound"})
        answer = {"id": f"{namespace}/{name}", "sha": repo["sha"], "private": repo.get("private", False),
                  "siblings": [{"rfilename": path} for path in sorted(repo["files"])], "sdk": repo.get("sdk")}
        if repo.get("info", {}).get("params"):
            answer["safetensors"] = {"parameters": {"BF16": repo["info"]["params"]}, "total": repo["info"]["params"]}
        return answer

    @app.api_route("/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve_model(namespace: str, name: str, revision: str, path: str, request: Request):
        return _resolve(repos, ("model", f"{namespace}/{name}"), path, request)

    @app.api_route("/spaces/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve_space(namespace: str, name: str, revision: str, path: str, request: Request):
        return _resolve(repos, ("space", f"{namespace}/{name}"), path, request)

    @app.get("/api/models")
    @app.get("/api/datasets")
    def listing(request: Request):
        kind = request.url.path.rsplit("/", 1)[1][:-1]
        return [_listed(key[1], repo, request) for key, repo in _matching(repos, kind, request)]

    @app.get("/api/{kind}s/{namespace}/{name}/tree/{revision}")
    @app.get("/api/{kind}s/{namespace}/{name}/tree/{revision}/{path:path}")
    def tree(kind: str, namespace: str, name: str, revision: str, request: Request, path: str = ""):
        repo = repos.get((kind, f"{namespace}/{name}"))
        if repo is None:
            return JSONResponse({"error": "Repository not found"}, status_code=404,
                                headers={"X-Error-Code": "RepoNotFound"})
        recursive = request.query_params.get("recursive") in ("true", "True", "1")
        return _tree_entries(repo["files"], path.strip("/"), recursive)

    @app.post("/api/{kind}s/{namespace}/{name}/paths-info/{revision}")
    async def paths_info(kind: str, namespace: str, name: str, revision: str, request: Request):
        repo = repos.get((kind, f"{namespace}/{name}"))
        form = await request.form()
        wanted = form.getlist("paths") if form else (await request.json()).get("paths", [])
        everything = _tree_entries(repo["files"], "", True) if repo else []
        return [entry for entry in everything if entry["path"] in wanted]

    @app.api_route("/datasets/{namespace}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    def resolve_dataset(namespace: str, name: str, revision: str, path: str, request: Request):
        return _resolve(repos, ("dataset", f"{namespace}/{name}"), path, request)

    app.state.repos = repos
    app.state.sent = {}
    return app


def seed(app, kind: str, repo_id: str, files: dict, **info) -> None:
    """Add a public repo owned by its namespace, with listing metadata (downloads, likes, tags,
    pipeline_tag, library_name, lastModified, gated, params for models)."""
    app.state.repos[(kind, repo_id)] = {"files": dict(files), "owner": repo_id.split("/")[0],
                                       "sha": hashlib.sha1(repo_id.encode()).hexdigest(), "info": info}


def _matching(repos, kind: str, request: Request):
    """The repos of `kind` that pass the listing's filters, sorted and limited."""
    query = request.query_params
    tags, search = query.getlist("filter"), query.get("search", "").lower()
    low, high = _parameter_range(query.get("num_parameters", ""))
    found = []
    for key, repo in repos.items():
        info = repo.get("info")
        if key[0] != kind or info is None or search not in key[1].lower():
            continue
        if not all(tag in info.get("tags", []) or tag == info.get("library_name") for tag in tags):
            continue
        if query.get("pipeline_tag") and info.get("pipeline_tag") != query["pipeline_tag"]:
            continue
        if (low or high) and not (info.get("params") and low <= info["params"] <= (high or float("inf"))):
            continue
        found.append((key, repo))
    order = query.get("sort")
    if order:
        found.sort(key=lambda item: item[1]["info"].get(order) or 0, reverse=True)
    return found[: int(query.get("limit", 1000))]


def _parameter_range(text: str) -> tuple[float, float]:
    """The Hub's "min:6B,max:128B" syntax as numbers; 0 where a side is not given."""
    scale = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
    bounds = {"min": 0.0, "max": 0.0}
    for part in filter(None, text.split(",")):
        side, _, value = part.partition(":")
        bounds[side] = float(value[:-1]) * scale[value[-1].upper()] if value[-1].isalpha() else float(value)
    return bounds["min"], bounds["max"]


def _listed(repo_id: str, repo: dict, request: Request) -> dict:
    """One listing item with the expanded properties the client asked for."""
    info = repo["info"]
    item = {"_id": repo["sha"][:24], "id": repo_id, "sha": repo["sha"], "private": False,
            "downloads": info.get("downloads", 0), "likes": info.get("likes", 0), "tags": info.get("tags", []),
            "lastModified": info.get("lastModified", "2026-01-01T00:00:00.000Z"), "gated": info.get("gated", False),
            "pipeline_tag": info.get("pipeline_tag"), "library_name": info.get("library_name")}
    if info.get("params"):
        item["safetensors"] = {"parameters": {"BF16": info["params"]}, "total": info["params"]}
    expand = request.query_params.getlist("expand")
    return {k: v for k, v in item.items() if not expand or k in expand or k in ("_id", "id")}


def _tree_entries(files: dict, folder: str, recursive: bool) -> list[dict]:
    """The files (and folders) under `folder`, as the Hub's tree endpoint lists them."""
    entries, folders = [], set()
    prefix = f"{folder}/" if folder else ""
    for path, data in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):]
        if "/" in rest and not recursive:
            folders.add(prefix + rest.split("/")[0])
            continue
        for depth in range(1, rest.count("/") + 1):
            folders.add(prefix + "/".join(rest.split("/")[:depth]))
        entries.append({"type": "file", "path": path, "size": len(data),
                        "oid": hashlib.sha1(data).hexdigest()})
    return [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)] + entries


def _url(request: Request, key) -> str:
    prefix = "" if key[0] == "model" else f"{key[0]}s/"
    return f"{str(request.base_url).rstrip('/')}/{prefix}{key[1]}"


def _resolve(repos, key, path, request):
    repo = repos.get(key)
    if repo is None:
        return Response(status_code=404, headers={"X-Error-Code": "RepoNotFound"})
    if path not in repo["files"]:
        return Response(status_code=404, headers={"X-Error-Code": "EntryNotFound"})
    data, status = repo["files"][path], 200
    headers = {"X-Repo-Commit": repo["sha"], "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
               "Accept-Ranges": "bytes"}
    ranged = request.headers.get("range", "").removeprefix("bytes=")
    if ranged and request.method == "GET":
        first, _, last = ranged.partition("-")
        start, end = int(first or 0), min(int(last) if last else len(data) - 1, len(data) - 1)
        headers["Content-Range"], status = f"bytes {start}-{end}/{len(data)}", 206
        data = data[start : end + 1]
    headers["Content-Length"] = str(len(data))
    if request.method == "HEAD":
        return Response(b"", headers=headers, media_type="application/octet-stream")
    return StreamingResponse(_counted_chunks(data, request.app.state.sent, f"{key[1]}/{path}"), status_code=status,
                             headers=headers, media_type="application/octet-stream")


def _counted_chunks(data: bytes, sent: dict, name: str, size: int = 64 * 1024):
    """The body in chunks, counted as each is handed to the server: a client that stops reading
    early (streaming) stops the count there, give or take the sockets' buffers."""
    for start in range(0, len(data), size):
        sent[name] = sent.get(name, 0) + len(data[start : start + size])
        yield data[start : start + size]


def serve_in_thread(port: int):
    """Start the server on 127.0.0.1:port in a daemon thread; return the uvicorn Server."""
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise RuntimeError(f"the local test Hub did not start on port {port} within 30 s")
        time.sleep(0.05)
    return server


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]))
