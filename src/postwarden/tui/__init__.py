"""The admin TUI (textual): built in its own issue."""
