"""Benchmark: `postwarden dns-check` over 100 domains against a DNS server on loopback that
delays every answer by 100 ms. Prints the wall time (target: under 5 s). Run: make bench-dns"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.dnsserver import LoopbackDNS, txt
from tests.helpers import write_config, write_key

N = 100
PROFILE = ["-m", "cProfile", "-s", "tottime"] if __import__("os").environ.get("PROFILE") else []
DELAY = float(__import__("os").environ.get("DELAY", "0.1"))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        policy, zone = (
            [],
            [
                "1.2.0.192.in-addr.arpa. 300 IN PTR mail.example.net.",
                "mail.example.net. 300 IN A 192.0.2.1",
            ],
        )
        key = write_key(root / "keys" / "k.key")
        from postwarden.config.keys import load_key

        public = load_key("x", "s", str(key), True).public_key_b64()
        for i in range(N):
            d = f"d{i:03d}.example"
            policy.append(f'[domains."{d}"]\nkeys = [{{ selector = "s", file = "{key}" }}]')
            zone += [
                txt(f"{d}.", "v=spf1 include:_spf.example.net -all"),
                txt(f"s._domainkey.{d}.", f"v=DKIM1; k=rsa; p={public}"),
                txt(f"_dmarc.{d}.", f"v=DMARC1; p=reject; rua=mailto:r@{d}"),
                f"{d}. 300 IN MX 10 mail.example.net.",
            ]
        zone.append(txt("_spf.example.net.", "v=spf1 ip4:192.0.2.1 -all"))
        cfg = write_config(root, "\n".join(policy) + "\n")
        with LoopbackDNS("\n".join(zone) + "\n", delay=DELAY) as server:
            cfg.write_text(
                cfg.read_text()
                + '[server]\nhostname = "mail.example.net"\naddresses = ["192.0.2.1"]\n'
                f'[dns]\nnameservers = ["{server.address}"]\ntimeout = 5.0\n'
            )
            started = time.monotonic()
            res = subprocess.run(
                [sys.executable, *PROFILE, "-m", "postwarden", "--config", str(cfg), "dns-check"],
                capture_output=True,
                text=True,
                check=False,
            )
            elapsed = time.monotonic() - started
    if PROFILE:
        lines = res.stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if "ncalls" in line)
        print("\n".join(lines[start : start + 25]))
    summary = res.stdout.strip().splitlines()[-1] if res.stdout else res.stderr
    print(
        f"dns-check of {N} domains, every DNS answer delayed {DELAY * 1000:.0f} ms: {elapsed:.2f} s"
        f" (target < 5 s); exit {res.returncode}; {summary}"
    )
    return 0 if res.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
