"""Ray Serve deployments, the FastAPI ingress and the `argus` command line."""
