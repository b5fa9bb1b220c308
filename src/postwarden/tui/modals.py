"""Modal screens: the confirmation every destructive action needs, the unlock note, and the
held-message viewer.

Esc only ever cancels. Over SSH through tmux an Esc arrives late and can merge with the next
key, so nothing destructive hangs on it: confirming takes "y" or the confirm button.
"""

from __future__ import annotations

from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static


class Dialog(ModalScreen[Any]):
    def __init__(self, title: str, body: str, confirm_label: str) -> None:
        super().__init__()
        self.title_text, self.body, self.confirm_label = title, body, confirm_label


class ConfirmScreen(Dialog):
    """Yes/no. Focus starts on Cancel, so a stray Enter does nothing harmful."""

    BINDINGS = [
        Binding("y", "confirm", "Yes, do it"),
        Binding("n,escape", "cancel", "Cancel"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title", markup=False)
            yield Static(self.body, classes="dialog-body", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel (n)", id="cancel")
                yield Button(f"{self.confirm_label} (y)", id="confirm", variant="error")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


class NoteScreen(Dialog):
    """Asks for a note (why a sender is unlocked); None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title", markup=False)
            yield Static(self.body, classes="dialog-body", markup=False)
            yield Input(placeholder="note: why (recorded in the audit log)", id="note")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel (esc)", id="cancel")
                yield Button(f"{self.confirm_label} (enter)", id="confirm", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#note", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "confirm":
            self.dismiss(self.query_one("#note", Input).value.strip())
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class MessageScreen(ModalScreen[None]):
    """A held message as Postfix has it (postcat), read in a worker."""

    BINDINGS = [Binding("escape,q,v", "close", "Close")]

    def __init__(self, queue_id: str, decision: str) -> None:
        super().__init__()
        self.queue_id, self.decision = queue_id, decision

    def compose(self) -> ComposeResult:
        with Vertical(classes="viewer"):
            yield Label(
                f"held message {self.queue_id}  (esc closes)", classes="dialog-title", markup=False
            )
            with VerticalScroll(id="message-scroll"):
                yield Static("reading from Postfix...", id="message", markup=False)

    def on_mount(self) -> None:
        self.query_one("#message-scroll").focus()
        self.load()

    @work(thread=True, exclusive=True)
    def load(self) -> None:
        from postwarden.quarantine import BadQueueId, PostfixError
        from postwarden.textsafe import printable_lines

        try:
            text = printable_lines(self.app.backend.show(self.queue_id))  # type: ignore[attr-defined]
        except (PostfixError, BadQueueId) as exc:
            text = f"cannot read it: {printable_lines(str(exc))}"
        self.app.call_from_thread(
            self.query_one("#message", Static).update, f"{self.decision}\n\n{text}"
        )

    def action_close(self) -> None:
        self.dismiss(None)
