"""Benchmark: ``edis-fleet validate`` on a 10,000-VPS manifest, as a subprocess.

Every VPS names a template (one of a few files) that uses per-VPS values (id, hostname,
vars, root password), so every VPS's document is rendered and checked. The target is under
3 seconds on a 2-core machine. Run with ``python tests/bench/validate_10k.py [--vps N]``;
prints one JSON line with the timings (best of ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = """#cloud-config
hostname: {{ hostname }}
fqdn: {{ hostname }}.{{ vars.domain }}
chpasswd:
  expire: false
  users:
    - name: root
      password: {{ root_password | tojson }}
      type: text
packages:
{% for p in vars.packages %}
  - {{ p }}
{% endfor %}
write_files:
  - path: /etc/edis-fleet/id
    content: "{{ id }} {{ tags | join(',') }} template-@T@"
runcmd:
  - [systemctl, enable, --now, ssh]
"""


def write_manifest(folder: Path, count: int, templates: int) -> Path:
    """Write ``count`` VPSes spread over ``templates`` template files; return the manifest."""
    (folder / "templates").mkdir()
    for t in range(templates):
        (folder / "templates" / f"t{t}.yaml.j2").write_text(
            TEMPLATE.replace("@T@", str(t)), encoding="utf-8"
        )
    lines = [
        "version: 1",
        "account:",
        "  email: {env: EDIS_EMAIL}",
        "  password: {env: EDIS_PASSWORD}",
        "defaults:",
        "  image: cloudinit_debian-bookworm",
        "  root_password: {env: EDIS_ROOT_PASSWORD}",
        "  vars: {domain: example.net, packages: [curl, ca-certificates]}",
        "  readiness: {mode: tcp, port: 22, deadline: 20m}",
        "groups:",
        "  web: {tags: [web]}",
        "  db: {tags: [db], protected: true}",
        "rollout:",
        "  concurrency: 50",
        "  rate: 10/s",
        "  waves: [1, '1%', '10%', '100%']",
        "  soak: 1m",
        "  failure_budget: {wave: '2%', run: 20}",
        "vps:",
    ]
    for i in range(1, count + 1):
        lines += [
            f"  - id: kvm_{100000 + i}_{200000 + i}",
            f"    hostname: vps-{i:05d}",
            f"    cloud_init: templates/t{i % templates}.yaml.j2",
            f"    group: {'db' if i % 10 == 0 else 'web'}",
            f"    vars: {{n: {i}}}",
        ]
    path = folder / "fleet.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> int:
    """Generate the manifest, time the command, print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vps", type=int, default=10_000)
    parser.add_argument("--templates", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-schema", action="store_true", help="pass --no-schema")
    args = parser.parse_args()
    env = dict(os.environ)
    env |= {
        "EDIS_EMAIL": "ops@example.net",
        "EDIS_PASSWORD": "bench-account-password",
        "EDIS_ROOT_PASSWORD": "bench-Root-Password-1",
    }
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp), args.vps, args.templates)
        command = [sys.executable, "-m", "orchestrator", "validate", str(manifest)]
        if args.no_schema:
            command.append("--no-schema")
        times: list[float] = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout + proc.stderr)
                return 1
    result = {
        "benchmark": "validate_10k",
        "vps": args.vps,
        "templates": args.templates,
        "cloud_init_schema": bool(shutil.which("cloud-init")) and not args.no_schema,
        "best_s": round(min(times), 3),
        "runs_s": [round(t, 3) for t in times],
        "target_s": 3.0,
        "ok": min(times) < 3.0,
    }
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
