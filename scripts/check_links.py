#!/usr/bin/env python3
"""Fails when a Markdown link in README.md or docs/ points at a path that
does not exist in the repository (or outside it). Web links and anchors
within a page are not checked."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
link = re.compile(r"\]\(([^)\s]+)\)")
bad = []
for page in pages:
    text = page.read_text(encoding="utf-8")
    # Links inside code blocks are examples, not links.
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for m in link.finditer(text):
        target = m.group(1)
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        line = text[: m.start()].count("\n") + 1
        where = f"{page.relative_to(root)}:{line}"
        if root not in path.parents and path != root:
            bad.append(f"{where}: {target} points outside the repository")
        elif not path.exists():
            bad.append(f"{where}: {target} does not exist")
for b in bad:
    print(b)
print(f"links: {len(pages)} pages checked, {len(bad)} broken")
sys.exit(1 if bad else 0)
