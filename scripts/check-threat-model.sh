#!/usr/bin/env bash
# Checks threat-model.md against the test suite: defences are numbered 1, 2, 3... in order,
# each names at least one test as `path/to/file.rs::test_name`, and every named test exists
# there as a #[test] (or #[tokio::test]) function. Run by scripts/test.sh; no root, no build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import re, sys
text = open("threat-model.md").read()
section = text.split("## Adversaries and what stops them", 1)[1].split("\n## ", 1)[0]
items = re.split(r"\n(?=\d+\. \*\*)", "\n" + section.strip())
items = [i.strip() for i in items if re.match(r"\d+\. \*\*", i.strip())]
errors = []
for want, item in enumerate(items, 1):
    n = int(item.split(".", 1)[0])
    if n != want:
        errors.append(f"threat-model.md: defence {n} is out of order (expected {want})")
    refs = re.findall(r"`([\w./-]+\.rs)::(\w+)`", item)
    if not refs:
        errors.append(f"threat-model.md: defence {n} names no test")
    for path, name in refs:
        try:
            src = open(path).read()
        except OSError:
            errors.append(f"threat-model.md: defence {n}: {path} does not exist")
            continue
        if not re.search(r"#\[(?:tokio::)?test(?:\([^\]]*\))?\]\s*(?:#\[[^\]]*\]\s*)*(?:async )?fn " + re.escape(name) + r"\(", src):
            errors.append(f"threat-model.md: defence {n}: no #[test] fn {name} in {path}")
if not items:
    errors.append("threat-model.md: no numbered defences found")
for e in errors:
    print(e, file=sys.stderr)
if errors:
    sys.exit(1)
refs = len(re.findall(r"`[\w./-]+\.rs::\w+`", section))
print(f"threat model: {len(items)} defences, {refs} named tests, all present")
PY
