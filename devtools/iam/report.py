"""After a test run: the IAM evaluation's verdicts (target/iam-requests.jsonl), checked and summed up.

* Every denial of a stack not registered to be denied fails the run (exit 1), named:
  principal, action, resource, why. (The function that was refused usually fails its test
  too; this also catches a refusal a function only logged, such as a metric it could not
  publish.)
* Unused grants: per principal, the actions its policies in `template.yaml` grant that no
  evaluated request used through that statement — each is to be removed, or kept with a reason: a
  `# kept: <reason>` comment on the statement's Sid line in the template.

Usage: python report.py [--denials-only] [TARGET_DIR]
       python report.py --kept-table   (the book's table of kept grants, from the template)
(prints the report and writes TARGET_DIR/iam-report.md; `--denials-only` for a run of part
of the suite, whose unused grants say nothing)
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
from pathlib import Path

import policies

ROOT = Path(__file__).resolve().parent.parent.parent


def granted(template: Path) -> dict[str, list[tuple[str, str]]]:
    """Per function principal, (action pattern, statement) pairs its policies grant."""
    found = policies.principal_policies(template, policies.Stack(name="report"))
    out: dict[str, list[tuple[str, str]]] = {}
    for principal in policies.FUNCTIONS:
        pairs = []
        for inline in found[principal]["identity"]:
            statements = inline["policy"].get("Statement", [])
            for index, statement in enumerate(statements if isinstance(statements, list) else [statements]):
                if statement.get("Effect") != "Allow":
                    continue
                actions = statement.get("Action", [])
                for action in [actions] if isinstance(actions, str) else actions:
                    pairs.append((action, f"{inline['name']}#{statement.get('Sid', index)}"))
        out[principal] = pairs
    return out


def kept_reasons(template: Path) -> dict[str, str]:
    """Why a grant no test uses stays, from the template's comments: `Sid: X  # kept: why`
    (every action of the statement) or `Sid: X  # kept ACTION[,ACTION]: why` (those) on a
    statement's Sid line, or `# kept for NAME: why` for a statement SAM generates (NAME its
    policy's name, such as DeadLetterQueuePolicy). A reason holds for the resource (the
    function) whose block it is written in, never for another's statement of the same Sid.
    `resource|statement[|action]` → why."""
    reasons = {}
    resource = ""
    for line in template.read_text().splitlines():
        top = re.match(r"^  (\w+):\s*$", line)
        if top:
            resource = top.group(1)
        on_sid = re.search(r"Sid:\s*(\w+)\s*#\s*kept( [\w:*,]+)?:\s*(.+)$", line)
        if on_sid:
            actions = [a for a in (on_sid.group(2) or "").strip().split(",") if a]
            for action in actions or [""]:
                key = f"{resource}|{on_sid.group(1)}" + (f"|{action}" if action else "")
                reasons[key] = on_sid.group(3).strip()
        named = re.search(r"#\s*kept for (\w+):\s*(.+)$", line)
        if named:
            reasons[f"{resource}|{named.group(1)}"] = named.group(2).strip()
    return reasons


def kept_table(template: Path) -> str:
    """The book's table of the grants kept with a reason (docs/src/explanations/kept-grants.md):
    per principal and statement, the actions the template's `# kept` comments keep, and why."""
    reasons = kept_reasons(template)
    rows: dict[tuple[str, str, str], list[str]] = {}
    for principal, pairs in granted(template).items():
        function = policies.FUNCTIONS[principal]
        for action, statement in pairs:
            policy, sid = statement.split("#", 1)
            reason = (reasons.get(f"{function}|{sid}|{action}") or reasons.get(f"{function}|{sid}")
                      or reasons.get(f"{function}|{policy}"))
            if reason:
                name = policy if sid.isdigit() else sid
                rows.setdefault((principal, name, reason), []).append(f"`{action}`")
    lines = ["<!-- Written by `devtools/iam/report.py --kept-table` from template.yaml's `# kept` comments;",
             "     tests/integration/template.rs checks it (BATCHLINE_BLESS=1 rewrites it). -->",
             "| principal | statement | grant | why |", "|---|---|---|---|"]
    for (principal, name, reason), actions in rows.items():
        lines.append(f"| {principal} | {name} | {', '.join(actions)} | {reason} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if sys.argv[1:] == ["--kept-table"]:
        sys.stdout.write(kept_table(ROOT / "template.yaml"))
        return 0
    arguments = [a for a in sys.argv[1:] if a != "--denials-only"]
    denials_only = len(arguments) < len(sys.argv) - 1
    target = Path(arguments[0]) if arguments else ROOT / "target"
    log = target / "iam-requests.jsonl"
    if not log.exists():
        print(f"iam-report: {log} does not exist (no integration test ran)")
        return 0
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    unexpected = [r for r in records if not r["allowed"] and not r.get("fixture")]
    # A grant is used when a request was allowed by its own statement: another statement
    # granting the same action (on another resource) does not make it used.
    used: dict[str, set[tuple[str, str]]] = {}
    for record in records:
        if record["allowed"] and not record.get("fixture"):
            used.setdefault(record["principal"], set()).add((record["action"], record.get("by", "")))
    template = ROOT / "template.yaml"
    reasons = kept_reasons(template)
    lines = [f"# IAM evaluation: {len(records)} requests, {len(unexpected)} unexpected denials", ""]
    for record in unexpected:
        lines.append(f"- DENIED {record['principal']} ({record['stack']}): {record['action']} on {record['resource']} "
                     f"{json.dumps(record.get('context', {}))}: {record['why']}")
    unexplained = 0
    lines += ["", "| principal | granted, never used | statement | kept because |", "|---|---|---|---|"]
    for principal, pairs in granted(template).items():
        for action, statement in pairs:
            if any(by == statement and fnmatch.fnmatchcase(used_action, action)
                   for used_action, by in used.get(principal, ())):
                continue
            policy, sid = statement.split("#", 1)
            function = policies.FUNCTIONS[principal]
            reason = (reasons.get(f"{function}|{sid}|{action}") or reasons.get(f"{function}|{sid}")
                      or reasons.get(f"{function}|{policy}", ""))
            unexplained += 0 if reason else 1
            lines.append(f"| {principal} | `{action}` | {statement} | {reason or '**no reason given**'} |")
    text = "\n".join(lines) + "\n"
    (target / "iam-report.md").write_text(text)
    print(text)
    if unexpected:
        print(f"iam-report: {len(unexpected)} request(s) denied (above)", file=sys.stderr)
        return 1
    if unexplained and not denials_only:
        print(f"iam-report: {unexplained} grant(s) no test used and no `# kept:` reason explains (above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
