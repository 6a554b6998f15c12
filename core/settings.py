"""Every setting the environment gives the app, read in this one place into a typed `Settings`.

    python -c "from core.settings import settings; print(settings())"

| variable | what it sets | default |
|---|---|---|
| FINETUNE_LAB_HOME | the data directory | /data/finetune-lab on a Space with storage, else ~/.finetune-lab |
| FINETUNE_LAB_MODELS | where converted models are cached | <data dir>/models |
| FINETUNE_LAB_PUBLIC=1 | public mode (also on a Space, with --share, or a non-loopback host without --auth) | off |
| FINETUNE_LAB_ADMIN_KEY | the key that unlocks a public app's guarded actions | none |
| FINETUNE_LAB_API_KEY | the bearer key the OpenAI-compatible endpoint (/v1) asks for | none: open as the app is |
| FINETUNE_LAB_AUTH | USER:PASSWORD login for the whole app | none |
| FINETUNE_LAB_ALLOWED_MODELS | Hub ids or folders (comma list) visitors may chat with | none |
| FINETUNE_LAB_VISITOR_HUB=1 | visitors may load any Hub model under the size cap | off |
| FINETUNE_LAB_VISITOR_VOTES | visitors' votes kept for review | 5000 |
| FINETUNE_LAB_BEHIND_PROXY=1 | trust the last X-Forwarded-For entry (on by itself on a Space) | off |
| FINETUNE_LAB_EVENTS_PER_SESSION / _PER_ADDRESS | queued events a session / an address may hold | 8 / 16 |
| FINETUNE_LAB_DTYPE | chat weights: auto (bf16 beside int8 weights on a CPU; fp32 for eager decoding without native bf16), fp32, bf16 | auto |
| FINETUNE_LAB_DECODE | chat decoding: auto (int8 weights on a CPU, and the compiled step where the app serves), int8, eager, compiled | auto |
| FINETUNE_LAB_CPU_KERNELS | chat's kernels on a CPU: auto (ours where they serve), torch's, or own (activations as two int8 bytes with VNNI, attention over the slots in use; built here) | auto |
| FINETUNE_LAB_MAX_MODELS | models kept in memory | 2 |
| FINETUNE_LAB_GGUF_RUNTIME | what reads an exported GGUF in the parity check: auto, llama.cpp, transformers | auto (llama.cpp where installed) |
| FINETUNE_LAB_THREADS | chat's CPU threads when no job runs | all cores |

A Space sets SPACE_ID, SPACE_AUTHOR_NAME and SYSTEM=spaces (and OAUTH_CLIENT_ID with OAuth on). The values are parsed once per
distinct environment (so a test's monkeypatched variable takes effect); a bad number is a
one-line LabError naming the variable. Nothing writes os.environ to pass a setting: the app
declares public mode with `declare_public()`, and that it serves chat with `declare_serving()`.
Secrets (the admin key, the login) never show in the object's repr.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from core.errors import LabError

NAMES = ("FINETUNE_LAB_HOME", "FINETUNE_LAB_MODELS", "FINETUNE_LAB_PUBLIC", "FINETUNE_LAB_ADMIN_KEY", "FINETUNE_LAB_API_KEY",
         "FINETUNE_LAB_AUTH", "FINETUNE_LAB_ALLOWED_MODELS", "FINETUNE_LAB_VISITOR_HUB",
         "FINETUNE_LAB_VISITOR_VOTES", "FINETUNE_LAB_BEHIND_PROXY", "FINETUNE_LAB_EVENTS_PER_SESSION",
         "FINETUNE_LAB_EVENTS_PER_ADDRESS", "FINETUNE_LAB_DTYPE", "FINETUNE_LAB_DECODE", "FINETUNE_LAB_CPU_KERNELS",
         "FINETUNE_LAB_MAX_MODELS", "FINETUNE_LAB_THREADS", "FINETUNE_LAB_GGUF_RUNTIME", "SPACE_ID", "SPACE_AUTHOR_NAME", "SYSTEM",
         "OAUTH_CLIENT_ID")
# Set by app.main (public: --share or an open host; serving: a process that answers chat for a
# while, as cli.py serve is too): no environment write.
_DECLARED = {"public": False, "serving": False}


@dataclass(frozen=True)
class Settings:
    home: Path | None = None
    models: Path | None = None
    public: bool = False
    admin_key: str = field(default="", repr=False)
    api_key: str = field(default="", repr=False)
    auth: str = field(default="", repr=False)
    allowed_models: tuple[str, ...] = ()
    visitor_hub: bool = False
    visitor_votes: int = 5000
    behind_proxy: bool = False
    events_per_session: int = 8
    events_per_address: int = 16
    dtype: str = "auto"
    decode: str = "auto"
    cpu_kernels: str = "auto"
    max_models: int = 2
    threads: int = 0
    gguf_runtime: str = "auto"
    space_id: str = ""
    space_author: str = ""
    on_spaces: bool = False
    oauth: bool = False  # a real Space with "hf_oauth: true": SYSTEM, SPACE_ID and OAUTH_CLIENT_ID set
    serving: bool = False  # this process serves chat for a while: the app, or cli.py serve


def settings() -> Settings:
    """The settings the environment gives now (parsed once per distinct environment)."""
    return _parse(tuple(os.environ.get(name) for name in NAMES), _DECLARED["public"], _DECLARED["serving"])


def declare_public(public: bool) -> None:
    """Whether the app is reachable by others with no login in front (--share, or an open host)."""
    _DECLARED["public"] = public


def declare_serving() -> None:
    """This process serves chat for a while (the app, the OpenAI server): what it may prepare
    once at a model's load (the compiled decode step) pays back over many replies."""
    _DECLARED["serving"] = True


