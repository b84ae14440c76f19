"""Ray Serve deployments, the FastAPI ingress and the `argus` command line."""

import os as _os

# Ray reads RAY_AUTH_MODE once, when it is first imported: set it before any services module imports
# Ray. Token auth stays on (a token in ~/.ray/auth_token, made on first use); set explicitly, Ray
# prints no notice on every start. An operator's own RAY_AUTH_MODE wins.
_os.environ.setdefault("RAY_AUTH_MODE", "token")
