"""The Reports screen: per domain the share of reported mail passing DMARC, a daily chart, the
sources in their three groups (drill down with Enter), the alerts and the next DMARC step.
Reads through reports.summary, the function `postwarden reports` prints, in a worker thread."""

from __future__ import annotations

import sqlite3
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Header, Label, Sparkline, Static

from postwarden.reports.summary import GROUPS, summarise
from postwarden.tui.screens import SCREENS, BaseScreen, Col

MODE = "reports"
LABEL = "Reports"
WINDOWS = ("30d", "7d", "90d")
GROUP_LABEL = {
    "this_server": "this server",
    "authorised_elsewhere": "authorised elsewhere",
    "failing": "failing",
}
GROUP_SHORT = {"this_server": "server", "authorised_elsewhere": "elsewhere", "failing": "failing"}
GROUP_STYLE = {"this_server": "cyan", "authorised_elsewhere": "green", "failing": "bold red"}
STEP_STYLE = {"stay": "", "quarantine": "bold green", "reject": "bold green", "publish": "yellow"}


def pct(n: float) -> str:
    return f"{n * 100:.1f}%"


def share_text(n: float, total: int) -> Text:
    if not total:
        return Text("-", style="dim")
    style = "green" if n >= 0.98 else ("yellow" if n >= 0.9 else "bold red")
    return Text(pct(n), style=style)


class NavBar(Static):
    """The screens and their keys, this one (key 6) highlighted."""

    def __init__(self) -> None:
        text = Text()
        for i, (mode, label) in enumerate([*SCREENS, (MODE, LABEL)], 1):
            text.append(f" {i} {label} ", style="reverse bold" if mode == MODE else "")
            text.append(" ")
        super().__init__(text, classes="navbar")


