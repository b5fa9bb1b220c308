"""`postwarden tui`: the admin's terminal UI, keyboard-first, usable at 80x24 over SSH."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from postwarden.tui.backend import Backend
from postwarden.tui.feedback_screen import FeedbackScreen
from postwarden.tui.reports_screen import ReportsScreen
from postwarden.tui.screens import (
    SCREENS,
    DecisionsScreen,
    DomainsScreen,
    PolicyScreen,
    QuarantineScreen,
    SendersScreen,
)
from postwarden.tui.streams_screen import StreamsScreen

CSS = """
.navbar { height: 1; background: $panel; }
#filter { height: 1; border: none; padding: 0 1; background: $boost; }
#status { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
DecisionsScreen #table { height: 1fr; }
DecisionsScreen #detail-pane { height: 40%; border-top: solid $primary; }
DomainsScreen #table { height: 1fr; }
DomainsScreen #detail-pane { height: 45%; border-top: solid $primary; }
QuarantineScreen #table, SendersScreen #table { height: 1fr; }
#progress { height: 1; padding: 0 1; }
#policy-body { height: 1fr; }
#entries { width: 30; border-right: solid $primary; }
#policy-right { width: 1fr; }
#forms { height: 1fr; }
.form { padding: 0 1; height: auto; }
.form Label { margin-top: 1; color: $text-muted; }
.form Input { height: 1; border: none; padding: 0 1; background: $boost; }
.form Input:focus { background: $accent 30%; }
.form Checkbox { border: none; padding: 0; margin-top: 1; }
.form Select { width: 30; }
#domain-keys { height: 6; }
#file-view { height: 1fr; }
#errors { height: auto; max-height: 8; padding: 0 1; }
ConfirmScreen, NoteScreen, MessageScreen { align: center middle; }
.dialog { width: 72; height: auto; border: thick $error; background: $surface; padding: 1 2; }
NoteScreen .dialog { border: thick $warning; }
.dialog-title { text-style: bold; width: 100%; }
.dialog-body { margin: 1 0; }
.dialog-buttons { height: auto; align: right middle; }
.dialog-buttons Button { margin-left: 2; }
.viewer { width: 95%; height: 90%; border: thick $primary; background: $surface; }
#message-scroll { height: 1fr; }
"""


class PostwardenApp(App[None]):
    TITLE = "postwarden"
    CSS = CSS
    MODES = {
        "decisions": DecisionsScreen,
        "quarantine": QuarantineScreen,
        "senders": SendersScreen,
        "domains": DomainsScreen,
        "policy": PolicyScreen,
        "reports": ReportsScreen,
        "streams": StreamsScreen,  # streams.md
        "feedback": FeedbackScreen,
    }
    BINDINGS = [
        Binding("1", "switch_mode('decisions')", "Decisions", show=False),
        Binding("2", "switch_mode('quarantine')", "Quarantine", show=False),
        Binding("3", "switch_mode('senders')", "Senders", show=False),
        Binding("4", "switch_mode('domains')", "Domains", show=False),
        Binding("5", "switch_mode('policy')", "Policy", show=False),
        Binding("6", "switch_mode('reports')", "Reports", show=False),
        Binding("7", "switch_mode('streams')", "Streams", show=False),
        Binding("8", "switch_mode('feedback')", "Feedback", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, backend: Backend, *, poll_interval: float = 1.0, start: str = "decisions"):
        super().__init__()
        self.backend = backend
        self.poll_interval = poll_interval
        self.start = start

    def on_mount(self) -> None:
        self.sub_title = str(self.backend.config_path)
        self.switch_mode(self.start)

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for i, (mode, label) in enumerate(
            [*SCREENS, ("reports", "Reports"), ("streams", "Streams"), ("feedback", "Feedback")], 1
        ):
            yield SystemCommand(
                f"Go to {label}",
                f"the {label} screen (key {i})",
                lambda m=mode: self.switch_mode(m),
            )
