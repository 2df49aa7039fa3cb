"""The page (`birdshield serve`): upload a bird photo, predict, attack, defend, certify, read reports.

actions.py holds what the page does as plain functions (PIL images in, numpy images and lists out) and
reports.py reads report folders; page.py builds the Gradio page from them; jobs.py lets a long job be
stopped. Nothing here imports the CLI. Cheap to import: gradio and torch load only when a module is used.
"""

from __future__ import annotations

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def host_warning(host: str) -> str | None:
    """The warning to print when the page would be reachable from other machines; None for a local host."""
    if host in LOCAL_HOSTS:
        return None
    return (
        f"warning: serving on {host}, reachable from other machines; the page has no login, so anyone who "
        "can reach it can upload photos and run jobs. Use --host 127.0.0.1 unless you mean it."
    )