class ReportsScreen(BaseScreen):
    COLUMNS: list[Col] = [
        ("domain", 12, 40),
        ("reported", 8, 10),
        ("DMARC", 5, 7),
        ("SPF", 5, 7),
        ("DKIM", 5, 7),
        ("failing", 7, 9),
        ("next step", 10, None),
    ]
    MODE = MODE
    DEFAULT_CSS = """
    ReportsScreen #table { height: 1fr; }
    ReportsScreen #charts { height: 4; padding: 0 1; }
    ReportsScreen #charts Vertical { width: 1fr; }
    ReportsScreen #charts Label { color: $text-muted; }
    ReportsScreen Sparkline { height: 2; }
    ReportsScreen #lower { height: 55%; border-top: solid $primary; }
    ReportsScreen #sources { width: 3fr; }
    ReportsScreen #detail-pane { width: 2fr; border-left: solid $primary; padding: 0 1; }
    """
    BINDINGS = [
        Binding("enter", "sources", "Sources"),
        Binding("escape", "domains", "Domains", show=False),
        Binding("w", "window", "Window"),
        Binding("g", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.window = WINDOWS[0]
        self.summary: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []

    def header(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield NavBar()

    def compose(self) -> ComposeResult:
        yield from self.header()
        yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="charts"):
            with Vertical():
                yield Label("reported/day", id="chart-label")
                yield Sparkline([], id="history", summary_function=max)
            with Vertical():
                yield Label("failing DMARC/day", id="fail-label")
                yield Sparkline([], id="failing", summary_function=max)
        yield Static("", id="status")
        with Horizontal(id="lower"):
            yield DataTable(id="sources", cursor_type="row", zebra_stripes=True)
            with VerticalScroll(id="detail-pane"):
                yield Static("", id="detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one("#table", DataTable)  # its columns: COLUMNS, set by refill()
        self.query_one("#sources", DataTable).add_columns(
            "group", "source", "reverse name", "msgs", "SPF ok", "DKIM ok"
        )
        table.focus()
        self.set_status("reading reports...")
        self.load()

    # ---- data -------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="reports")
    def load(self) -> None:
        b = self.backend
        try:
            summary = summarise(b.db, b.config, b.now(), since=self.window, lock=b.lock)
        except (sqlite3.Error, OSError) as exc:
            self.say(f"reports: {exc}", severity="error")
            return
        self.app.call_from_thread(self.show_summary, summary)

    def show_summary(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        self.rows = summary["domains"]
        lines = []
        for d in self.rows:
            advice = d["advice"]
            step = advice["step"] if advice["step"] != "stay" else f"stay at p={advice['current']}"
            if advice["current"] in ("", "?") and advice["step"] == "stay":
                step = "unknown (DNS)" if advice["current"] == "?" else "stay"
            failing = d["groups"]["failing"]["messages"]
            cells: list[Any] = [
                Text(
                    d["domain"] + (" !" if d["alerts"] else ""),
                    style="bold red" if d["alerts"] else "",
                ),
                f"{d['messages']:,}",
                share_text(d["pass_share"], d["messages"]),
                share_text(d["spf_aligned_share"], d["messages"]),
                share_text(d["dkim_aligned_share"], d["messages"]),
                Text(f"{failing:,}", style="bold red" if failing else "dim"),
                Text(step, style=STEP_STYLE.get(advice["step"], "")),
            ]
            lines.append((d["domain"], cells))
        self.refill(lines)
        self.query_one("#table", DataTable).refresh()
        tls = summary["tls"]
        failed = sum(t["failed"] for t in tls)
        alerts = sum(len(d["alerts"]) for d in self.rows)
        self.set_status(
            f"{len(self.rows)} domain(s) reported in the last {self.window}"
            + (f" · {alerts} alert(s)" if alerts else "")
            + (f" · TLS: {len(tls)} policy domain(s), {failed:,} failed session(s)" if tls else "")
            + (f" · {summary['refused']} refused" if summary["refused"] else "")
            + " · Enter: sources"
        )
        self.show_domain()

    # ---- the highlighted domain ------------------------------------------------------------------

    @on(DataTable.RowHighlighted, "#table")
    def show_domain(self) -> None:
        d = self.under_cursor(self.rows)
        history = self.query_one("#history", Sparkline)
        failing = self.query_one("#failing", Sparkline)
        sources = self.query_one("#sources", DataTable)
        sources.clear()
        if d is None:
            history.data, failing.data = [], []
            self.query_one("#detail", Static).update(
                Text("no DMARC reports in this window: `postwarden reports ingest` stores them")
            )
            return
        days = d["daily"]
        history.data = [x["messages"] for x in days]
        failing.data = [x["messages"] - x["dmarc_pass"] for x in days]
        span = f" {days[0]['day']}..{days[-1]['day'][5:]}" if days else ""
        self.query_one("#chart-label", Label).update(f"reported/day{span}")
        for g in GROUPS:
            for s in d["groups"][g]["sources"]:
                name = s["name"] if s["name"] else ("-" if s["name"] == "" else "?")
                sources.add_row(
                    Text(GROUP_SHORT[g], style=GROUP_STYLE[g]),
                    s["ip"],
                    name if len(name) <= 24 else name[:23] + "…",
                    f"{s['messages']:,}",
                    f"{s['spf_aligned']:,}",
                    Text(
                        f"{s['dkim_aligned']:,}",
                        style="bold red" if g == "this_server" and s["dkim_fail"] else "",
                    ),
                )
        self.query_one("#detail", Static).update(self.detail(d))

    def detail(self, d: dict[str, Any]) -> Text:
        t = Text()
        t.append(f"{d['domain']}\n", style="bold")
        for a in d["alerts"]:
            t.append(f"ALERT {a}\n", style="bold red")
        adv = d["advice"]
        t.append("next step  ", style="bold")
        t.append(f"{adv['message']}\n", style=STEP_STYLE.get(adv["step"], ""))
        if adv["record"]:
            t.append(f"  {adv['record']}\n", style="cyan")
        for g in GROUPS:
            grp = d["groups"][g]
            t.append(f"{GROUP_LABEL[g]:<21}", style=GROUP_STYLE[g])
            t.append(f"{grp['messages']:>8,} msgs, {grp['dmarc_pass']:,} pass\n")
        own = d["own"]
        if own["signed"] is not None:
            t.append(
                f"postwarden signed {own['signed']:,} for {d['domain']}; "
                f"the reports cover {own['reported']:,} from this server\n"
            )
        disp = ", ".join(f"{k} {v:,}" for k, v in d["dispositions"].items())
        t.append(f"dispositions  {disp or '-'}\n")
        for r in d["reporters"]:
            t.append(f"reported by {r['org_name']}: {len(r['report_ids'])} report(s)\n")
        for tls in self.summary.get("tls", []):
            if tls["policy_domain"] == d["domain"]:
                fails = ", ".join(f"{k} {v:,}" for k, v in sorted(tls["failures"].items()))
                t.append(
                    f"TLS ({'/'.join(tls['policy_types'])}): {tls['successful']:,} sessions ok,"
                    f" {tls['failed']:,} failed" + (f" ({fails})" if fails else "") + "\n",
                    style="bold red" if tls["failed"] else "",
                )
        return t

    @on(DataTable.RowSelected, "#table")
    def drill_down(self) -> None:
        self.action_sources()

    # ---- keys -------------------------------------------------------------------------------------

    def action_sources(self) -> None:
        self.query_one("#sources", DataTable).focus()

    def action_domains(self) -> None:
        self.query_one("#table", DataTable).focus()

    def action_window(self) -> None:
        self.window = WINDOWS[(WINDOWS.index(self.window) + 1) % len(WINDOWS)]
        self.set_status(f"reading reports of the last {self.window}...")
        self.load()

    def action_refresh(self) -> None:
        self.load()
