"""bench/RESULTS.md: each benchmark owns one "## " section and replaces only that one when it reruns."""

from __future__ import annotations

from pathlib import Path

RESULTS_FILE = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(heading: str, section: str, path: Path = RESULTS_FILE) -> None:
    """Replace the section that starts with ``heading`` in ``path`` (or append it), keeping the others.

    The file is re-read here, not earlier, so that benchmarks run one after another keep each other's
    sections.
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find(heading + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    else:
        following = text.find("\n## ", start + len(heading))
        rest = "" if following == -1 else text[following + 1 :]
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + rest if rest else "")
    path.write_text(text)
