"""Shared fixtures: each real part (broker, store, Ray) has its own fixture module."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("RAY_AUTH_MODE", "token")  # what services.local_ray sets: token auth, no notice

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.store",
    "tests.fixtures.ray_local",
]
