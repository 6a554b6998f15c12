"""Test helper: call any event listener of a served Gradio app by fn_index, as a script would.

    app = RawApp(url); app.call(app.fn_index(elem_id="train-start"), app.defaults(index), session)

It reads /config for the listeners and their input components, posts to
/gradio_api/queue/join and reads the session's event stream until the event completes.
The named API is no protection: every listener answers this way, whatever its api_name.
"""
from __future__ import annotations

import json
import uuid
from itertools import islice

import httpx


class RawApp:
    def __init__(self, url: str, auth: tuple[str, str] | None = None):
        self.url = url.rstrip("/") + "/"
        self.http = httpx.Client(timeout=300, follow_redirects=True)
        if auth:
            self.http.post(self.url + "login", data={"username": auth[0], "password": auth[1]}).raise_for_status()
        self.config = self.http.get(self.url + "config").raise_for_status().json()
        self.components = {c["id"]: c for c in self.config["components"]}
        self.dependencies = self.config["dependencies"]

    def fn_index(self, elem_id: str | None = None, api_name: str | None = None, event: str | None = None) -> int:
        """The listener on the component with `elem_id` (optionally for `event`), or by api_name."""
        for dep in self.dependencies:
            if api_name and dep.get("api_name") == api_name:
                return dep["id"]
            targets = [(self.components.get(t[0], {}).get("props", {}).get("elem_id"), t[1]) for t in dep["targets"]]
            if elem_id and any(e == elem_id and (event is None or ev == event) for e, ev in targets):
                return dep["id"]
        raise KeyError(elem_id or api_name)

    def input_ids(self, fn_index: int) -> list[int]:
        return next(d["inputs"] for d in self.dependencies if d["id"] == fn_index)

    def defaults(self, fn_index: int, **by_label) -> list:
        """The page's default value for each input, overridden by label (or elem_id without 'cfg-')."""
        values = []
        for cid in self.input_ids(fn_index):
            props = self.components[cid].get("props", {})
            names = {props.get("label"), (props.get("elem_id") or "").removeprefix("cfg-")}
            hit = [by_label[n] for n in names if n in by_label]
            values.append(hit[0] if hit else props.get("value"))
        return values

    def join(self, fn_index: int, data: list, session: str, event_data=None, headers: dict | None = None):
        """Queue one event; returns the HTTP response of /gradio_api/queue/join."""
        body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": event_data,
                "trigger_id": None}
        return self.http.post(self.url + "gradio_api/queue/join", json=body, headers=headers)

    def completed(self, session: str, headers: dict | None = None):
        """(event id, result) for each event of `session` as it completes, from its event stream."""
        with self.http.stream("GET", self.url + "gradio_api/queue/data", params={"session_hash": session},
                              headers=headers) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    ok = bool(message.get("success")) and "error" not in output
                    yield message.get("event_id"), {"ok": ok, "data": output.get("data"),
                                                    "error": output.get("error"), "status": 200}

    def call(self, fn_index: int, data: list, session: str | None = None, event_data=None,
             headers: dict | None = None) -> dict:
        """Run one event; returns {"ok": bool, "data": outputs or None, "error": text or None}."""
        session = session or uuid.uuid4().hex[:11]
        joined = self.join(fn_index, data, session, event_data, headers)
        if joined.status_code != 200:
            return {"ok": False, "data": None, "error": joined.text, "status": joined.status_code}
        event_id = joined.json()["event_id"]
        return next((result for done, result in self.completed(session, headers) if done == event_id),
                    {"ok": False, "data": None, "error": "stream ended", "status": 200})

    def join_only(self, fn_index: int, data: list, session: str) -> int:
        """Queue an event without reading its result; returns the HTTP status of the join."""
        return self.join(fn_index, data, session).status_code

    def rest(self, data: list, api_name: str | None = None, fn_index: int | None = None) -> int:
        """POST an event to the REST route that skips the queue, by name or by fn_index; returns
        the HTTP status (404 when the route is closed)."""
        route = f"gradio_api/run/{api_name or 'predict'}"
        body = {"data": data, "session_hash": uuid.uuid4().hex[:11], **({"fn_index": fn_index} if fn_index is not None
                                                                           else {})}
        return self.http.post(self.url + route, json=body).status_code

    def call_many(self, fn_index: int, data: list, session: str, times: int) -> list[dict]:
        """Queue the same event `times` times at once from one session (a double click), then read
        every result from the session's one stream."""
        ids = [self.join(fn_index, data, session).json()["event_id"] for _ in range(times)]
        results = {}
        for event_id, result in self.completed(session):
            results[event_id] = result
            if set(ids) <= results.keys():
                break
        return [results[i] for i in ids]

    def wait_session(self, session: str, count: int) -> None:
        """Read `session`'s stream until `count` of its events have completed (drains join_only)."""
        for _ in islice(self.completed(session), count):
            pass
