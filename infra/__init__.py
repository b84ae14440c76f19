"""How the real parts start: the embedded tansu broker locally; production manifests beside it."""