@lru_cache(maxsize=8)
def _parse(values: tuple, declared_public: bool, declared_serving: bool) -> Settings:
    env = {name: value for name, value in zip(NAMES, values) if value is not None}
    on_spaces = env.get("SYSTEM") == "spaces"
    return Settings(
        home=Path(env["FINETUNE_LAB_HOME"]) if env.get("FINETUNE_LAB_HOME") else None,
        models=Path(env["FINETUNE_LAB_MODELS"]) if env.get("FINETUNE_LAB_MODELS") else None,
        public=declared_public or bool(env.get("SPACE_ID")) or env.get("FINETUNE_LAB_PUBLIC") == "1",
        admin_key=env.get("FINETUNE_LAB_ADMIN_KEY", ""), api_key=env.get("FINETUNE_LAB_API_KEY", ""), auth=env.get("FINETUNE_LAB_AUTH", ""),
        allowed_models=tuple(m.strip() for m in env.get("FINETUNE_LAB_ALLOWED_MODELS", "").split(",") if m.strip()),
        visitor_hub=env.get("FINETUNE_LAB_VISITOR_HUB") == "1",
        visitor_votes=_number(env, "FINETUNE_LAB_VISITOR_VOTES", 5000),
        behind_proxy=on_spaces or env.get("FINETUNE_LAB_BEHIND_PROXY") == "1",
        events_per_session=_number(env, "FINETUNE_LAB_EVENTS_PER_SESSION", 8),
        events_per_address=_number(env, "FINETUNE_LAB_EVENTS_PER_ADDRESS", 16),
        dtype=env.get("FINETUNE_LAB_DTYPE", "auto"), decode=env.get("FINETUNE_LAB_DECODE", "auto"),
        cpu_kernels=_choice(env, "FINETUNE_LAB_CPU_KERNELS", ("auto", "torch", "own")),
        max_models=max(1, _number(env, "FINETUNE_LAB_MAX_MODELS", 2)),
        threads=_number(env, "FINETUNE_LAB_THREADS", 0),
        gguf_runtime=_choice(env, "FINETUNE_LAB_GGUF_RUNTIME", ("auto", "llama.cpp", "transformers")),
        space_id=env.get("SPACE_ID", ""), space_author=env.get("SPACE_AUTHOR_NAME", ""), on_spaces=on_spaces,
        oauth=on_spaces and bool(env.get("SPACE_ID")) and bool(env.get("OAUTH_CLIENT_ID")), serving=declared_serving)


def _number(env: dict, name: str, default: int) -> int:
    try:
        return int(env.get(name) or default)
    except ValueError:
        raise LabError(f"{name}={env[name][:20]!r} is not a whole number.") from None


def _choice(env: dict, name: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name) or allowed[0]
    if value not in allowed:
        raise LabError(f"{name}={value[:20]!r} is not one of: {', '.join(allowed)}.")
    return value
