"""The viewer's web app (Starlette): the page, its two static files and the JSON API (docs/viewer.md).

Only the page's own files are served, from a fixed list (no path from a request ever reaches the
file system); graphs are the files the user named on the command line or traces made here.
Every error is a JSON {"error": "one line"} with a 4xx status; the page shows it.
guard.py checks every request first (Host, Origin, JSON content type, the per-run token the page
carries, body size); here every body is checked for nesting, sizes and the schema of its fields.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from circuits.errors import CircuitsError
from circuits.viewer.feature_pages import FeatureSource
from circuits.viewer.graphs_held import GraphShelf, checked_qparams, node_details, pruned_view
from circuits.viewer.guard import MAX_BODY_BYTES, AllowedHosts, ApiError, Guard, new_token
from circuits.viewer.live import Jobs, LiveModel
from graphs import GraphError
from graphs.viewer_read import MAX_JSON_DEPTH, json_depth

STATIC = {"index.html": "text/html; charset=utf-8", "viewer.js": "text/javascript; charset=utf-8",
          "viewer.css": "text/css; charset=utf-8"}
# The page may only talk to this server: no script, style, image or connection from elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
TOKEN_SLOT = "__CIRCUITS_TOKEN__"  # in index.html: <meta name="circuits-token" content="...">
MAX_FIELD_CHARS = 1_000  # a node id, a supernode name, clickedId, sg_pos, linkType
MAX_PROMPT_CHARS = 20_000
__all__ = ["MAX_BODY_BYTES", "MAX_FIELD_CHARS", "MAX_PROMPT_CHARS", "ViewerState", "create_app"]


@dataclass
class ViewerState:
    shelf: GraphShelf = field(default_factory=GraphShelf)
    features: FeatureSource = field(default_factory=FeatureSource)
    live: LiveModel | None = None
    jobs: Jobs = field(default_factory=Jobs)


def _static_file(name: str) -> bytes:
    return resources.files("circuits.viewer").joinpath("static", name).read_bytes()


def create_app(state: ViewerState, host: str = "127.0.0.1") -> Starlette:
    """The ASGI app serving `state` on a server bound to `host` (which Host names it answers to);
    its per-run token is `app.state.token`."""
    token = new_token()

    async def page(request: Request) -> Response:
        return _static(request, "index.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC or name == "index.html":
            raise ApiError(404, f"no such file: {name}")
        return _static(request, name)

    def _static(request: Request, name: str) -> Response:
        content = _static_file(name)
        if name == "index.html":
            content = content.replace(TOKEN_SLOT.encode(), token.encode())
        return Response(content, media_type=STATIC[name],
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    async def info(request: Request) -> Response:
        live = state.live
        return JSONResponse({
            "mode": "serve" if live else "view",
            "graphs": state.shelf.list(),
            "model": live.identity if live else None,
            "features": state.features.available,
        })

    async def graphs(request: Request) -> Response:
        return JSONResponse(state.shelf.list())

    async def graph(request: Request) -> Response:
        held = _held(request)
        nt = _float_param(request, "node_threshold", held.node_threshold)
        et = _float_param(request, "edge_threshold", held.edge_threshold)
        return JSONResponse(await run_in_threadpool(pruned_view, held, nt, et))

    async def node(request: Request) -> Response:
        held, node_id = _held(request), request.path_params["node_id"]
        try:
            return JSONResponse(await run_in_threadpool(node_details, held, node_id))
        except KeyError:
            raise ApiError(404, f"unknown node id {node_id!r} in graph {held.gid}") from None

    async def qparams(request: Request) -> Response:
        held = _held(request)
        body = await _json_body(request)
        held.qparams = {**held.qparams, **checked_qparams(held, body, MAX_FIELD_CHARS)}
        return JSONResponse(held.qparams)

    async def feature(request: Request) -> Response:
        layer, feat = _int_path(request, "layer"), _int_path(request, "feature")
        if not state.features.available:
            raise ApiError(404, "no feature data: start the viewer with --transcoders DIR (with a feature index)")
        return JSONResponse(await run_in_threadpool(state.features.page, layer, feat))

    async def trace(request: Request) -> Response:
        live, body, prompt = await _live_request(request, "type a prompt to trace")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise ApiError(400, "options must be an object")

        def work() -> dict[str, Any]:
            result = live.trace(prompt, options)
            held = state.shelf.add(prompt, result.graph, {}, "traced")
            return held.summary()

        job = state.jobs.start("trace", work)
        return JSONResponse(job.to_json(), status_code=202)

    async def job(request: Request) -> Response:
        try:
            return JSONResponse(state.jobs.get(request.path_params["job_id"]).to_json())
        except KeyError:
            raise ApiError(404, f"unknown job {request.path_params['job_id']!r}") from None

    async def intervene(request: Request) -> Response:
        live, body, prompt = await _live_request(request, "no prompt to intervene on")
        generate = body.get("generate", 0)
        if not isinstance(generate, int):
            raise ApiError(400, "generate must be a whole number of tokens")
        out = await run_in_threadpool(live.intervene, prompt, body.get("changes"), generate)
        return JSONResponse(out)

    def _held(request: Request):
        gid = request.path_params["gid"]
        try:
            return state.shelf.get(gid)
        except KeyError:
            raise ApiError(404, f"unknown graph {gid!r}") from None

    async def _live_request(request: Request, no_prompt: str) -> tuple[LiveModel, dict, str]:
        """(live model, JSON body, its prompt) of a request that needs `serve`."""
        if state.live is None:
            raise ApiError(409, "no model loaded: start with `circuits serve` to trace and intervene")
        body = await _json_body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ApiError(400, no_prompt)
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ApiError(400, f"the prompt has {len(prompt)} characters; at most {MAX_PROMPT_CHARS}")
        return state.live, body, prompt

    routes = [
        Route("/", page), Route("/static/{name}", static), Route("/api/info", info),
        Route("/api/graphs", graphs), Route("/api/graphs/{gid}", graph),
        Route("/api/graphs/{gid}/nodes/{node_id}", node),
        Route("/api/graphs/{gid}/qparams", qparams, methods=["PUT"]),
        Route("/api/features/{layer}/{feature}", feature),
        Route("/api/trace", trace, methods=["POST"]), Route("/api/jobs/{job_id}", job),
        Route("/api/intervene", intervene, methods=["POST"]),
    ]
    handlers = {ApiError: _api_error, CircuitsError: _user_error, GraphError: _user_error,
                404: _not_found, 405: _not_allowed, Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers,
                    middleware=[Middleware(Guard, allowed=AllowedHosts(host), token=token)])
    app.state.token = token
    return app


def _float_param(request: Request, name: str, default: float) -> float:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        return float(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a number, got {text!r}") from None


def _int_path(request: Request, name: str) -> int:
    text = request.path_params[name]
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, got {text!r}") from None


async def _json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object (the guard has limited its size): nesting deeper than any request
    needs is refused before anything reads it."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(400, f"the request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON (UTF-8)") from None
    if json_depth(body) > MAX_JSON_DEPTH:
        raise ApiError(400, f"the request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return _error(exc.status, str(exc))


async def _user_error(request: Request, exc: Exception) -> Response:
    return _error(400, str(exc))


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, f"not found: {request.url.path}")


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return _error(405, f"{request.method} is not allowed on {request.url.path}")


async def _internal_error(request: Request, exc: Exception) -> Response:
    traceback.print_exception(exc)
    return _error(500, f"internal error: {type(exc).__name__}: {exc}")
