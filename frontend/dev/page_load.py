"""First load of the case page in headless Chromium against a running server (deploy/run.sh's, or any):
the bytes that crossed the wire (compressed where the server compressed them) and their decoded size
for the page's scripts and styles, each file's Cache-Control and Content-Encoding, and the time from
navigation to the viewer drawn (`body[data-viewer-ready]`), each run in a fresh browser context (an
empty cache). With --mbps the network is throttled (Chromium's emulation) to show what a slow hospital
link pays; without it, localhost.

    .venv/bin/python frontend/dev/page_load.py --base http://127.0.0.1:8000 --user annotator \\
        --password PASSWORD --case 1 [--runs 3] [--mbps 20 --rtt-ms 20]

Prints one JSON object. Needs /usr/bin/chromium and the playwright package.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def load_once(browser, args) -> dict:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(f"{args.base}/accounts/login/")
    page.fill("input[name=username]", args.user)
    page.fill("input[name=password]", args.password)
    page.click("form.login button[type=submit]")
    page.wait_for_load_state()
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    if args.mbps:
        cdp.send(
            "Network.emulateNetworkConditions",
            {
                "offline": False,
                "latency": args.rtt_ms,
                "downloadThroughput": args.mbps * 1e6 / 8,
                "uploadThroughput": args.mbps * 1e6 / 8,
            },
        )
    responses: dict[str, dict] = {}
    done: dict[str, float] = {}

    def received(e: dict) -> None:
        headers = {k.lower(): v for k, v in e["response"]["headers"].items()}
        responses[e["requestId"]] = {"url": e["response"]["url"], "headers": headers}

    cdp.on("Network.responseReceived", received)
    cdp.on("Network.loadingFinished", lambda e: done.__setitem__(e["requestId"], e["encodedDataLength"]))
    began = time.perf_counter()
    page.goto(f"{args.base}/cases/{args.case}/")
    page.wait_for_selector("body[data-viewer-ready]", state="attached", timeout=600_000)
    ready_ms = (time.perf_counter() - began) * 1000
    errors = page.evaluate("() => window.annotator.metrics.errors")
    decoded = page.evaluate(
        """() => Object.fromEntries(performance.getEntriesByType("resource")
             .map((r) => [r.name, r.decodedBodySize]))"""
    )
    context.close()
    files = {}
    for rid, wire in done.items():
        r = responses.get(rid)
        if not r or "/static/" not in r["url"]:
            continue
        name = r["url"].split("/static/", 1)[1]
        files[name] = {
            "wire_bytes": int(wire),
            "decoded_bytes": decoded.get(r["url"]),
            "content_encoding": r["headers"].get("content-encoding", ""),
            "cache_control": r["headers"].get("cache-control", ""),
        }
    return {
        "ready_ms": round(ready_ms),
        "static_wire_bytes": sum(f["wire_bytes"] for f in files.values()),
        "all_wire_bytes": int(sum(done.values())),
        "files": files,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", default="http://127.0.0.1:8000")
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--case", type=int, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mbps", type=float, default=0, help="throttle the download to this many Mbit/s")
    parser.add_argument("--rtt-ms", type=float, default=0, help="added round-trip latency with --mbps")
    args = parser.parse_args()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            runs = [load_once(browser, args) for _ in range(args.runs)]
        finally:
            browser.close()
    print(
        json.dumps(
            {
                "base": args.base,
                "network": f"{args.mbps} Mbit/s, {args.rtt_ms} ms" if args.mbps else "localhost",
                "ready_ms": [r["ready_ms"] for r in runs],
                "ready_ms_median": statistics.median(r["ready_ms"] for r in runs),
                "static_wire_bytes": runs[-1]["static_wire_bytes"],
                "all_wire_bytes": runs[-1]["all_wire_bytes"],
                "files": runs[-1]["files"],
                "errors": [e for r in runs for e in r["errors"]],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
