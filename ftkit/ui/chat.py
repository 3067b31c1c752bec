"""The Chat page's model: one run's adapter and its base, loaded on first use, answering through the
same code as `ftkit serve` (`serving.targets`, `serving.runtime`, and the server's request model,
sampling limits and server-sent events), so a reply in the browser is the reply the API gives.

One deployment is held at a time (a second run's chat replaces the first): a base model and its
adapter take memory, and the UI is one person's tool.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ftkit.serving import runtime, server
from ftkit.serving.targets import resolve_targets


class Chats:
    def __init__(self, limits: server.Limits | None = None) -> None:
        self.limits = limits or server.Limits(max_new_tokens=256)
        self._loading = threading.Lock()
        self._held: tuple[Path, runtime.Deployment] | None = None

    def deployment(self, run: Path) -> runtime.Deployment:
        """The run's deployment, loading it (and dropping another run's) when needed; raises FtkitError."""
        with self._loading:
            if self._held is None or self._held[0] != run:
                self._held = None
                targets, base = resolve_targets([run])
                self._held = (run, runtime.load(targets, base))
            return self._held[1]

    def names(self, run: Path) -> list[str]:
        """The systems the page offers, without loading anything: the base and the run's adapter."""
        targets, _ = resolve_targets([run])
        return ["base", *(t.name for t in targets)]

    def reply(self, deployment: runtime.Deployment, request: server.ChatRequest) -> Any:
        """The streamed reply of the system `request.model` names, as `ftkit serve` streams it."""
        from fastapi.responses import StreamingResponse

        if request.model not in deployment.adapters:
            raise server.ApiError(404, f"no system {request.model!r} here; choose one of {deployment.names}")
        prompt = server.render(deployment, request)
        sampling = server.sampling_for(request, len(prompt), deployment.context, self.limits)
        stream = deployment.reply(request.model, prompt, sampling)  # batched with any other reply in flight
        events = server.sse(request.model, stream, server.Completion(request.model), True)
        return StreamingResponse(events, media_type="text/event-stream")
