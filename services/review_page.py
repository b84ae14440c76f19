"""The analysts' review page, served by the Ingress at `/review`: plain HTML, CSS and JavaScript
files (package data in services/review/, no build step) that call the REST API of the review queue
(`GET /v1/alerts`, `GET /v1/alerts/history?transaction_id=`, `POST /v1/alerts/disposition` with the
id in the body, so that every id works, one with `/` or equal to `.`/`..` too; scope `alerts:review`)
with the API key the analyst types in.

Security: the page itself needs no key (it holds no data; every datum comes from the API, which
checks the key and its scope). The key is kept in the tab's sessionStorage and sent only in the
`X-API-Key` header, never in a URL. The files are static (never templated with data), and the
script renders every field with textContent, so a hostile id, reason or note is shown as text. The
Content-Security-Policy allows only this origin's own script and style files (no inline script, no
eval, no other origin, no framing, no form posts), so even a rendering mistake could not run an
injected script.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

STATIC = Path(__file__).parent / "review"
# name under /review/ -> (file, media type); nothing else is served from the folder
FILES = {"": ("index.html", "text/html; charset=utf-8"),
         "app.js": ("app.js", "text/javascript; charset=utf-8"),
         "app.css": ("app.css", "text/css; charset=utf-8")}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cross-Origin-Opener-Policy": "same-origin", "Cache-Control": "no-store"}


def add_review_page(api: FastAPI) -> None:
    """Serve the page at /review (and its two files) on `api`, outside the OpenAPI document."""
    contents = {name: ((STATIC / file).read_bytes(), media) for name, (file, media) in FILES.items()}

    def serve(name: str) -> Response:
        if name not in contents:
            return JSONResponse({"code": "not_found", "detail": "no such file"}, status_code=404, headers=HEADERS)
        body, media = contents[name]
        return Response(body, media_type=media, headers=HEADERS)

    @api.get("/review", include_in_schema=False)
    def review_page() -> Response:
        return serve("")

    @api.get("/review/{name}", include_in_schema=False)
    def review_file(name: str) -> Response:
        return serve(name)
